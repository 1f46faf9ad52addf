"""Render jobs: everything one ``reenact`` / ``animate`` run needs, as plain data, and the one planner.

``icface-video reenact``, each ``batch`` row and ``icface_video.reenact()`` turn their
:class:`~icface_video.options.ReenactOptions` into a :class:`ReenactJob`
(:func:`reenact_job`); ``animate`` makes an :class:`AnimateJob` (:func:`animate_job`).
:func:`plan_attributes` plans either (every output frame's attributes and times, a
:class:`Plan`) and :func:`run_reenact` plans and renders it. Planning is separate from
rendering, so it can be tested without a model.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .align import landmark_params
from .controls import Op, apply_ops, parse_set
from .driving import AttributeTrack, Mode, compose
from .encode import EncodeConfig, frame_size_problem, output_format
from .errors import InputError, UsageError
from .keyframes import Keyframes
from .media import FALLBACK_RATE, exact_rate, is_variable_rate, probe, rate_json, uniform_times
from .memo import AnalysisCache, cached_track, driver_label
from .options import DEFAULTS, FaceChoice, ReenactOptions
from .paste import PasteConfig
from .presets import Preset, load as load_preset, smooth_interp
from .reenact import RenderOptions, RenderResult, render_video
from .smoothing import SmoothConfig
from .source import SourceClip, SourceFrame, analyze_still, encode_sources

if TYPE_CHECKING:
    from .model import ReenactmentModel


@dataclass
class ReenactJob(FaceChoice):
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
        eyelids: use the model's eyelid geometry when it has one (False: render without).

    Defaults are :data:`icface_video.options.DEFAULTS`' (the command line's).
    """

    source: str
    output: str
    driving: str | None = None
    parts: dict[str, str] = field(default_factory=dict)
    mode: Mode = DEFAULTS.mode
    relative: bool | None = DEFAULTS.relative
    presets: list[Preset] = field(default_factory=list)
    sets: list[Op] = field(default_factory=list)
    smoothing: SmoothConfig = field(default_factory=lambda: SmoothConfig(DEFAULTS.smooth, DEFAULTS.smooth_strength))
    face_index: int = DEFAULTS.face_index
    render: RenderOptions = field(default_factory=RenderOptions)
    start: float = DEFAULTS.start
    duration: float | None = DEFAULTS.duration
    source_face: int | None = DEFAULTS.source_face
    driver_face: int | None = DEFAULTS.driver_face
    eyelids: bool = DEFAULTS.eyelids


@dataclass
class AnimateJob:
    """One animation of a photo with no driving video (``icface-video animate``).

    Attributes:
        source: photo path. output: video path.
        keyframes: parsed keyframe file or None.
        presets: applied over time: those without a timeline ramp in and out (``ramp``),
            those with one follow it. sets: ``--set`` ops, constant, applied last.
        duration: seconds; None = the keyframes' or presets' length, else 3.
        fps: output rate (made exact: 29.97 -> 30000/1001).
        ramp: fraction of the duration (0..0.5) over which presets without a timeline ramp in and out.
        source_index: which face in the photo. render: :class:`RenderOptions`.
        eyelids: as in :class:`ReenactJob`.
    """

    source: str
    output: str
    keyframes: Keyframes | None = None
    presets: list[Preset] = field(default_factory=list)
    sets: list[Op] = field(default_factory=list)
    duration: float | None = None
    fps: Fraction | float = FALLBACK_RATE
    ramp: float = 0.25
    source_index: int = DEFAULTS.face_index
    render: RenderOptions = field(default_factory=RenderOptions)
    eyelids: bool = DEFAULTS.eyelids


def load_overrides(presets: Sequence[str], sets: Sequence[str]) -> tuple[list[Preset], list[Op]]:
    """Presets (names or files) loaded and ``--set`` expressions parsed, in order.

    Raises:
        InputError: a preset that cannot be found or read, or is invalid. UsageError: a bad expression.
    """
    return [load_preset(n) for n in presets], [parse_set(e) for e in sets]


def render_options(opts: ReenactOptions, overwrite: bool = False) -> RenderOptions:
    """The :class:`RenderOptions` (paste-back, encoding, preview) of a set of options."""
    return RenderOptions(batch_size=opts.batch_size, detail=opts.detail, crop_only=opts.crop_only,
                         paste=PasteConfig(color_match=opts.color_match),
                         encode=EncodeConfig(crf=opts.crf, preset=opts.x264_preset, audio=not opts.no_audio,
                                             codec=opts.codec, alpha=opts.alpha),
                         preview=opts.preview, overwrite=overwrite, renderer=opts.renderer)


def reenact_job(opts: ReenactOptions, overwrite: bool = False) -> ReenactJob:
    """The job of ``reenact`` options (the command line's, a ``batch`` row's or the API's).

    Raises:
        UsageError: no source or output. InputError / UsageError: a bad preset or ``--set``.
    """
    if opts.source is None or opts.output is None:
        raise UsageError("a reenactment needs a source and an output")
    presets, sets = load_overrides(opts.preset, opts.set)
    return ReenactJob(source=opts.source, output=opts.output, driving=opts.driving, parts=opts.parts, mode=opts.mode,
                      relative=opts.relative, presets=presets, sets=sets,
                      smoothing=SmoothConfig(opts.smooth, opts.smooth_strength), face_index=opts.face_index,
                      source_face=opts.source_face, driver_face=opts.driver_face,
                      render=render_options(opts, overwrite), start=opts.start, duration=opts.duration,
                      eyelids=opts.eyelids)


