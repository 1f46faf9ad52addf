"""The reenactment pipeline: source face + per-frame attributes -> finished video.

Stages (one module each)::

    media (decode source / driver) -> track (face analysis) -> source (SourceFrame /
    SourceClip) -> driving.compose (+ presets, --set) -> renderer: geo_render (the motion
    model warps the full frame) or model + paste (the generator's crop, warped back into
    the full frame) -> encode (ffmpeg, audio muxed), preview

:func:`render_video` is the loop: per batch of output frames it takes the source frames
shown (:meth:`icface_video.source.Source.batches`), renders them and writes them, so
memory holds one batch of frames, whatever the length. What is made from a source frame
(its network encoding, paste-back, alpha mask) is made again only when the frame
changes: once for a photo, per batch for a clip.
"""

from __future__ import annotations

import sys
import time
import types
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np
import torch

from .align import AlignConfig, warp_crop
from .encode import EncodeConfig, VideoEncoder, even_size, frame_size_problem, output_format
from .errors import InputError, UsageError
from .geo_render import RENDERERS, GeometryConfig, GeometryStage, ring_points
from .media import exact_rate
from .options import DEFAULTS
from .outputs import atomic_output
from .paste import PasteBack, PasteConfig, face_mask
from .preview import Preview
from .runtime import raise_if_terminated
from .source import Source, SourceFrame, encode_sources
from .tensors import to_uint8

if TYPE_CHECKING:
    from .model import ReenactmentModel, SourceCache


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


def geometry_stage(model: ReenactmentModel, options: RenderOptions) -> GeometryStage | None:
    """The geometric stage when ``options.renderer`` is ``geometry``, else None.

    Raises:
        UsageError: an unknown renderer name.
        InputError: the model folder has no motion model.
    """
    if options.renderer not in RENDERERS:
        raise UsageError(f"--renderer {options.renderer}: expected one of {', '.join(RENDERERS)}")
    if options.renderer != "geometry":
        return None
    motion = getattr(model, "motion", None)
    if motion is None:
        raise InputError(getattr(model, "folder", None) or "model folder",
                         "no motion model (motion.json) for the geometry renderer; "
                         "use --renderer network or run python -m train.fit_motion")
    return GeometryStage(motion, options.geometry, getattr(model, "eyelids", None))


def paste_render(paster: PasteBack, frames: np.ndarray, parts: dict[str, torch.Tensor],
                 reference: torch.Tensor | None, detail: bool = True) -> np.ndarray:
    """Paste a render back: its parts at the frame's resolution when ``detail`` and the
    model has them (fast design), else its finished crop. Shapes as in :class:`PasteBack`."""
    if detail and "grid" in parts:
        return paster.paste_parts(frames, parts, reference)
    return paster.paste(frames, parts["image"], reference)


