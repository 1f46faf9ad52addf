"""Analyse a whole clip (or a still): per-frame face attributes, landmarks and crop transforms.

This is the stage between decoding and everything else::

    iter_frames(path) -> FaceAnalyzer.analyze(frame) -> FaceTrack (per-frame arrays)

Only small per-frame arrays are kept (20 attributes, 3 crop params; landmarks and
blendshapes on request), never the frames, so memory stays flat in the clip length
except for those arrays (about 6 KB per frame with landmarks).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Literal

import numpy as np

from .align import AlignConfig, landmark_params, smooth_params
from .attributes import NUM_ATTRS, NUM_AUS, AttributeSeries, attributes_from_face, clip_aus
from .errors import InputError
from .face import FaceAnalyzer, no_face_problem
from .media import FALLBACK_RATE, Frame, MediaInfo, iter_frames, probe
from .mesh_topology import NUM_LANDMARKS
from .smoothing import SmoothConfig, fill_missing, smooth

# Attribute units for the causal smoother: one AU unit is the full 0..5 scale, angles 1.4 rad.
ATTR_UNITS = np.array([5.0] * NUM_AUS + [1.4] * (NUM_ATTRS - NUM_AUS), np.float32)


def smooth_attributes(attrs: np.ndarray, times: np.ndarray, config: SmoothConfig = SmoothConfig()) -> np.ndarray:
    """Measured attributes smoothed over time with ``config`` (units :data:`ATTR_UNITS`), AUs
    clipped to 0..5. Convention: attrs (N, 20), gap-filled; times (N,) s; returns (N, 20)."""
    return clip_aus(smooth(attrs, times, config, unit=ATTR_UNITS))


@dataclass
class FaceTrack(AttributeSeries):
    """Per-frame face analysis of one clip (N frames; a still has N = 1): the measurement stage.

    Everything measured of the followed face, raw (gap-filled, unsmoothed), with its
    geometry (crop params, landmarks). It becomes an attribute CSV (``extract``,
    :func:`icface_video.csvio.write_attributes_csv`), a driving signal
    (:meth:`icface_video.driving.AttributeTrack.from_face_track`) or a source clip
    (:class:`icface_video.source.SourceClip`).

    Attributes:
        info: the source's :class:`MediaInfo`.
        times: (N,) float64 seconds from the first frame.
        success: (N,) bool, True where the face was found.
        confidence: (N,) float32 0..1 (0 where not found).
        raw_attrs: (N, 20) float32 as measured; rows without a face are filled from
            neighbours (linear in time), never zeros.
        crop_params: (N, 3) float32 (cx, cy, side) full-frame pixels, filled, unsmoothed.
        landmarks: (N, 478, 3) float32 pixels, or None unless requested (NaN where not found).
        blendshapes: (N, 52) float32 0..1, or None unless requested (NaN where not found).
        fallback_frames: how many faces came from the fallback detector.
    """

    info: MediaInfo
    times: np.ndarray
    success: np.ndarray
    confidence: np.ndarray
    raw_attrs: np.ndarray
    crop_params: np.ndarray
    landmarks: np.ndarray | None = None
    blendshapes: np.ndarray | None = None
    fallback_frames: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def faces_found(self) -> int:
        return int(self.success.sum())

    @property
    def rate(self) -> Fraction:
        """The clip's frame rate, exact (:attr:`MediaInfo.rate`; 25 for a still or when unknown)."""
        return self.info.rate or FALLBACK_RATE

    def attributes(self, config: SmoothConfig = SmoothConfig()) -> np.ndarray:
        """(N, 20) attributes smoothed over time with ``config`` (AUs 0..5, angles rad)."""
        return smooth_attributes(self.raw_attrs, self.times, config)

    def smoothed_crop_params(self, align: AlignConfig = AlignConfig()) -> np.ndarray:
        """(N, 3) crop params smoothed over time (crops of a clip must not jitter)."""
        if self.num_frames == 1:
            return self.crop_params.copy()
        return smooth_params(self.crop_params, self.success, self.times, align)


