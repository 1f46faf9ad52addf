"""The reenactment pipeline: source face + per-frame attributes -> finished video.

Stages (one module each)::

    media (decode source / driver) -> track (face analysis) -> driving.compose (+ presets,
    --set) -> model (G_N once per source, G_A per batch of frames) -> paste (kornia warp
    back into the full frame) -> encode (ffmpeg, audio muxed)

:func:`render_video` streams: memory holds one batch of frames, whatever the length.
A still source is analysed, cropped and encoded by the network once; a source clip is
decoded in step with the output and its frames are encoded a batch at a time.
"""

from __future__ import annotations

import itertools
import sys
import time
import types
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch

from .align import AlignConfig, crop_matrix, landmark_params, transform_points, warp_crop
from .attributes import attributes_from_face
from .encode import EncodeConfig, VideoEncoder, even_size, frame_size_problem, output_format
from .errors import InputError, UsageError
from .face import FaceAnalyzer
from .geo_render import RENDERERS, GeometryConfig, GeometryStage, ring_points
from .media import exact_rate, iter_frames
from .options import DEFAULTS
from .outputs import atomic_output, is_sequence, sequence_stem
from .paste import PasteBack, PasteConfig, face_mask
from .runtime import raise_if_terminated
from .smoothing import fill_missing
from .track import FaceTrack, analyze_media


