"""Reenactment jobs: everything one ``reenact`` / ``animate`` run needs, as plain data.

``icface-video reenact`` builds a :class:`ReenactJob` from its options and calls
:func:`run_reenact`; ``batch`` (one job per row) reuses the same pieces. Attribute
planning (:func:`plan_attributes`) is separate from rendering, so it can be tested
without a model.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from .align import landmark_params
from .controls import Op, apply_ops
from .driving import AttributeTrack, compose
from .encode import frame_size_problem, output_format
from .errors import InputError, UsageError
from .media import is_variable_rate, probe, rate_json, uniform_times
from .memo import AnalysisCache, cached_track, driver_label
from .presets import Preset
from .reenact import (RenderOptions, RenderResult, SourceClip, SourceFrame, analyze_still, encode_sources,
                      render_video)
from .smoothing import SmoothConfig


@dataclass
class ReenactJob:
    """One reenactment.

    Attributes:
        source: photo or clip path.
        output: video path.
        driving: main driver (video or CSV) or None.
        parts: region -> driver path (``pose``, ``expression``, ``eyes``, ``mouth``, ``brows``).
        mode: ``full``, ``pose`` or ``expression`` (what ``driving`` drives).
        relative: None = relative for photos, absolute for clips.
        presets: applied in order after driving. sets: ``--set`` ops, applied last.
        smoothing: temporal smoothing of driver attributes.
        face_index: which face in the source and the drivers (0 = largest), unless
            ``source_face`` / ``driver_face`` say otherwise for one side.
        source_face: which face in the source (None: ``face_index``).
        driver_face: which face in every driver (None: ``face_index``).
        render: :class:`RenderOptions`.
        start, duration: the part of the primary timeline to reenact (seconds from its
            first frame; duration None = to the end). Every driver and a source clip are
            cut at the same times; the audio too.
    """

    source: str
    output: str
    driving: str | None = None
    parts: dict[str, str] = field(default_factory=dict)
    mode: str = "full"
    relative: bool | None = None
    presets: list[Preset] = field(default_factory=list)
    sets: list[Op] = field(default_factory=list)
    smoothing: SmoothConfig = field(default_factory=SmoothConfig)
    face_index: int = 0
    render: RenderOptions = field(default_factory=RenderOptions)
    start: float = 0.0
    duration: float | None = None
    source_face: int | None = None
    driver_face: int | None = None

    @property
    def source_index(self) -> int:
        """Which face in the source is reenacted."""
        return self.face_index if self.source_face is None else self.source_face

    @property
    def driver_index(self) -> int:
        """Which face in the drivers drives it."""
        return self.face_index if self.driver_face is None else self.driver_face


@dataclass
class Plan:
    """Per-output-frame attributes and timing of a job.

    Attributes:
        source: the prepared still or clip.
        attrs: (N, 20). times: (N,) s on the primary timeline (from ``start``; constant
            rate: a variable-rate driver is resampled). fps: output rate, exact.
        audio_from: file to take audio from (None: none). driver_video: for the preview.
        lost_frames: driver frames where the face was lost (held/interpolated).
        placement: (N, 3) the head's shift (dx, dy) px and scale factor in the source frame
            (a photo driven in absolute mode by a video), else None.
    """

    source: SourceFrame | SourceClip
    attrs: np.ndarray
    times: np.ndarray
    fps: Fraction
    audio_from: str | None
    driver_video: str | None
    lost_frames: int
    placement: np.ndarray | None = None


def apply_overrides(attrs: np.ndarray, times: np.ndarray, presets: list[Preset], sets: list[Op],
                    envelope: np.ndarray | float = 1.0) -> np.ndarray:
    """Presets (in order, each with its own timeline) then ``--set`` ops, on a (N, 20) track."""
    out = attrs
    for preset in presets:
        out = preset.apply(out, times, envelope)
    return apply_ops(out, sets) if sets else np.asarray(out, np.float32)


def plan_attributes(job: ReenactJob, resolution: int,
                    progress: Callable[[str, int, int], None] | None = None,
                    cache: AnalysisCache | None = None) -> Plan:
    """Analyse the source and drivers and compute every output frame's attributes.

    Raises:
        UsageError: a photo source with no driver.
        InputError: unreadable inputs, no face in the source, a driver with no face.
    """
    def step(name: str):
        return (lambda done, total: progress(name, done, total)) if progress else None

    memo = cache or AnalysisCache()

    def track_of(path: str, label: str) -> AttributeTrack:
        return cached_track(memo, path, job.smoothing, job.driver_index, step(label))

    info = probe(job.source)
    if info.is_still and not job.driving and not job.parts:
        raise UsageError(f"{job.source}: a photo source needs --driving (or a part driver); "
                         "use `icface-video animate` or `edit` for presets alone")
    if not job.render.crop_only:  # frames the encoder cannot take are refused before any work
        problem = frame_size_problem(output_format(job.output, job.render.encode.codec, job.render.encode.alpha),
                                     info.width, info.height)
        if problem:
            raise InputError(job.source, problem)

    def analyse_source() -> SourceFrame | SourceClip:
        if info.is_still:
            return memo.get("still", job.source, lambda: analyze_still(job.source, resolution, job.source_index),
                            resolution, job.source_index)
        return SourceClip(job.source, resolution, job.source_index, step("analyse source"))

    # The source is analysed in a second thread while the drivers are (MediaPipe and
    # PyAV release the GIL), so the two overlap on a multi-core machine.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(analyse_source)
        try:
            tracks: dict[str, AttributeTrack] = {}
            for region, path in job.parts.items():
                tracks[region] = track_of(path, driver_label(region))
            main = track_of(job.driving, driver_label(None)) if job.driving else None
        except BaseException:
            pending.cancel()
            raise
        source = pending.result()
    primary = main or next(iter(tracks.values()), None)
    if info.is_still:
        base = source.attrs
    if primary is not None:
        times, fps = primary.times, primary.fps
    else:
        times, fps = source.times, source.track.info.rate or Fraction(25)
    if is_variable_rate(times, fps):
        times = uniform_times(times, fps)  # frame k shown at k / fps: picture and audio in step
    times = cut_timeline(times, job.start, job.duration, primary.path if primary is not None else job.source)
    if not info.is_still:
        base = source.attrs[source.indices_at(times)]
    relative = job.relative if job.relative is not None else info.is_still
    attrs = compose(base, times, main, tracks, job.mode, relative) if primary is not None else np.array(base, np.float32)
    attrs = apply_overrides(attrs, times, job.presets, job.sets)
    lost = int((~primary.success).sum()) if primary is not None else 0
    audio_from = None
    if primary is not None and primary.has_audio:
        audio_from = primary.path
    elif primary is None and info.has_audio:
        audio_from = job.source
    driver_video = primary.path if primary is not None and primary.is_video else None
    placement = None
    pose_track = tracks.get("pose") or (main if job.mode != "expression" else None)
    if info.is_still and not relative and pose_track is not None:
        placement = pose_track.placement(times, float(landmark_params(source.landmarks)[2]))
    return Plan(source, attrs, times, fps, audio_from, driver_video, lost, placement)


def cut_timeline(times: np.ndarray, start: float = 0.0, duration: float | None = None,
                 label: str = "input") -> np.ndarray:
    """The frame times within ``[start, start + duration)`` (s; duration None: to the end).

    Raises:
        UsageError: ``start`` at or past the last frame (``label`` names the timeline).
    """
    if start == 0 and duration is None:
        return times
    end = np.inf if duration is None else start + duration
    eps = 1e-6
    keep = (times >= start - eps) & (times < end - eps)
    if not keep.any():
        raise UsageError(f"{label}: --start {start:g} is past its last frame (at {float(times[-1]):.3f} s)")
    return times[keep]


def run_reenact(job: ReenactJob, model, progress: Callable[[str, int, int], None] | None = None,
                cache: AnalysisCache | None = None) -> dict:
    """Plan and render one job; returns the JSON summary.

    ``cache`` (optional) keeps analysed sources/drivers and the network's encoding of
    still sources between jobs (``batch``).
    """
    import time

    start = time.perf_counter()
    plan = plan_attributes(job, model.resolution, progress, cache)
    analysis_seconds = time.perf_counter() - start
    source_cache = None
    if isinstance(plan.source, SourceFrame) and job.render.renderer == "network":
        still = plan.source
        encode = lambda: encode_sources(model, [still])  # noqa: E731
        source_cache = cache.get("encoded", job.source, encode, job.source_index) if cache else None
    result: RenderResult = render_video(
        model, plan.source, plan.attrs, plan.times, plan.fps, job.output, job.render,
        audio_from=plan.audio_from, driver_video=plan.driver_video,
        progress=(lambda d, t: progress("render", d, t)) if progress else None, source_cache=source_cache,
        placement=plan.placement)
    summary = {k: v for k, v in result.__dict__.items()}
    summary["stage_seconds"] = {"analysis": round(analysis_seconds, 3), **result.stage_seconds}
    summary.update(source=job.source, driving=job.driving, lost_driver_frames=plan.lost_frames,
                   **rate_json(plan.fps), render_fps=round(result.frames / max(result.seconds, 1e-9), 2))
    return summary