ProgressFn = Callable[[int, int], None]

# A clip is analysed in two halves at once (one landmarker each, in two threads: MediaPipe
# and PyAV release the GIL) when it has at least this many frames per half. The second
# half's landmarker starts with a detection instead of tracking from frame split-1; that
# one frame is the only difference from a single pass.
MIN_FRAMES_PER_WORKER = 60
_default_workers: int | None = None


def set_analysis_workers(workers: int | None) -> None:
    """Process-wide default for :func:`analyze_media`'s ``workers`` (None: up to 2, one per core)."""
    global _default_workers
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _default_workers = workers


def analysis_workers() -> int:
    """How many threads analyse one clip by default: the set value, else min(2, usable cores)."""
    if _default_workers is not None:
        return _default_workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def analyze_media(
    path: str | os.PathLike,
    face_index: int = 0,
    keep_landmarks: bool = False,
    keep_blendshapes: bool = False,
    max_frames: int | None = None,
    progress: ProgressFn | None = None,
    fallback: bool = True,
    workers: int | None = None,
) -> FaceTrack:
    """Decode ``path`` (video or image) and analyse the followed face in every frame.

    Args:
        path: video or image.
        face_index: 0 = largest face (then followed through the clip), 1 = next, ...
        keep_landmarks / keep_blendshapes: also return the raw per-frame arrays.
        max_frames: stop after this many frames.
        progress: called as ``progress(done, total)`` (total 0 when unknown).
        fallback: use the full-range detector when the landmarker finds nothing.
        workers: 1 = one pass; 2 = two halves analysed at once (clips of at least
            ``2 * MIN_FRAMES_PER_WORKER`` declared frames); None = :func:`analysis_workers`.

    Raises:
        InputError: unreadable input, or no face in any frame.
    """
    info = probe(path)
    total = info.frame_count if max_frames is None else min(info.frame_count or max_frames, max_frames)
    workers = analysis_workers() if workers is None else workers
    opts: dict[str, Any] = dict(face_index=face_index, keep_landmarks=keep_landmarks, keep_blendshapes=keep_blendshapes,
                fallback=fallback)
    if info.is_still or workers < 2 or total < 2 * MIN_FRAMES_PER_WORKER:
        return analyze_frames(iter_frames(path, max_frames=max_frames), info, max_frames=max_frames,
                              progress=progress, **opts)
    split = total // 2
    counts = [0, 0]
    lock = threading.Lock()
    stop = threading.Event()

    def report(part: int) -> ProgressFn | None:
        if progress is None:
            return None

        def fn(done: int, _total: int) -> None:
            with lock:
                counts[part] = done
                progress(sum(counts), total)
        return fn

    # Both halves decode from the start (exact frame indices and times, no seeking);
    # the second only converts and analyses frames from ``split`` on.
    with ThreadPoolExecutor(max_workers=1) as pool:
        later = pool.submit(_analyze_rows, iter_frames(path, max_frames=max_frames, start=split), info,
                            progress=report(1), stop=stop, **opts)
        try:
            first = _analyze_rows(iter_frames(path, max_frames=split), info, progress=report(0), stop=stop, **opts)
        except BaseException:
            stop.set()
            raise
        rows = first.extend(later.result())
    return rows.track(info)


def analyze_frames(
    frames: Iterable[Frame],
    info: MediaInfo,
    face_index: int = 0,
    keep_landmarks: bool = False,
    keep_blendshapes: bool = False,
    max_frames: int | None = None,
    progress: ProgressFn | None = None,
    fallback: bool = True,
) -> FaceTrack:
    """Analyse already-decoded frames (a stream from :func:`iter_frames` or an image sequence).

    Same arguments as :func:`analyze_media`; ``info`` describes the stream (its
    ``is_still`` picks the landmarker's image or video mode).
    """
    total = 1 if info.is_still else info.frame_count
    if max_frames is not None and total:
        total = min(total, max_frames)
    wrapped = (lambda done, _t: progress(done, total)) if progress is not None else None
    return _analyze_rows(frames, info, face_index, keep_landmarks, keep_blendshapes, wrapped,
                         fallback).track(info)