def render_still(model: ReenactmentModel, still: SourceFrame, attrs: torch.Tensor | None, detail: bool = True,
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
        target = attrs[:1].cpu().numpy() if attrs is not None else np.zeros_like(still.attrs)[None]
        return geometry_batch(geo, [still], target, None, model.resolution, crop_only, False)[0][0]
    cache = encode_sources(model, [still])
    parts = model.render_parts(cache, attrs) if attrs is not None else model.neutralize_parts(cache)
    parts = {k: v.float().cpu() for k, v in parts.items()}
    if crop_only:
        return to_uint8(parts["image"])[0]
    paster = PasteBack(still.rgb.shape[:2], still.matrix, still.landmarks, model.resolution)
    return paste_render(paster, still.rgb, parts, still.crop, detail)[0]


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


def geometry_batch(geo: GeometryStage, sources: list[SourceFrame], attrs: np.ndarray, placement: np.ndarray | None,
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


def _network_batch(model: ReenactmentModel, cache: SourceCache, batch_attrs: torch.Tensor, sources: list[SourceFrame],
                   pasters: Callable[[SourceFrame], PasteBack], options: RenderOptions, want_faces: bool,
                   half: bool, stages: dict[str, float], t0: float) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch of frames from the ICface generator, pasted back (or its crops with ``crop_only``);
    ``sources`` as yielded by :meth:`Source.batches` (one frame for the whole batch, or one per frame)."""
    with torch.autocast("cuda", dtype=torch.float16, enabled=half):
        parts = model.render_parts(cache, batch_attrs)
    parts = {k: v.float().cpu() for k, v in parts.items()}
    stages["generator"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    crops = parts["image"]
    if options.crop_only:
        frames = to_uint8(crops)
    elif len(sources) == 1:  # one picture under the whole batch: one paste-back
        frames = paste_render(pasters(sources[0]), sources[0].rgb, parts, sources[0].crop, options.detail)
    else:
        frames = np.stack([
            paste_render(pasters(sf), sf.rgb, {k: v[i:i + 1] for k, v in parts.items()}, sf.crop, options.detail)[0]
            for i, sf in enumerate(sources)])
    stages["paste"] += time.perf_counter() - t0
    return frames, (to_uint8(crops) if want_faces else None)


class _Reuse:
    """``make(key)``, made again only when the key changes: a source frame, or a list of them,
    compared by identity (a photo yields the same :class:`SourceFrame` for every batch, a
    clip new ones). Holding the last key keeps its objects, so an identity cannot be reused."""

    def __init__(self, make: Callable[[Any], Any], key: Any = None, value: Any = None) -> None:
        self.make, self.key, self.value = make, key, value

    def __call__(self, key: Any) -> Any:
        old = self.key
        same = key is old or (isinstance(key, list) and isinstance(old, list) and len(key) == len(old)
                              and all(a is b for a, b in zip(key, old)))
        if not same:
            self.key, self.value = key, self.make(key)
        return self.value


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


def render_video(model: ReenactmentModel, source: Source, attrs: np.ndarray, times: np.ndarray, fps: Fraction | float,
                 output: str | Path, options: RenderOptions = RenderOptions(), audio_from: str | None = None,
                 driver_video: str | None = None,
                 progress: Callable[[int, int], None] | None = None, source_cache=None,
                 placement: np.ndarray | None = None) -> RenderResult:
    """Render the per-frame attributes onto the source and write the video.

    Args:
        model: a loaded :class:`icface_video.model.ReenactmentModel` (on its device).
        source: a :class:`~icface_video.source.Source`: a still (:class:`SourceFrame`) or
            a :class:`~icface_video.source.SourceClip`.
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
    source_h, source_w = source.shape
    if options.crop_only:
        width = height = model.resolution
    else:
        width, height = even_size(source_w, source_h)
    problem = frame_size_problem(fmt, width, height)
    if problem:
        raise InputError(getattr(source, "path", output), problem)
    dev = model.device
    half = dev.type == "cuda"
    geo = geometry_stage(model, options)
    # Made from the source frames, again only when they change (once for a still).
    encoded = _Reuse(lambda frames: encode_sources(model, frames),
                     *(([source], source_cache) if source_cache is not None else ()))
    pasters = _Reuse(lambda sf: PasteBack(sf.rgb.shape[:2], sf.matrix, sf.landmarks, model.resolution, options.paste))
    alphas = _Reuse(lambda sf: mask_alpha(sf, model.resolution, options)[:height, :width])
    preview = Preview(output, fps, n, options.overwrite, driver_video) if options.preview else None
    has_audio = bool(audio_from) and options.encode.audio and fmt.audio_codec is not None
    ok = False
    try:
        with atomic_output(output, options.overwrite) as tmp:
            with VideoEncoder(tmp, width, height, fps, options.encode, audio_from if has_audio else None,
                              duration=float(n / fps), audio_start=float(times[0]) if n else 0.0) as enc:
                # Large frames go one at a time (the geometric renderer gains nothing from
                # batches), so memory holds one output frame, whatever the source's size.
                step = 1 if source_h * source_w > 4_000_000 else options.batch_size
                batches = source.batches(times, step)
                for b0 in range(0, n, step):
                    b1 = min(n, b0 + step)
                    batch_attrs = torch.from_numpy(np.ascontiguousarray(attrs[b0:b1], np.float32)).to(dev)
                    t0 = time.perf_counter()
                    sources = next(batches)  # one frame for the whole batch, or one per output frame
                    shown = sources * (b1 - b0) if len(sources) == 1 else sources
                    stages["source"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    if geo is not None:
                        frames, faces = geometry_batch(geo, shown, attrs[b0:b1],
                                                        None if placement is None else placement[b0:b1],
                                                        model.resolution, options.crop_only, preview is not None)
                        stages["geometry"] += time.perf_counter() - t0
                    else:
                        frames, faces = _network_batch(model, encoded(sources), batch_attrs, sources, pasters,
                                                       options, preview is not None, half, stages, t0)
                    t0 = time.perf_counter()
                    for k, frame in enumerate(frames):
                        enc.write(np.ascontiguousarray(frame[:height, :width]), alphas(shown[k]) if enc.alpha else None)
                        if preview is not None:
                            preview.add(b0 + k, float(times[b0 + k]), shown[k].rgb, frame,
                                        None if faces is None else faces[k])
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
