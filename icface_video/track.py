"""Analyse a whole clip (or a still): per-frame face attributes, landmarks and crop transforms.

This is the stage between decoding and everything else::

    iter_frames(path) -> FaceAnalyzer.analyze(frame) -> FaceTrack (per-frame arrays)

Only small per-frame arrays are kept (20 attributes, 3 crop params; landmarks and
blendshapes on request), never the frames, so memory stays flat in the clip length
except for those arrays (about 6 KB per frame with landmarks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .align import AlignConfig, landmark_params, smooth_params
from .attributes import NUM_ATTRS, NUM_AUS, attributes_from_face
from .errors import InputError
from .face import NUM_LANDMARKS, FaceAnalyzer
from .media import Frame, MediaInfo, iter_frames, probe
from .smoothing import SmoothConfig, fill_missing, smooth

# Attribute units for the causal smoother: one AU unit is the full 0..5 scale, angles 1.4 rad.
ATTR_UNITS = np.array([5.0] * NUM_AUS + [1.4] * (NUM_ATTRS - NUM_AUS), np.float32)


@dataclass
class FaceTrack:
    """Per-frame face analysis of one clip (N frames; a still has N = 1).

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
    def num_frames(self) -> int:
        return int(self.times.shape[0])

    @property
    def faces_found(self) -> int:
        return int(self.success.sum())

    def attributes(self, config: SmoothConfig = SmoothConfig()) -> np.ndarray:
        """(N, 20) attributes smoothed over time with ``config`` (AUs 0..5, angles rad)."""
        out = smooth(self.raw_attrs, self.times, config, unit=ATTR_UNITS)
        out[:, :NUM_AUS] = np.clip(out[:, :NUM_AUS], 0.0, 5.0)
        return out

    def smoothed_crop_params(self, align: AlignConfig = AlignConfig()) -> np.ndarray:
        """(N, 3) crop params smoothed over time (crops of a clip must not jitter)."""
        if self.num_frames == 1:
            return self.crop_params.copy()
        return smooth_params(self.crop_params, self.success, self.times, align)


ProgressFn = Callable[[int, int], None]


def analyze_media(
    path: str | os.PathLike,
    face_index: int = 0,
    keep_landmarks: bool = False,
    keep_blendshapes: bool = False,
    max_frames: int | None = None,
    progress: ProgressFn | None = None,
    fallback: bool = True,
) -> FaceTrack:
    """Decode ``path`` (video or image) and analyse the followed face in every frame.

    Args:
        path: video or image.
        face_index: 0 = largest face (then followed through the clip), 1 = next, ...
        keep_landmarks / keep_blendshapes: also return the raw per-frame arrays.
        max_frames: stop after this many frames.
        progress: called as ``progress(done, total)`` (total 0 when unknown).
        fallback: use the full-range detector when the landmarker finds nothing.

    Raises:
        InputError: unreadable input, or no face in any frame.
    """
    info = probe(path)
    return analyze_frames(iter_frames(path, max_frames=max_frames), info, face_index=face_index,
                          keep_landmarks=keep_landmarks, keep_blendshapes=keep_blendshapes,
                          max_frames=max_frames, progress=progress, fallback=fallback)


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
    times, success, conf, attrs, params = [], [], [], [], []
    lms, bss = [], []
    fallbacks = 0
    mode = "image" if info.is_still else "video"
    with FaceAnalyzer(mode=mode, face_index=face_index, fallback=fallback) as analyzer:
        for frame in frames:
            face = analyzer.analyze(frame.rgb, frame.time)
            times.append(frame.time)
            if face is None:
                success.append(False)
                conf.append(0.0)
                attrs.append(np.zeros(NUM_ATTRS, np.float32))
                params.append(np.zeros(3, np.float32))
                if keep_landmarks:
                    lms.append(np.full((NUM_LANDMARKS, 3), np.nan, np.float32))
                if keep_blendshapes:
                    bss.append(np.full(52, np.nan, np.float32))
            else:
                success.append(True)
                conf.append(face.confidence)
                fallbacks += int(face.fallback)
                attrs.append(attributes_from_face(face.blendshapes, face.matrix))
                params.append(landmark_params(face.landmarks))
                if keep_landmarks:
                    lms.append(face.landmarks)
                if keep_blendshapes:
                    bss.append(face.blendshapes)
            if progress is not None:
                progress(len(times), total)
    ok = np.array(success, bool)
    t = np.array(times, np.float64)
    if not ok.any():
        where = "in the image" if info.is_still else f"in any of its {len(t)} frames"
        raise InputError(info.path, f"no face found {where}")
    return FaceTrack(
        info=info,
        times=t,
        success=ok,
        confidence=np.array(conf, np.float32),
        raw_attrs=fill_missing(np.stack(attrs), ok, t),
        crop_params=fill_missing(np.stack(params), ok, t),
        landmarks=np.stack(lms) if keep_landmarks else None,
        blendshapes=np.stack(bss) if keep_blendshapes else None,
        fallback_frames=fallbacks,
    )