@dataclass
class _Rows:
    """Per-frame results of one analysed run of frames, before gap filling."""

    times: list = field(default_factory=list)
    success: list = field(default_factory=list)
    conf: list = field(default_factory=list)
    attrs: list = field(default_factory=list)
    params: list = field(default_factory=list)
    landmarks: list | None = None
    blendshapes: list | None = None
    fallbacks: int = 0
    face_index: int = 0
    max_faces: int = 0  # the most faces seen in one frame

    def extend(self, other: "_Rows") -> "_Rows":
        for name in ("times", "success", "conf", "attrs", "params"):
            getattr(self, name).extend(getattr(other, name))
        for mine, theirs in ((self.landmarks, other.landmarks), (self.blendshapes, other.blendshapes)):
            if mine is not None:
                if theirs is None:
                    raise ValueError("rows: cannot join rows kept with and without landmarks or blendshapes")
                mine.extend(theirs)
        self.fallbacks += other.fallbacks
        self.max_faces = max(self.max_faces, other.max_faces)
        return self

    def track(self, info: MediaInfo) -> FaceTrack:
        ok = np.array(self.success, bool)
        t = np.array(self.times, np.float64)
        if not ok.any():
            where = "in the image" if info.is_still else f"in any of its {len(t)} frames"
            raise InputError(info.path, no_face_problem(self.face_index, self.max_faces, where))
        return FaceTrack(
            info=info,
            times=t,
            success=ok,
            confidence=np.array(self.conf, np.float32),
            raw_attrs=fill_missing(np.stack(self.attrs), ok, t),
            crop_params=fill_missing(np.stack(self.params), ok, t),
            landmarks=np.stack(self.landmarks) if self.landmarks is not None else None,
            blendshapes=np.stack(self.blendshapes) if self.blendshapes is not None else None,
            fallback_frames=self.fallbacks,
        )


def _analyze_rows(frames: Iterable[Frame], info: MediaInfo, face_index: int = 0, keep_landmarks: bool = False,
                  keep_blendshapes: bool = False, progress: ProgressFn | None = None, fallback: bool = True,
                  stop: threading.Event | None = None) -> _Rows:
    """One landmarker over a run of frames; ``progress(done, 0)`` after each; returns early when ``stop`` is set."""
    rows = _Rows(landmarks=[] if keep_landmarks else None, blendshapes=[] if keep_blendshapes else None,
                 face_index=face_index)
    mode: Literal["video", "image"] = "image" if info.is_still else "video"
    with FaceAnalyzer(mode=mode, face_index=face_index, fallback=fallback) as analyzer:
        for frame in frames:
            if stop is not None and stop.is_set():
                break
            face = analyzer.analyze(frame.rgb, frame.time)
            rows.times.append(frame.time)
            if face is None:
                rows.success.append(False)
                rows.conf.append(0.0)
                rows.attrs.append(np.zeros(NUM_ATTRS, np.float32))
                rows.params.append(np.zeros(3, np.float32))
                if rows.landmarks is not None:  # keep_landmarks
                    rows.landmarks.append(np.full((NUM_LANDMARKS, 3), np.nan, np.float32))
                if rows.blendshapes is not None:  # keep_blendshapes
                    rows.blendshapes.append(np.full(52, np.nan, np.float32))
            else:
                rows.success.append(True)
                rows.conf.append(face.confidence)
                rows.fallbacks += int(face.fallback)
                rows.attrs.append(attributes_from_face(face.blendshapes, face.matrix))
                rows.params.append(landmark_params(face.landmarks))
                if rows.landmarks is not None:
                    rows.landmarks.append(face.landmarks)
                if rows.blendshapes is not None:
                    rows.blendshapes.append(face.blendshapes)
            if progress is not None:
                progress(len(rows.times), 0)
        rows.max_faces = analyzer.max_faces
    return rows
