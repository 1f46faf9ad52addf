"""The Python API: one call for a whole job, and an object for frames held in memory.

::

    import icface_video

    # A whole job, with the command line's options (names as in `batch` job files):
    summary = icface_video.reenact("actor.jpg", "take.mp4", "out.mp4", preset="smile", crf=20)

    # Frames in memory: numpy in, numpy out (full frames; no aligned crops needed).
    model = icface_video.load_model()                       # once; shared by every call
    face = icface_video.Reenactor(photo_rgb, model=model)   # the source analysed and encoded once
    frames = face.drive(driver_frames)                      # (N, H, W, 3) uint8, driver faces measured
    frames = face.render(attrs)                             # or (N, 20) attributes you made yourself

Errors are the command line's (:mod:`icface_video.errors`): :class:`UsageError` for a bad
option or argument, :class:`InputError` for an unreadable input or one without a face,
:class:`OutputError` for an output that exists (without ``overwrite=True``) or cannot be
written. All are :class:`IcfaceError`; no other exception is raised for bad input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .attributes import NUM_ATTRS, clip_aus
from .errors import InputError, UsageError
from .options import BATCH_FIELDS, DEFAULTS, PART_FIELDS, check_option

if TYPE_CHECKING:
    from .driving import Mode
    from .model import ReenactmentModel
    from .smoothing import SmoothMethod

# reenact()'s options: every job-file field of `batch` (the same checks apply), plus these
# (the options' CLI-only ones that a call can take).
EXTRA_OPTIONS = ("model", "device", "overwrite")


def load_model(model: str | os.PathLike | None = None, device: str = DEFAULTS.device,
               eyelids: bool = DEFAULTS.eyelids) -> ReenactmentModel:
    """Load a model folder once, to pass to :func:`reenact` or :class:`Reenactor` (``model=``).

    Args:
        model: model folder or training checkpoint folder; None = the shipped model.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``.
        eyelids: use the folder's eyelid warp (``eyelids.json``) when it has one.

    Returns:
        :class:`icface_video.model.ReenactmentModel` on its device.
    Raises:
        UsageError: unknown device. InputError: missing or corrupt model folder.
    """
    from .model import ReenactmentModel
    from .tensors import pick_device

    if not isinstance(device, str):
        raise UsageError(f"device: expected a name like 'cpu' or 'cuda', got {device!r}")
    return ReenactmentModel.load(model, device=pick_device(device), eyelids=bool(eyelids))


def _model_of(model: ReenactmentModel | str | os.PathLike | None, device: str = DEFAULTS.device,
              eyelids: bool = DEFAULTS.eyelids) -> ReenactmentModel:
    from .model import ReenactmentModel

    if isinstance(model, ReenactmentModel):
        return model
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise UsageError(f"model: expected a folder or a loaded model, got {type(model).__name__}")
    return load_model(model, device, eyelids)


def reenact(source: str | os.PathLike, driving: str | os.PathLike | None = None,
            output: str | os.PathLike | None = None, *,
            progress: Callable[[str, int, int], None] | None = None, **options) -> dict:
    """Run one reenactment job, as ``icface-video reenact`` does; returns its ``--json`` summary.

    Args:
        source: photo or clip. driving: video or attribute CSV (None: part drivers only, or
            a source clip with presets). output: the video to write (required).
        options: the command line's options with ``_`` for ``-``: ``mode``, ``relative``
            (True/False; default: relative for photos), ``pose_from``, ``expression_from``,
            ``eyes_from``, ``mouth_from``, ``brows_from``, ``preset`` and ``set`` (a string
            or a list of them), ``smooth``, ``smooth_strength``, ``face_index``,
            ``source_face``, ``driver_face``, ``crop_only``, ``color_match``, ``crf``,
            ``x264_preset``, ``no_audio``, ``preview``, ``batch_size``, ``detail``,
            ``eyelids``, ``codec``, ``alpha``, ``start``, ``duration``, ``renderer``
            (:data:`icface_video.options.BATCH_FIELDS`, defaults and ranges in
            :class:`icface_video.options.ReenactOptions`), ``overwrite`` (default False),
            ``model`` (a folder, or a model from :func:`load_model`, so many calls share one
            loaded model) and ``device``.
        progress: called as ``progress(stage, done, total)`` while it runs (the command
            line's progress rows; ``studio`` shows them as a bar), or None.

    Returns:
        dict: output, frames, fps, width, height, audio, seconds, stage_seconds,
        lost_driver_frames, ... (what ``reenact --json`` prints).
    Raises:
        UsageError, InputError, OutputError (see the module docstring).
    """
    from . import batch as B
    from .jobs import run_reenact
    from .memo import AnalysisCache
    from .outputs import check_output

    if output is None:
        raise UsageError("output: the video to write is required")
    unknown = sorted(set(options) - set(BATCH_FIELDS) - set(EXTRA_OPTIONS))
    fixed = sorted(set(options) & {"source", "driving", "output"})
    if unknown or fixed:
        raise UsageError(f"unknown option(s) {', '.join(unknown + fixed)} "
                         f"(expected {', '.join(sorted((set(BATCH_FIELDS) | set(EXTRA_OPTIONS)) - {'source', 'driving', 'output'}))})")
    for name, value in (("source", source), ("driving", driving), ("output", output)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise UsageError(f"{name}: expected a path, got {type(value).__name__}")
    overwrite = options.pop("overwrite", False)
    if not isinstance(overwrite, bool):
        raise UsageError(f"overwrite: expected True or False, got {overwrite!r}")
    model, device = options.pop("model", None), options.pop("device", DEFAULTS.device)
    if progress is not None and not callable(progress):
        raise UsageError(f"progress: expected a function (stage, done, total), got {type(progress).__name__}")
    out = str(Path(output).expanduser().resolve())
    check_output(out, overwrite)
    row = {k: v for k, v in options.items() if v is not None}
    for key in ("preset", "set"):
        if isinstance(row.get(key), (list, tuple)):
            row[key] = [str(v) for v in row[key]]
    row.update(source=os.fspath(source), output=out)
    if driving is not None:
        row["driving"] = os.fspath(driving)
    specs, problems = B.validate([(1, row)], Path.cwd(), Path(out).parent)
    if problems:
        first = problems[0]
        message = "; ".join(f"{p.field}: {p.reason}" for p in problems)
        if first.field in ("source", "driving", *PART_FIELDS, "preset"):
            raise InputError(row.get(first.field, first.field), message)
        raise UsageError(message)
    job = B.to_reenact_job(specs[0], overwrite)
    return run_reenact(job, _model_of(model, device, job.eyelids), progress, cache=AnalysisCache())


def _check_rgb(name: str, rgb) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 \
            or min(rgb.shape[:2]) < 16:
        shape = getattr(rgb, "shape", None)
        raise UsageError(f"{name}: expected an (H, W, 3) uint8 RGB picture at least 16 px a side, got "
                         f"{type(rgb).__name__} {shape} {getattr(rgb, 'dtype', '')}".rstrip())
    return np.ascontiguousarray(rgb)


class Reenactor:
    """Reenact one face held in memory: numpy pictures in, numpy pictures out.

    The source picture is analysed (face found, aligned, cropped) once, and with the
    network renderer encoded by the network once; each call then renders full frames of
    the source's size with the face reenacted (the geometric renderer: the picture warped
    over its face mesh; the network: pasted back), the rest of the picture untouched.

    Args:
        source: (H, W, 3) uint8 RGB picture with a face.
        model: a folder, None (the shipped model) or a model from :func:`load_model`.
        device, eyelids: as in :func:`load_model` (used when ``model`` is not loaded yet).
        face_index: which face in ``source`` (0 = largest).
        renderer: ``geometry`` (the default, as on the command line) or ``network``.
        detail: paste back at the picture's resolution (the command line's ``--detail``;
            network renderer).
        color_match: match the generated face's colours to the source's.
        batch_size: frames per generator call (1..256).

    Raises:
        UsageError: bad argument. InputError: no face in ``source``.
    """

    def __init__(self, source: np.ndarray, model: ReenactmentModel | str | os.PathLike | None = None, *,
                 device: str = DEFAULTS.device,
                 eyelids: bool = DEFAULTS.eyelids, face_index: int = DEFAULTS.face_index,
                 renderer: str = DEFAULTS.renderer, detail: bool = DEFAULTS.detail,
                 color_match: bool = DEFAULTS.color_match, batch_size: int = DEFAULTS.batch_size) -> None:
        from .paste import PasteBack, PasteConfig
        from .reenact import RenderOptions, geometry_stage
        from .source import encode_sources, still_from_rgb

        rgb = _check_rgb("source", source)
        index = check_option("face_index", face_index)
        renderer = check_option("renderer", renderer)
        self.batch_size = check_option("batch_size", batch_size)
        self.model = _model_of(model, device, eyelids)
        self.detail = bool(detail)
        self._geo = geometry_stage(self.model, RenderOptions(renderer=renderer))
        self._still = still_from_rgb(rgb.copy(), self.model.resolution, index, "source")
        if self._geo is None:
            self._cache = encode_sources(self.model, [self._still])
            self._paster = PasteBack(rgb.shape[:2], self._still.matrix, self._still.landmarks, self.model.resolution,
                                     PasteConfig(color_match=bool(color_match)))

    @property
    def source_attributes(self) -> np.ndarray:
        """(20,) float32 the source face's own attributes (17 AUs 0..5, pitch/yaw/roll rad)."""
        return self._still.attrs.copy()

    @property
    def face_region(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) pixels, end exclusive: the box that renders may change; every
        pixel outside it is the source picture's own."""
        roi = self._geo.renderer(self._still.rgb, self._still.landmarks).roi if self._geo is not None else self._paster.roi
        x0, y0, x1, y1 = (int(v) for v in roi)
        return x0, y0, x1, y1

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the pictures :meth:`render` returns (the source's)."""
        return tuple(self._still.rgb.shape[:2])

    def render(self, attrs: np.ndarray, crop_only: bool = False) -> np.ndarray:
        """The source face with the given attributes.

        Args:
            attrs: (20,) or (N, 20) AUs 0..5 (clipped) and pitch, yaw, roll in radians, in
                :data:`icface_video.attributes.ATTR_NAMES` order.
            crop_only: return the aligned (R, R) face crops (R: the model's resolution) instead of
                full pictures.

        Returns:
            (N, H, W, 3) uint8 RGB (N = 1 for a (20,) input); with ``crop_only`` (N, R, R, 3).
        """
        import torch

        from .reenact import paste_render
        from .tensors import to_uint8

        a = np.asarray(attrs, np.float32) if isinstance(attrs, (np.ndarray, list, tuple)) else None
        if a is not None and a.ndim == 1:
            a = a[None]
        if a is None or a.ndim != 2 or a.shape[1] != NUM_ATTRS or len(a) == 0 or not np.isfinite(a).all():
            raise UsageError(f"attrs: expected finite (N, {NUM_ATTRS}) or ({NUM_ATTRS},) attributes, got "
                             f"{getattr(attrs, 'shape', type(attrs).__name__)}")
        a = clip_aus(a.copy())
        if self._geo is not None:
            from .reenact import geometry_batch

            return geometry_batch(self._geo, [self._still] * len(a), a, None, self.model.resolution, crop_only, False)[0]
        dev = self.model.device
        out = []
        for b0 in range(0, len(a), self.batch_size):
            batch = torch.from_numpy(a[b0:b0 + self.batch_size]).to(dev)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
                parts = self.model.render_parts(self._cache, batch)
            parts = {k: v.float().cpu() for k, v in parts.items()}
            if crop_only:
                out.append(to_uint8(parts["image"]))
            else:
                out.append(paste_render(self._paster, self._still.rgb, parts, self._still.crop, self.detail))
        return np.concatenate(out)

    def measure(self, frames: Sequence[np.ndarray], fps: float = 25.0, face_index: int = DEFAULTS.face_index,
                smooth: SmoothMethod = DEFAULTS.smooth, smooth_strength: float = DEFAULTS.smooth_strength):
        """Measure a driver's frames held in memory (the face followed through them).

        Returns:
            :class:`icface_video.driving.AttributeTrack`: times (N,) s at ``fps``, attrs
            (N, 20) smoothed, success (N,) where the face was found.
        Raises:
            UsageError: bad frames or options. InputError: no face in any frame.
        """
        from .driving import AttributeTrack
        from .media import Frame, MediaInfo
        from .smoothing import SmoothConfig
        from .track import analyze_frames

        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        if not isinstance(frames, (list, tuple, np.ndarray)) or len(frames) == 0:
            raise UsageError("frames: expected a non-empty list or (N, H, W, 3) array of uint8 RGB pictures")
        pictures = [_check_rgb(f"frames[{i}]", f) for i, f in enumerate(frames)]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 1 <= fps <= 240:
            raise UsageError(f"fps: expected 1..240, got {fps!r}")
        smooth, smooth_strength = check_option("smooth", smooth), check_option("smooth_strength", smooth_strength)
        index = check_option("face_index", face_index)
        h, w = pictures[0].shape[:2]
        info = MediaInfo("frames", len(pictures) == 1, w, h, float(fps), len(pictures), len(pictures) / fps, 0, False)
        track = analyze_frames((Frame(i, i / fps, p) for i, p in enumerate(pictures)), info, face_index=index)
        return AttributeTrack.from_face_track(track, SmoothConfig(smooth, smooth_strength))

    def drive(self, frames: Sequence[np.ndarray], mode: Mode = DEFAULTS.mode, relative: bool = True,
              fps: float = 25.0, face_index: int = DEFAULTS.face_index, smooth: SmoothMethod = DEFAULTS.smooth,
              smooth_strength: float = DEFAULTS.smooth_strength, crop_only: bool = False) -> np.ndarray:
        """Reenact the source with a driver's frames held in memory (any size; faces found in them).

        Args:
            frames: N (h, w, 3) uint8 RGB pictures of the driving face, in time order.
            mode: ``full``, ``pose`` or ``expression`` (what the driver drives).
            relative: apply the driver's change from its most neutral frame to the source's
                own values (the command line's default for photos), else copy its values.
            fps, face_index, smooth, smooth_strength: as in :meth:`measure`.

        Returns:
            (N, H, W, 3) uint8 RGB, the source's size (or crops with ``crop_only``).
        """
        from .driving import compose

        check_option("mode", mode)
        if not isinstance(relative, bool):
            raise UsageError(f"relative: expected True or False, got {relative!r}")
        track = self.measure(frames, fps, face_index, smooth, smooth_strength)
        attrs = compose(self._still.attrs, track.times, track, {}, mode, relative)
        return self.render(attrs, crop_only=crop_only)