def animate_job(opts: ReenactOptions, keyframes: Keyframes | None, duration: float | None, fps: float,
                ramp: float, overwrite: bool = False) -> AnimateJob:
    """The job of ``animate``: its options (source, output, presets, sets, render and face
    options) with the parsed keyframes; no audio (there is no driver to take it from)."""
    if opts.source is None or opts.output is None:
        raise UsageError("an animation needs a source and an output")
    if keyframes is None and not opts.preset and not opts.set:
        raise UsageError("animate needs --keyframes, --preset or --set")
    presets, sets = load_overrides(opts.preset, opts.set)
    return AnimateJob(source=opts.source, output=opts.output, keyframes=keyframes, presets=presets, sets=sets,
                      duration=duration, fps=exact_rate(fps), ramp=ramp, source_index=opts.source_index,
                      render=render_options(opts.replace(no_audio=True), overwrite), eyelids=opts.eyelids)


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


def plan_attributes(job: ReenactJob | AnimateJob, resolution: int,
                    progress: Callable[[str, int, int], None] | None = None,
                    cache: AnalysisCache | None = None) -> Plan:
    """The one planner: analyse the source (and drivers) and compute every output frame's attributes.

    A :class:`ReenactJob` follows its drivers (or a source clip's own attributes), then
    presets and ``--set``; an :class:`AnimateJob` its keyframes and presets over time.
    ``resolution``: the model's crop size (R px).

    Raises:
        UsageError: a photo source with no driver.
        InputError: unreadable inputs, no face in the source, a driver with no face.
    """
    if isinstance(job, AnimateJob):
        return _plan_animation(job, resolution, cache)

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
            return _still_of(memo, job.source, resolution, job.source_index)
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
    if isinstance(source, SourceFrame):  # a still (info.is_still)
        base = source.attrs
    if primary is not None:
        times, fps = primary.times, primary.fps
    else:  # a source clip on its own: a photo without a driver is refused at the top
        assert isinstance(source, SourceClip)
        times, fps = source.times, source.track.rate
    if is_variable_rate(times, fps):
        times = uniform_times(times, fps)  # frame k shown at k / fps: picture and audio in step
    times = cut_timeline(times, job.start, job.duration, primary.path if primary is not None else job.source)
    if isinstance(source, SourceClip):
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


def _still_of(memo: AnalysisCache, path: str, resolution: int, index: int) -> SourceFrame:
    """A photo analysed once per memo (face ``index``, crops at ``resolution``)."""
    return memo.get("still", path, lambda: analyze_still(path, resolution, index), resolution, index)


def _plan_animation(job: AnimateJob, resolution: int, cache: AnalysisCache | None) -> Plan:
    still = _still_of(cache or AnalysisCache(), job.source, resolution, job.source_index)
    fps, keys, duration = exact_rate(job.fps), job.keyframes, job.duration
    if duration is None:
        lengths = [keys.duration if keys else 0.0] + [p.duration for p in job.presets]
        duration = max(lengths) if max(lengths) > 0 else 3.0
    n = max(1, int(round(duration * fps)))
    times = np.arange(n, dtype=np.float64) / float(fps)
    attrs = keys.evaluate(still.attrs, times) if keys else np.tile(still.attrs, (n, 1))
    ramp = job.ramp
    envelope = smooth_interp(times, [0.0, ramp * duration, (1 - ramp) * duration, duration], [0.0, 1.0, 1.0, 0.0]) \
        if ramp > 0 else 1.0
    timed = [p for p in job.presets if p.timeline is not None]
    steady = [p for p in job.presets if p.timeline is None]
    attrs = apply_overrides(attrs, times, steady, [], envelope)
    attrs = apply_overrides(attrs, times, timed, job.sets)
    return Plan(still, attrs, times, fps, None, None, 0)


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


def run_reenact(job: ReenactJob | AnimateJob, model: ReenactmentModel, progress: Callable[[str, int, int], None] | None = None,
                cache: AnalysisCache | None = None) -> dict:
    """Plan and render one job (a reenactment or an animation); returns the JSON summary.

    ``cache`` (optional) keeps analysed sources/drivers and the network's encoding of
    still sources between jobs (``batch``). ``job.eyelids`` False renders without the
    model's eyelid geometry (the shared model is not changed).
    """
    import time

    if not job.eyelids and getattr(model, "eyelids", None) is not None:
        model = copy.copy(model)  # shares the weights; only this job renders without the lids
        model.eyelids = None
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
    summary.update(source=job.source, driving=job.driving if isinstance(job, ReenactJob) else None,
                   lost_driver_frames=plan.lost_frames,
                   **rate_json(plan.fps), render_fps=round(result.frames / max(result.seconds, 1e-9), 2))
    return summary