@dataclass(frozen=True)
class RenderOptions:
    """How frames are rendered and written.

    Attributes:
        batch_size: frames per generator call (the device is the model's own).
        detail: paste the fast design's parts back (:meth:`PasteBack.paste_parts`): the
            warp fetches from the full-resolution source frame; False = paste the R x R
            crop (the face then carries the network's resolution).
        crop_only: write the aligned generated crops instead of pasting them back.
        paste: :class:`PasteConfig` (mask growth, feathering, colour matching).
        encode: :class:`EncodeConfig` (crf, x264 preset, audio).
        preview: also write ``<out>.preview.mp4`` (source | driver | result) and
            ``<out>.contact.png``.
        overwrite: replace existing outputs.
        renderer: ``geometry`` (default): the motion model moves the source's 3D landmarks
            and the geometric renderer warps the full-resolution frame onto them
            (:mod:`icface_video.geo_render`); ``network``: the ICface generator renders a
            128 px crop that is pasted back (``detail``, ``eyelids`` apply to it).
        geometry: :class:`GeometryConfig` of the geometric renderer.
    """

    batch_size: int = DEFAULTS.batch_size
    detail: bool = DEFAULTS.detail
    crop_only: bool = DEFAULTS.crop_only
    paste: PasteConfig = field(default_factory=PasteConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    preview: bool = DEFAULTS.preview
    overwrite: bool = False
    renderer: str = DEFAULTS.renderer
    geometry: GeometryConfig = field(default_factory=GeometryConfig)


def geometry_stage(model, options: RenderOptions) -> GeometryStage | None:
    """The geometric stage when ``options.renderer`` is ``geometry``, else None.

    Raises:
        UsageError: an unknown renderer name.
        InputError: the model folder has no motion model.
    """
    if options.renderer not in RENDERERS:
        raise UsageError(f"--renderer {options.renderer}: expected one of {', '.join(RENDERERS)}")
    if options.renderer != "geometry":
        return None
    if getattr(model, "motion", None) is None:
        raise InputError(getattr(model, "folder", None) or "model folder",
                         "no motion model (motion.json) for the geometry renderer; "
                         "use --renderer network or run python -m train.fit_motion")
    return GeometryStage(model.motion, options.geometry, getattr(model, "eyelids", None))


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, then mps, else cpu; otherwise the named device.

    Raises:
        UsageError: not a device name, or a device this machine does not have.
    """
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    if name == "auto":
        return torch.device(next(k for k in ("cuda", "mps", "cpu") if available[k]))
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: {exc}") from None
    if not available.get(device.type, False):
        raise UsageError(f"--device {name}: no such device on this machine "
                         f"(available: {', '.join(k for k, ok in available.items() if ok)})")
    return device


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class SourceFrame:
    """One source picture ready for the generator.

    Attributes:
        rgb: (H, W, 3) uint8 full frame.
        attrs: (20,) its attributes (AUs 0..5, angles rad).
        landmarks: (478, 3) full-frame pixels.
        matrix: (2, 3) full frame -> crop.
        crop: (1, 3, R, R) float in [-1, 1].
    """

    rgb: np.ndarray
    attrs: np.ndarray
    landmarks: np.ndarray
    matrix: np.ndarray
    crop: torch.Tensor

    @property
    def crop_landmarks(self) -> np.ndarray:
        """(478, 2) float32 landmarks in crop pixels (x right, y down, origin top-left corner)."""
        return transform_points(self.landmarks, self.matrix)


def encode_sources(model, frames: list[SourceFrame]):
    """The model's :class:`~icface_video.model.SourceCache` for one or more source frames
    (crops, attributes and crop landmarks, so the eyelid warp can move the lids)."""
    return model.prepare_source(torch.cat([sf.crop for sf in frames]),
                                torch.from_numpy(np.stack([sf.attrs for sf in frames]).astype(np.float32)),
                                torch.from_numpy(np.stack([sf.crop_landmarks for sf in frames])))


def analyze_still(path: str | Path, size: int, face_index: int = 0) -> SourceFrame:
    """Load a photo (or a clip's first frame), find the face, crop it.

    Raises:
        InputError: unreadable, or no face.
    """
    return still_from_rgb(next(iter_frames(path, max_frames=1)).rgb, size, face_index, path)


def still_from_rgb(rgb: np.ndarray, size: int, face_index: int = 0, name: object = "source") -> SourceFrame:
    """A picture held in memory, (H, W, 3) uint8 RGB, as a :class:`SourceFrame` (``name``: for errors).

    Raises:
        InputError: no face (or fewer than ``face_index + 1``).
    """
    with FaceAnalyzer(mode="image", face_index=face_index) as fa:
        face = fa.analyze(rgb)
    if face is None:
        raise InputError(name, fa.no_face_problem("in the source image"))
    return make_source_frame(rgb, face.landmarks, attributes_from_face(face.blendshapes, face.matrix),
                             landmark_params(face.landmarks), size)


def make_source_frame(rgb: np.ndarray, landmarks: np.ndarray, attrs: np.ndarray, params: np.ndarray,
                      size: int) -> SourceFrame:
    align = AlignConfig(size=size)
    m = crop_matrix(params, align)
    return SourceFrame(rgb, attrs, landmarks, m, to_tensor(warp_crop(rgb, m, align)))


def paste_render(paster: PasteBack, frames: np.ndarray, parts: dict[str, torch.Tensor],
                 reference: torch.Tensor | None, detail: bool = True) -> np.ndarray:
    """Paste a render back: its parts at the frame's resolution when ``detail`` and the
    model has them (fast design), else its finished crop. Shapes as in :class:`PasteBack`."""
    if detail and "grid" in parts:
        return paster.paste_parts(frames, parts, reference)
    return paster.paste(frames, parts["image"], reference)


def render_still(model, still: SourceFrame, attrs: torch.Tensor | None, detail: bool = True,
                 crop_only: bool = False, renderer: str = "geometry") -> np.ndarray:
    """One photo re-rendered (``edit``) or neutralised (``attrs`` None: ``neutralize``).

    Convention:
        attrs: (1, 20) driving attributes (AUs 0..5, angles rad) or None for the neutral face
            (zero AUs, zero angles; the network design uses its own G_N).
        detail: as :attr:`RenderOptions.detail`; renderer: as :attr:`RenderOptions.renderer`.
        returns: (H, W, 3) uint8 RGB, the photo's size; with ``crop_only`` the (R, R, 3) crop.
    """
    geo = geometry_stage(model, RenderOptions(renderer=renderer))
    if geo is not None:
        target = attrs[0].cpu().numpy() if attrs is not None else np.zeros_like(still.attrs)
        frame = geo.render(still.rgb, still.landmarks, still.attrs, target)
        return warp_crop(frame, still.matrix, AlignConfig(size=model.resolution)) if crop_only else frame
    cache = encode_sources(model, [still])
    parts = model.render_parts(cache, attrs) if attrs is not None else model.neutralize_parts(cache)
    parts = {k: v.float().cpu() for k, v in parts.items()}
    if crop_only:
        return to_uint8(parts["image"])[0]
    paster = PasteBack(still.rgb.shape[:2], still.matrix, still.landmarks, model.resolution)
    return paste_render(paster, still.rgb, parts, still.crop, detail)[0]


class SourceClip:
    """A source video whose frames are reenacted in turn, decoded in step with the output.

    For output time t the source frame shown is the last one at or before t; past the
    source's end its last frame is held (documented rule).
    """

    def __init__(self, path: str | Path, size: int, face_index: int = 0,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.path = str(path)
        self.size = size
        self.track: FaceTrack = analyze_media(path, face_index=face_index, keep_landmarks=True, progress=progress)
        t = self.track
        self.params = t.smoothed_crop_params(AlignConfig(size=size))
        flat = t.landmarks.reshape(t.num_frames, -1)
        self.landmarks = fill_missing(np.nan_to_num(flat), t.success, t.times).reshape(t.landmarks.shape)
        self.attrs = t.attributes()

    @property
    def times(self) -> np.ndarray:
        return self.track.times

    def indices_at(self, times: np.ndarray) -> np.ndarray:
        """(N,) source frame index for each output time: the last frame at or before it, held at the ends."""
        idx = np.searchsorted(self.times, np.asarray(times) + 1e-6, side="right") - 1
        return np.clip(idx, 0, len(self.times) - 1)

    def frames_at(self, times: np.ndarray) -> Iterator[tuple[int, SourceFrame]]:
        """Yield (source frame index, SourceFrame) for each output time, decoding once."""
        idx = self.indices_at(times)
        stream = iter_frames(self.path)
        current = None
        for j in idx:
            while current is None or current.index < j:
                nxt = next(stream, None)
                if nxt is None:
                    break
                current = nxt
            yield int(j), make_source_frame(current.rgb, self.landmarks[j], self.attrs[j], self.params[j], self.size)


def _panel(rgb: np.ndarray, height: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    width = max(2, int(round(w * height / h / 2)) * 2)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


class Preview:
    """Side-by-side video (source | driver | result | generated face, enlarged) and a contact sheet of a few frames."""

    def __init__(self, output: Path, fps: float, total: int, overwrite: bool, driver: str | None,
                 height: int = 256) -> None:
        stem = sequence_stem(output) if is_sequence(output) else output.stem
        self.video_path = output.with_name(stem + ".preview.mp4")
        self.sheet_path = output.with_name(stem + ".contact.png")
        self.height = height
        self.fps = fps
        self.picks = set(np.linspace(0, max(total - 1, 0), num=min(6, total)).round().astype(int).tolist())
        self.sheet: list[np.ndarray] = []
        self._driver = iter_frames(driver) if driver else None
        self._driver_frame = None
        self._ctx = atomic_output(self.video_path, overwrite)
        self._tmp = None
        self._enc = None
        self._overwrite = overwrite

    def _driver_at(self, t: float) -> np.ndarray | None:
        if self._driver is None:
            return None
        while self._driver_frame is None or self._driver_frame.time + 1e-6 < t:
            nxt = next(self._driver, None)
            if nxt is None:
                break
            self._driver_frame = nxt
        return self._driver_frame.rgb if self._driver_frame is not None else None

    def add(self, index: int, t: float, source: np.ndarray, result: np.ndarray, face: np.ndarray | None = None) -> None:
        """One row: source | driver (if a video) | result | the generated face crop, enlarged."""
        panels = [_panel(source, self.height)]
        drv = self._driver_at(t)
        if drv is not None:
            panels.append(_panel(drv, self.height))
        panels.append(_panel(result, self.height))
        if face is not None:
            panels.append(cv2.resize(face, (self.height, self.height), interpolation=cv2.INTER_CUBIC))
        row = np.concatenate(panels, axis=1)
        if self._enc is None:
            self._tmp = self._ctx.__enter__()
            self._enc = VideoEncoder(self._tmp, row.shape[1], row.shape[0], self.fps, EncodeConfig(crf=23, preset="veryfast"))
        self._enc.write(row)
        if index in self.picks:
            self.sheet.append(row)

    def close(self, ok: bool) -> None:
        if self._enc is None:
            return
        if ok:
            self._enc.close()
            self._ctx.__exit__(None, None, None)
            with atomic_output(self.sheet_path, self._overwrite) as tmp:
                sheet = np.concatenate(self.sheet, axis=0) if self.sheet else np.zeros((2, 2, 3), np.uint8)
                cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        else:
            self._enc.__exit__(RuntimeError, None, None)
            self._ctx.__exit__(RuntimeError, RuntimeError("failed"), None)


@dataclass
class RenderResult:
    """Summary of a finished render (what ``--json`` prints)."""

    output: str
    frames: int
    fps: Fraction
    width: int
    height: int
    audio: bool
    seconds: float
    preview: str | None = None
    contact_sheet: str | None = None
    stage_seconds: dict = field(default_factory=dict)


def _geometry_batch(geo: GeometryStage, sources: list[SourceFrame], attrs: np.ndarray, placement: np.ndarray | None,
                    size: int, crop_only: bool, want_faces: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch of frames from the geometric renderer: (B, H, W, 3) uint8 (the aligned
    ``size`` crops with ``crop_only``), and the aligned crops for the preview (or None)."""
    frames = np.stack([geo.render(sf.rgb, sf.landmarks, sf.attrs, attrs[i], None if placement is None else placement[i])
                       for i, sf in enumerate(sources)])
    if not (crop_only or want_faces):
        return frames, None
    cfg = AlignConfig(size=size)
    crops = np.stack([warp_crop(f, sf.matrix, cfg) for f, sf in zip(frames, sources)])
    return (crops if crop_only else frames), (crops if want_faces else None)


def _network_batch(model, cache, batch_attrs: torch.Tensor, sources: list[SourceFrame], paster: PasteBack | None,
                   paster_for: Callable[[SourceFrame], PasteBack], options: RenderOptions, want_faces: bool,
                   half: bool, stages: dict[str, float], t0: float) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch of frames from the ICface generator, pasted back (or its crops with ``crop_only``)."""
    with torch.autocast("cuda", dtype=torch.float16, enabled=half):
        parts = model.render_parts(cache, batch_attrs)
    parts = {k: v.float().cpu() for k, v in parts.items()}
    stages["generator"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    crops = parts["image"]
    if options.crop_only:
        frames = to_uint8(crops)
    elif paster is not None:
        frames = paste_render(paster, sources[0].rgb, parts, sources[0].crop, options.detail)
    else:
        frames = np.stack([
            paste_render(paster_for(sf), sf.rgb, {k: v[i:i + 1] for k, v in parts.items()}, sf.crop, options.detail)[0]
            for i, sf in enumerate(sources)])
    stages["paste"] += time.perf_counter() - t0
    return frames, (to_uint8(crops) if want_faces else None)


def mask_alpha(sf: SourceFrame, size: int, options: RenderOptions) -> np.ndarray:
    """The alpha channel of a frame rendered from ``sf``: (H, W) uint8 in the full frame
    (255: rendered, 0: the source's own pixels): the geometric renderer's fixed ring, or
    the network renderer's feathered face mask; with ``crop_only`` the (size, size) crop's
    face mask."""
    if options.renderer == "geometry" and not options.crop_only:
        # The geometric renderer changes pixels inside its fixed ring only (exactly the
        # source's outside it), so the ring is the alpha.
        ring = ring_points(sf.landmarks, options.geometry.fixed_ring)[:, :2]
        alpha = np.zeros(sf.rgb.shape[:2], np.uint8)
        cv2.fillPoly(alpha, [np.round(ring * 4).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=2)
        return alpha
    if options.crop_only:
        return (face_mask(sf.crop_landmarks, size, options.paste) * 255 + 0.5).astype(np.uint8)
    paster = PasteBack(sf.rgb.shape[:2], sf.matrix, sf.landmarks, size, options.paste)
    alpha = np.zeros(sf.rgb.shape[:2], np.uint8)
    if paster.mask_roi is not None:
        x0, y0, x1, y1 = paster.roi
        alpha[y0:y1, x0:x1] = (paster.mask_roi[0, 0].numpy() * 255 + 0.5).astype(np.uint8)
    return alpha


def render_video(model, source: SourceFrame | SourceClip, attrs: np.ndarray, times: np.ndarray, fps: Fraction | float,
                 output: str | Path, options: RenderOptions = RenderOptions(), audio_from: str | None = None,
                 driver_video: str | None = None,
                 progress: Callable[[int, int], None] | None = None, source_cache=None,
                 placement: np.ndarray | None = None) -> RenderResult:
    """Render the per-frame attributes onto the source and write the video.

    Args:
        model: a loaded :class:`icface_video.model.ReenactmentModel` (on its device).
        source: a still (:class:`SourceFrame`) or a :class:`SourceClip`.
        attrs: (N, 20) attributes per output frame (AUs 0..5, angles rad).
        times: (N,) the output frames' times in seconds on the input timeline (a source
            clip's frames and the preview's driver are taken at these times); the output
            starts at ``times[0]``, and so does the audio taken from ``audio_from``.
        fps: output frame rate, exact (a Fraction such as 30000/1001; a float is snapped
            to a standard rate, :func:`icface_video.media.exact_rate`).
        output: final path (written to a temporary name first); its extension decides
            the container (:func:`icface_video.encode.output_format`), a pattern such as
            ``frames/%05d.png`` writes an image sequence.
        audio_from: file whose audio is muxed in (None: no audio).
        driver_video: shown in the preview's middle panel.
        source_cache: a still source's :meth:`model.prepare_source` result, if already made.
        placement: optional (N, 3) head shift (dx, dy) in source-frame pixels and scale factor
            per frame (absolute driving; geometry renderer only).
    """
    output = Path(output)
    fmt = output_format(output, options.encode.codec, options.encode.alpha)
    fps = exact_rate(fps)
    n = len(attrs)
    start = time.perf_counter()
    stages = {"generator": 0.0, "paste": 0.0, "encode": 0.0, "source": 0.0, "geometry": 0.0}
    still = isinstance(source, SourceFrame)
    first = source if still else next(source.frames_at(times[:1]))[1]
    if options.crop_only:
        width = height = model.resolution
    else:
        width, height = even_size(first.rgb.shape[1], first.rgb.shape[0])
    problem = frame_size_problem(fmt, width, height)
    if problem:
        raise InputError(getattr(source, "path", output), problem)
    dev = model.device
    half = dev.type == "cuda"
    cache = None
    geo = geometry_stage(model, options)
    if still and geo is None:
        cache = source_cache or encode_sources(model, [first])

    def paster_for(sf: SourceFrame) -> PasteBack:
        return PasteBack(sf.rgb.shape[:2], sf.matrix, sf.landmarks, model.resolution, options.paste)

    paster = paster_for(first) if still and not options.crop_only and geo is None else None
    preview = Preview(output, fps, n, options.overwrite, driver_video) if options.preview else None
    has_audio = bool(audio_from) and options.encode.audio and fmt.audio_codec is not None
    alphas: dict[int, np.ndarray] = {}  # a still's mask, made once

    def alpha_for(sf: SourceFrame) -> np.ndarray:
        if not still:
            return mask_alpha(sf, model.resolution, options)[:height, :width]
        if 0 not in alphas:
            alphas[0] = mask_alpha(sf, model.resolution, options)[:height, :width]
        return alphas[0]
    ok = False
    try:
        with atomic_output(output, options.overwrite) as tmp:
            with VideoEncoder(tmp, width, height, fps, options.encode, audio_from if has_audio else None,
                              duration=float(n / fps), audio_start=float(times[0]) if n else 0.0) as enc:
                clip_frames = None if still else source.frames_at(times)
                # Large frames go one at a time (the geometric renderer gains nothing from
                # batches), so memory holds one output frame, whatever the source's size.
                step = 1 if first.rgb.size > 4_000_000 * 3 else options.batch_size
                for b0 in range(0, n, step):
                    b1 = min(n, b0 + step)
                    batch_attrs = torch.from_numpy(np.ascontiguousarray(attrs[b0:b1], np.float32)).to(dev)
                    t0 = time.perf_counter()
                    if still:
                        sources = [first] * (b1 - b0)
                    else:
                        # A source clip: this batch's source frames, encoded together.
                        sources = [sf for _, sf in itertools.islice(clip_frames, b1 - b0)]
                        stages["source"] += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        if geo is None:
                            cache = encode_sources(model, sources)
                    if geo is not None:
                        frames, faces = _geometry_batch(geo, sources, attrs[b0:b1],
                                                        None if placement is None else placement[b0:b1],
                                                        model.resolution, options.crop_only, preview is not None)
                        stages["geometry"] += time.perf_counter() - t0
                    else:
                        frames, faces = _network_batch(model, cache, batch_attrs, sources, paster, paster_for,
                                                       options, preview is not None, half, stages, t0)
                    t0 = time.perf_counter()
                    for k, frame in enumerate(frames):
                        enc.write(np.ascontiguousarray(frame[:height, :width]),
                                  alpha_for(sources[k]) if enc.alpha else None)
                        if preview is not None:
                            preview.add(b0 + k, float(times[b0 + k]), sources[k].rgb, frame, faces[k])
                    stages["encode"] += time.perf_counter() - t0
                    if progress is not None:
                        progress(b1, n)
                    raise_if_terminated()
        ok = True
    finally:
        if preview is not None:
            preview.close(ok)
    return RenderResult(
        output=str(output), frames=n, fps=fps, width=width, height=height, audio=has_audio,
        seconds=time.perf_counter() - start,
        preview=str(preview.video_path) if preview else None,
        contact_sheet=str(preview.sheet_path) if preview else None,
        stage_seconds={k: round(v, 3) for k, v in stages.items()},
    )


class _CallableModule(types.ModuleType):
    """This module, callable: ``icface_video.reenact(source, driving, output, **options)`` is
    the Python API's one-call job (:func:`icface_video.api.reenact`), whether or not the
    module was imported first (importing a submodule binds its name on the package)."""

    def __call__(self, source, driving=None, output=None, **options) -> dict:
        from .api import reenact

        return reenact(source, driving, output, **options)


sys.modules[__name__].__class__ = _CallableModule
