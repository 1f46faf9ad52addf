"""The ``icface-video`` command line (Click).

Every command reports failures as one line on stderr, ``icface-video: error: ...``, and
exits with the codes in :mod:`icface_video.errors` (1 failure, 2 usage, 3 input).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import click

from . import __version__
from .controls import MAX_SECONDS
from .errors import EXIT_FAILURE, EXIT_USAGE, IcfaceError, UsageError
from .runtime import on_sigterm, reset_termination, termination_requested
from .smoothing import SMOOTH_METHODS, SmoothConfig

# -- shared options ---------------------------------------------------------------


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinity (usage error, exit 2).

    NaN slips through a plain range check (every comparison with it is false).
    """

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


class DeviceChoice(click.Choice):
    """``--device``: one of :data:`DEVICE_NAMES`, or ``cuda:N`` for the N-th GPU."""

    def __init__(self) -> None:
        super().__init__(DEVICE_NAMES)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and re.fullmatch(r"cuda:\d{1,3}", value.strip()):
            return value.strip()
        if value not in DEVICE_NAMES:
            self.fail(f"{value!r} is not one of {', '.join(DEVICE_NAMES)}, cuda:N.", param, ctx)
        return value

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "[auto|cpu|cuda|cuda:N|mps]"


def device_option(func):
    """``--device``, shared by every command that loads the model."""
    return click.option("--device", type=DeviceChoice(), default="auto", show_default=True,
                        help="Compute device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")(func)


def smoothing_options(func):
    """``--smooth`` and ``--smooth-strength``, shared by every command that reads attributes."""
    func = click.option(
        "--smooth-strength", type=FiniteFloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
        help="Smoothing strength: 1 = about one frame at 25 fps (gaussian) / 1.5 Hz cut-off (oneeuro); 2 = twice as smooth.",
    )(func)
    func = click.option(
        "--smooth", "smooth_method", type=click.Choice(SMOOTH_METHODS), default="gaussian", show_default=True,
        help="Temporal smoothing of AUs and angles: zero-lag gaussian, causal One Euro, or none.",
    )(func)
    return func


def output_options(func):
    func = click.option("--json", "as_json", is_flag=True, help="Print a one-line JSON summary on stdout.")(func)
    func = click.option("--quiet", "-q", is_flag=True, help="No progress bar or messages.")(func)
    func = click.option("--overwrite", is_flag=True, help="Replace an existing output file.")(func)
    return func


def stage_label(stage: str) -> str:
    """What the progress display calls a pipeline stage: ``analyse driver`` -> ``analysing
    driver``, ``render`` -> ``rendering``; others as given (``encoding``)."""
    if stage.startswith("analyse"):
        return "analysing" + stage[len("analyse"):]
    return {"render": "rendering", "extract": "analysing"}.get(stage, stage)


class StageProgress:
    """Progress rows on a rich console, one per pipeline stage, each with frames done of
    the total, frames/s, elapsed time and its own ETA (from that stage's own speed).

    ``update(stage, done, total)`` (total 0 when unknown: no ETA) may come from several
    threads. When ``rendering`` reaches its total, an ``encoding`` row shows while ffmpeg
    finishes the file (flush, audio, index). ``get_time`` (seconds) is for tests.
    """

    def __init__(self, console=None, get_time: Callable[[], float] | None = None) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[fps]:>5.0f} frames/s"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn())
        self.progress = Progress(*columns, console=console or Console(stderr=True), transient=True,
                                 get_time=get_time)
        self._tasks: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def update(self, stage: str, done: int, total: int) -> None:
        label = stage_label(stage)
        with self._lock:
            now = self.progress.get_time()
            if label not in self._tasks:
                self._tasks[label] = (self.progress.add_task(label, total=total or None, fps=0.0), now)
            task, t0 = self._tasks[label]
            elapsed = now - t0
            self.progress.update(task, completed=done, total=total or None,
                                 fps=done / elapsed if elapsed > 0.5 else 0.0)  # no figure from one frame
            if label == "rendering" and total and done >= total and "encoding" not in self._tasks:
                self._tasks["encoding"] = (self.progress.add_task("encoding", total=None, fps=0.0), now)

    def __enter__(self) -> "StageProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)


@contextmanager
def progress_bar(description: str, enabled: bool) -> Iterator:
    """A one-stage progress display on stderr when it is a terminal; yields ``update(done, total)``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    with StageProgress() as bar:
        yield lambda done, total: bar.update(description, done, total)


# -- commands ---------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="icface-video")
def cli() -> None:
    """Reenact faces in video with interpretable controls (17 Action Units + head pose).

    Exit codes: 0 success, 1 failure, 2 usage error, 3 input problem (missing, corrupt or
    faceless input).
    """


@cli.command()
def info() -> None:
    """Print versions, the compute device and the face model files in use."""
    import platform

    import av
    import cv2
    import kornia
    import mediapipe
    import numpy
    import torch

    from .face import detector_model_path, landmarker_model_path, sha256_of

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    model = landmarker_model_path()
    detector = detector_model_path()
    rows = [
        ("icface-video", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("mediapipe", mediapipe.__version__),
        ("av (PyAV)", av.__version__),
        ("kornia", kornia.__version__),
        ("opencv", cv2.__version__),
        ("numpy", numpy.__version__),
        ("device", device),
        ("face model", str(model)),
        ("face model sha256", sha256_of(model)),
        ("fallback detector", str(detector)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


@cli.command()
@click.argument("source", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="CSV file to write.")
@click.option("--face-index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which face when several are visible: 0 = largest, 1 = next largest, ... (then followed).")
@click.option("--landmarks", is_flag=True, help="Also write the 478 landmarks (x_*, y_*, z_* in pixels).")
@click.option("--blendshapes", is_flag=True, help="Also write the 52 raw blendshapes (bs_*).")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after this many frames.")
@click.option("--no-fallback", is_flag=True, help="Do not use the full-range detector for small faces.")
@smoothing_options
@output_options
def extract(source, output, face_index, landmarks, blendshapes, max_frames, no_fallback,
            smooth_method, smooth_strength, overwrite, quiet, as_json) -> None:
    """Write per-frame face attributes of a video or image to an OpenFace-style CSV.

    One row per decoded frame: frame (1-based), timestamp (s), confidence, success,
    pose_Rx/Ry/Rz (radians), AU01_r ... AU45_r (0-5).
    """
    from .csvio import write_attributes_csv
    from .outputs import atomic_output, check_output
    from .track import analyze_media

    if not output.lower().endswith(".csv"):
        raise UsageError(f"{output}: extract writes CSV; the output must end in .csv")
    check_output(output, overwrite, [source])
    smoothing = SmoothConfig(smooth_method, smooth_strength)
    start = time.perf_counter()
    with progress_bar("extract", not quiet and not as_json) as update:
        track = analyze_media(source, face_index=face_index, keep_landmarks=landmarks,
                              keep_blendshapes=blendshapes, max_frames=max_frames,
                              progress=update, fallback=not no_fallback)
    attrs = track.attributes(smoothing)
    with atomic_output(output, overwrite) as tmp:
        write_attributes_csv(tmp, track.times, attrs, track.success, track.confidence,
                             blendshapes=track.blendshapes, landmarks=track.landmarks)
    seconds = time.perf_counter() - start
    summary = {
        "input": source, "output": output, "frames": track.num_frames, "faces_found": track.faces_found,
        "fallback_frames": track.fallback_frames, "video_fps": round(track.info.fps, 3),
        "video_rate": f"{track.info.rate.numerator}/{track.info.rate.denominator}" if track.info.rate else None,
        "seconds": round(seconds, 3), "fps": round(track.num_frames / max(seconds, 1e-9), 1),
    }
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"wrote {output}: {summary['frames']} frames, {summary['faces_found']} with a face "
                   f"({summary['fps']} frames/s)", err=True)


# -- reenactment ---------------------------------------------------------------------


def _load_model(model_path: str | None, device: str, eyelids: bool = True):
    from .model import ReenactmentModel
    from .reenact import pick_device

    return ReenactmentModel.load(model_path, device=pick_device(device), eyelids=eyelids)


def _presets(names: tuple[str, ...]):
    from . import presets

    return [presets.load(n) for n in names]


def _sets(exprs: tuple[str, ...]):
    from .controls import parse_set

    return [parse_set(e) for e in exprs]


DETAIL_OPTION = click.option(
    "--detail/--no-detail", default=True, show_default=True,
    help="Paste back at the frame's resolution: the network's warp fetches from the source frame itself, "
         "only what it draws (mouth interior, lids) comes from its 128 px crop. --no-detail pastes the crop.")


EYELIDS_OPTION = click.option(
    "--eyelids/--no-eyelids", default=True, show_default=True,
    help="Close and open the source's eyes to the driving AU45 with the model's eyelid warp "
         "(its eyelids.json); --no-eyelids leaves the lids to the generator alone.")


from .geo_render import RENDERERS  # noqa: E402

RENDERER_OPTION = click.option(
    "--renderer", type=click.Choice(RENDERERS), default="geometry", show_default=True,
    help="geometry: the motion model moves the source's 3D landmarks and the frame is warped onto them "
         "at its own resolution (mouth interior drawn); network: the ICface generator's 128 px render, "
         "pasted back (--detail and --eyelids apply to it).")


def render_options(func):
    """Options shared by the commands that write a video."""
    opts = [
        click.option("--model", "model_path", type=click.Path(path_type=str), default=None,
                     help="Model folder (default: the shipped model)."),
        device_option,
        click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True),
        RENDERER_OPTION,
        DETAIL_OPTION,
        EYELIDS_OPTION,
        click.option("--crop-only", is_flag=True, help="Write the aligned generated crops, not pasted back."),
        click.option("--color-match", is_flag=True, help="Match the generated face's colours to the source."),
        click.option("--crf", type=click.IntRange(0, 51), default=18, show_default=True, help="x264 quality (lower = better)."),
        click.option("--x264-preset", default="medium", show_default=True,
                     type=click.Choice(["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]),
                     help="x264 speed preset."),
        click.option("--no-audio", is_flag=True, help="Do not copy the driver's audio."),
        click.option("--codec", type=click.Choice(["h264", "prores"]), default="h264", show_default=True,
                     help="Video codec: H.264 (.mp4 .mov .mkv) or ProRes 422 HQ (.mov .mkv). The output's "
                          "extension decides the container; frames/%05d.png writes a PNG sequence."),
        click.option("--alpha", is_flag=True,
                     help="Write the face mask as an alpha channel: ProRes 4444 (with --codec prores) or RGBA PNGs."),
        click.option("--preview", is_flag=True, help="Also write OUT.preview.mp4 (source | driver | result) and OUT.contact.png."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def face_options(drivers: bool):
    """``--face-index`` and ``--source-face`` (and ``--driver-face`` when the command has drivers)."""
    def decorate(func):
        if drivers:
            func = click.option("--driver-face", type=click.IntRange(min=0), default=None,
                                help="Which face in the drivers (default: --face-index).")(func)
        func = click.option("--source-face", type=click.IntRange(min=0), default=None,
                            help="Which face in the source (default: --face-index).")(func)
        return click.option("--face-index", type=click.IntRange(min=0), default=0, show_default=True,
                            help="Which face when several are visible (0 = largest, 1 = next, ...): "
                                 + ("the source's and the drivers'." if drivers else "the source's."))(func)
    return decorate


def _pick_face(face_index: int, specific: int | None) -> int:
    return face_index if specific is None else specific


def _render_options(batch_size, detail, crop_only, color_match, crf, x264_preset, no_audio, preview, overwrite,
                    renderer="geometry", codec="h264", alpha=False):
    from .encode import EncodeConfig
    from .paste import PasteConfig
    from .reenact import RenderOptions

    return RenderOptions(batch_size=batch_size, detail=detail, crop_only=crop_only,
                         paste=PasteConfig(color_match=color_match),
                         encode=EncodeConfig(crf=crf, preset=x264_preset, audio=not no_audio, codec=codec, alpha=alpha),
                         preview=preview, overwrite=overwrite, renderer=renderer)


def _report(summary: dict, quiet: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        extra = f", preview {summary['preview']}" if summary.get("preview") else ""
        click.echo(f"wrote {summary['output']}: {summary['frames']} frames {summary['width']}x{summary['height']} "
                   f"at {summary['fps_float']:g} fps ({summary['fps']}), audio {'yes' if summary['audio'] else 'no'}{extra}", err=True)


@contextmanager
def stage_progress(enabled: bool) -> Iterator:
    """:class:`StageProgress` on stderr when it is a terminal: yields ``update(stage, done, total)``, else None."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with StageProgress() as bar:
        yield bar.update


@cli.command()
@click.option("--source", "-s", required=True, type=click.Path(path_type=str), help="Source photo or clip.")
@click.option("--driving", "-d", type=click.Path(path_type=str), default=None, help="Driving video or attribute CSV.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Video to write (.mp4).")
@click.option("--mode", type=click.Choice(["full", "pose", "expression"]), default="full", show_default=True,
              help="What --driving drives.")
@click.option("--pose-from", type=click.Path(path_type=str), help="Head pose from this video/CSV.")
@click.option("--expression-from", type=click.Path(path_type=str), help="All AUs from this video/CSV.")
@click.option("--eyes-from", type=click.Path(path_type=str), help="AU05 06 07 45 from this video/CSV.")
@click.option("--mouth-from", type=click.Path(path_type=str), help="AU09 10 12 14 15 17 20 23 25 26 from this video/CSV.")
@click.option("--brows-from", type=click.Path(path_type=str), help="AU01 02 04 from this video/CSV.")
@click.option("--relative/--absolute", default=None,
              help="Apply driver changes to the source's own values (default for photos) or copy them (default for clips).")
@click.option("--preset", "preset_names", multiple=True, help="Preset name or TOML file (repeatable, in order).")
@click.option("--set", "set_exprs", multiple=True, help="AU12=3.5, yaw=10deg, AU04+=1, AU12*=1.5 (repeatable).")
@click.option("--start", type=FiniteFloatRange(min=0), default=0.0,
              help="Reenact from this time (s) of the driver (every driver, a source clip and the audio alike).")
@click.option("--duration", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Reenact this many seconds (default: to the driver's end).")
@smoothing_options
@render_options
@face_options(drivers=True)
@output_options
def reenact(source, driving, output, mode, pose_from, expression_from, eyes_from, mouth_from, brows_from,
            relative, preset_names, set_exprs, start, duration, smooth_method, smooth_strength, model_path, device,
            batch_size, renderer, detail, eyelids, crop_only, color_match, crf, x264_preset, no_audio, codec, alpha, preview,
            face_index, source_face, driver_face, overwrite, quiet, as_json) -> None:
    """Make the SOURCE face perform a driving video's (or CSV's) pose and expression.

    Output: the source's size (rounded down to even), the driver's frame rate and frame
    count, the driver's audio. A source clip is reenacted frame by frame (its last frame
    is held if the driver is longer).
    """
    from .encode import output_format
    from .memo import AnalysisCache, driver_list, prefetch_tracks
    from .outputs import check_output

    output_format(output, codec, alpha)
    parts = {k: v for k, v in (("pose", pose_from), ("expression", expression_from), ("eyes", eyes_from),
                               ("mouth", mouth_from), ("brows", brows_from)) if v}
    check_output(output, overwrite, [source, driving, *parts.values()])
    presets, sets, smoothing = _presets(preset_names), _sets(set_exprs), SmoothConfig(smooth_method, smooth_strength)
    with stage_progress(not quiet and not as_json) as update:
        # The drivers are analysed in a second thread while torch and the model load.
        cache = AnalysisCache()
        prefetch_tracks(cache, driver_list(driving, parts), smoothing, _pick_face(face_index, driver_face), update)
        from .jobs import ReenactJob, run_reenact

        job = ReenactJob(source=source, output=output, driving=driving, parts=parts, mode=mode, relative=relative,
                         presets=presets, sets=sets, smoothing=smoothing, face_index=face_index,
                         source_face=source_face, driver_face=driver_face,
                         render=_render_options(batch_size, detail, crop_only, color_match, crf, x264_preset,
                                                no_audio, preview, overwrite, renderer, codec, alpha),
                         start=start, duration=duration)
        model = _load_model(model_path, device, eyelids)
        summary = run_reenact(job, model, update, cache)
    _report(summary, quiet, as_json)


@cli.command()
@click.option("--source", "-s", required=True, type=click.Path(path_type=str), help="Source photo.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Video to write (.mp4).")
@click.option("--keyframes", type=click.Path(path_type=str), help="Keyframe file (TOML or CSV): times and values.")
@click.option("--preset", "preset_names", multiple=True, help="Preset name or TOML file (repeatable).")
@click.option("--set", "set_exprs", multiple=True, help="Constant overrides, e.g. AU12=3 or yaw=10deg.")
@click.option("--duration", type=FiniteFloatRange(min=0.04, max=MAX_SECONDS), default=None,
              help="Seconds (default: the keyframes' or presets' length, else 3).")
@click.option("--fps", type=FiniteFloatRange(min=1, max=120), default=25.0, show_default=True)
@click.option("--ramp", type=FiniteFloatRange(0, 0.5), default=0.25, show_default=True,
              help="Presets without a timeline ramp in and out over this fraction of the duration.")
@render_options
@face_options(drivers=False)
@output_options
def animate(source, output, keyframes, preset_names, set_exprs, duration, fps, ramp, model_path, device, batch_size,
            renderer, detail, eyelids, crop_only, color_match, crf, x264_preset, no_audio, codec, alpha, preview, face_index,
            source_face,
            overwrite, quiet, as_json) -> None:
    """Animate a photo with no driving video: keyframes and/or presets over time."""
    import numpy as np

    from .encode import output_format
    from .jobs import apply_overrides
    from .keyframes import load_keyframes
    from .media import exact_rate, rate_json
    from .outputs import check_output
    from .presets import smooth_interp
    from .reenact import analyze_still, render_video

    output_format(output, codec, alpha)
    check_output(output, overwrite, [source, keyframes])
    fps = exact_rate(fps)  # 29.97 -> 30000/1001
    if not keyframes and not preset_names and not set_exprs:
        raise UsageError("animate needs --keyframes, --preset or --set")
    keys = load_keyframes(keyframes) if keyframes else None
    presets, sets = _presets(preset_names), _sets(set_exprs)
    if duration is None:
        lengths = [keys.duration if keys else 0.0] + [p.duration for p in presets]
        duration = max(lengths) if max(lengths) > 0 else 3.0
    model = _load_model(model_path, device, eyelids)
    still = analyze_still(source, model.resolution, _pick_face(face_index, source_face))
    n = max(1, int(round(duration * fps)))
    times = np.arange(n, dtype=np.float64) / float(fps)
    attrs = keys.evaluate(still.attrs, times) if keys else np.tile(still.attrs, (n, 1))
    envelope = smooth_interp(times, [0.0, ramp * duration, (1 - ramp) * duration, duration], [0.0, 1.0, 1.0, 0.0]) \
        if ramp > 0 else 1.0
    timed = [p for p in presets if p.timeline is not None]
    steady = [p for p in presets if p.timeline is None]
    attrs = apply_overrides(attrs, times, steady, [], envelope)
    attrs = apply_overrides(attrs, times, timed, sets)
    options = _render_options(batch_size, detail, crop_only, color_match, crf, x264_preset, True, preview, overwrite,
                              renderer, codec, alpha)
    with stage_progress(not quiet and not as_json) as update:
        result = render_video(model, still, attrs, times, fps, output, options,
                              progress=(lambda d, t: update("render", d, t)) if update else None)
    summary = dict(result.__dict__, source=source, **rate_json(result.fps))
    _report(summary, quiet, as_json)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _check_image_output(output: str) -> None:
    """``edit`` and ``neutralize`` write one image: the extension must be an image type."""
    if not output.lower().endswith(IMAGE_SUFFIXES):
        raise UsageError(f"{output}: writes an image; the output must end in {', '.join(IMAGE_SUFFIXES)}")


def _write_image(output: str, rgb, overwrite: bool) -> None:
    import cv2

    from .outputs import atomic_output

    with atomic_output(output, overwrite) as tmp:
        try:
            written = cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        except cv2.error:
            written = False
        if not written:
            raise UsageError(f"{output}: cannot write this image type (use .png or .jpg)")


@cli.command()
@click.option("--source", "-s", required=True, type=click.Path(path_type=str), help="Source photo.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Image to write (.png, .jpg).")
@click.option("--preset", "preset_names", multiple=True, help="Preset name or TOML file (repeatable).")
@click.option("--set", "set_exprs", multiple=True, help="AU12=3.5, yaw=10deg, AU04+=1 ... (repeatable).")
@click.option("--model", "model_path", type=click.Path(path_type=str), default=None)
@device_option
@RENDERER_OPTION
@DETAIL_OPTION
@EYELIDS_OPTION
@click.option("--crop-only", is_flag=True, help="Write the aligned crop, not pasted back.")
@face_options(drivers=False)
@output_options
def edit(source, output, preset_names, set_exprs, model_path, device, renderer, detail, eyelids, crop_only, face_index,
         source_face, overwrite, quiet, as_json) -> None:
    """Change a photo's expression or pose with presets and --set values; write an image."""
    import numpy as np
    import torch

    from .jobs import apply_overrides
    from .outputs import check_output
    from .reenact import analyze_still, render_still

    _check_image_output(output)
    check_output(output, overwrite, [source])
    if not preset_names and not set_exprs:
        raise UsageError("edit needs --preset or --set")
    presets, sets = _presets(preset_names), _sets(set_exprs)
    model = _load_model(model_path, device, eyelids)
    still = analyze_still(source, model.resolution, _pick_face(face_index, source_face))
    attrs = apply_overrides(still.attrs[None], np.zeros(1), presets, sets)
    image = render_still(model, still, torch.from_numpy(attrs).to(model.device), detail, crop_only, renderer)
    _write_image(output, image, overwrite)
    from .attributes import ATTR_NAMES

    summary = {"output": output, "source": source, "width": int(image.shape[1]), "height": int(image.shape[0]),
               "attributes": {n: round(float(v), 3) for n, v in zip(ATTR_NAMES, attrs[0])}}
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"wrote {output}", err=True)


@cli.command()
@click.option("--source", "-s", required=True, type=click.Path(path_type=str), help="Source photo.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Image to write (.png, .jpg).")
@click.option("--model", "model_path", type=click.Path(path_type=str), default=None)
@device_option
@RENDERER_OPTION
@DETAIL_OPTION
@EYELIDS_OPTION
@click.option("--crop-only", is_flag=True, help="Write the aligned neutral crop, not pasted back.")
@face_options(drivers=False)
@output_options
def neutralize(source, output, model_path, device, renderer, detail, eyelids, crop_only, face_index, source_face, overwrite, quiet,
               as_json) -> None:
    """Write the source's neutral face (G_N: pose straightened, expression relaxed)."""
    from .outputs import check_output
    from .reenact import analyze_still, render_still

    _check_image_output(output)
    check_output(output, overwrite, [source])
    model = _load_model(model_path, device, eyelids)
    still = analyze_still(source, model.resolution, _pick_face(face_index, source_face))
    _write_image(output, render_still(model, still, None, detail, crop_only, renderer), overwrite)
    if as_json:
        click.echo(json.dumps({"output": output, "source": source}))
    elif not quiet:
        click.echo(f"wrote {output}", err=True)


# -- presets ---------------------------------------------------------------------------


@cli.group()
def presets() -> None:
    """List, show and validate expression/pose presets."""


@presets.command("list")
def presets_list() -> None:
    """Shipped presets with their descriptions."""
    from . import presets as P

    for name in P.builtin_names():
        p = P.load(name)
        click.echo(f"{name:<12} {p.region or 'any':<10} {p.description}")


@presets.command("show")
@click.argument("name")
def presets_show(name) -> None:
    """Print a preset's file (NAME or path)."""
    from . import presets as P

    path = P.resolve(name)
    P.parse(path)
    click.echo(f"# {path}")
    click.echo(path.read_text(encoding="utf-8").rstrip())


@presets.command("validate")
@click.argument("files", nargs=-1, required=True)
def presets_validate(files) -> None:
    """Check preset files; prints `ok` per good file, and every problem of a bad one as file:line: key: reason."""
    from . import presets as P
    from .errors import InputError

    bad = 0
    for f in files:
        try:
            problems = P.problems(P.resolve(f))
        except P.PresetError as exc:
            problems = [exc]
        for problem in problems:
            click.echo(f"icface-video: error: {problem}", err=True)
        if problems:
            bad += 1
        else:
            click.echo(f"{f}: ok")
    if bad:
        raise InputError(files[0] if bad == len(files) == 1 else "presets", f"{bad} of {len(files)} preset file(s) invalid")


# -- batch -------------------------------------------------------------------------------


@cli.command()
@click.argument("jobs_file", required=False, type=click.Path(path_type=str))
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False, path_type=str), help="Output folder.")
@click.option("--source", "source_glob", help="Shorthand: source files glob (quote it), with --driving.")
@click.option("--driving", "driving_glob", help="Shorthand: driving files glob; every source x driver pair.")
@click.option("--zip", "zip_pairs", is_flag=True, help="Shorthand: pair sources and drivers in sorted order.")
@click.option("--jobs", "workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes.")
@click.option("--resume", is_flag=True, help="Skip jobs whose output is complete and whose inputs/options are unchanged.")
@click.option("--shard", help="K/N: run only this deterministic share of the jobs (1-based).")
@click.option("--skip-invalid", is_flag=True, help="Run the valid jobs even when some rows are invalid.")
@click.option("--dry-run", is_flag=True, help="Print the resolved jobs (one JSON line each) and exit.")
@click.option("--allow-outside", is_flag=True,
              help="Let jobs write outputs outside OUTDIR (absolute paths, ..); refused otherwise.")
@click.option("--model", "model_path", type=click.Path(path_type=str), default=None)
@device_option
@click.option("--quiet", "-q", is_flag=True)
@click.option("--json", "as_json", is_flag=True,
              help="One JSON line per job on stdout as it ends (and per job --resume skips).")
def batch(jobs_file, outdir, source_glob, driving_glob, zip_pairs, workers, resume, shard, skip_invalid, dry_run,
          allow_outside, model_path, device, quiet, as_json) -> None:
    """Run many reenactment jobs from JOBS_FILE (CSV, JSONL or TOML), or from globs.

    Exit codes: 0 all jobs done, 4 some jobs failed (see OUTDIR/report.json),
    2 usage error, 3 invalid job file (every bad row is reported; nothing runs).
    """
    from pathlib import Path

    from . import batch as B

    if bool(jobs_file) == bool(source_glob or driving_glob):
        raise UsageError("give either JOBS_FILE or --source GLOB --driving GLOB")
    if (source_glob is None) != (driving_glob is None):
        raise UsageError("--source and --driving go together")
    shard_kn = B.parse_shard(shard)
    from .reenact import pick_device

    pick_device(device)  # an unknown or absent device is a usage error before anything runs
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--outdir {outdir}: not a folder")
    if jobs_file:
        rows = B.read_rows(Path(jobs_file))
        base = Path(jobs_file).resolve().parent
    else:
        rows = B.pairs_from_globs(source_glob, driving_glob, zip_pairs)
        base = Path.cwd()
    specs, problems = B.validate(rows, base, out.resolve(), allow_outside)
    if problems:
        for pr in problems:
            click.echo(f"icface-video: error: {jobs_file or 'jobs'}: {pr}", err=True)
        if not skip_invalid:
            from .errors import InputError

            raise InputError(jobs_file or "jobs", f"{len(problems)} problem(s) in {len({p.row for p in problems})} row(s); nothing was run")
    specs = [s for s in specs if B.in_shard(s, shard_kn)]
    if dry_run:
        for line in B.iter_dry_run(specs):
            click.echo(line)
        return
    todo = [s for s in specs if not (resume and B.is_complete(out, s))]
    if todo:
        # A missing or corrupt model is one error (exit 3) before any work, not a
        # failure in every worker.
        _load_model(model_path, "cpu")
    out.mkdir(parents=True, exist_ok=True)
    skipped = len(specs) - len(todo)
    show = not quiet and not as_json and sys.stderr.isatty()
    done_count = [0, 0]

    def emit(entry: dict) -> None:
        click.echo(json.dumps(entry))
        sys.stdout.flush()  # one line per job as it ends, also into a pipe or a file

    if as_json:
        todo_keys = {s.key for s in todo}
        for s in specs:
            if s.key not in todo_keys:
                emit({"row": s.row, "output": s.output, "source": s.fields["source"],
                      "driving": s.fields.get("driving"), "status": "skipped", "error": None})

    def on_done(entry: dict) -> None:
        done_count[0 if entry["status"] == "done" else 1] += 1
        if as_json:
            emit(entry)
        elif show:
            click.echo(f"[{sum(done_count)}/{len(todo)}] {entry['status']}: {entry['output']}"
                       + (f" ({entry['error']})" if entry.get("error") else ""), err=True)

    result = B.run_batch(todo, out, workers, model_path, device, on_done) if todo else None
    report = B.write_report(out) if result is None else result.report
    failed = result.failed if result else 0
    if not quiet and not as_json:
        click.echo(f"batch: {result.done if result else 0} done, {failed} failed, {skipped} already complete; "
                   f"report {report}", err=True)
    if failed:
        raise click.exceptions.Exit(B.EXIT_SOME_FAILED)


# -- entry point --------------------------------------------------------------------


EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process ended by SIGTERM


def ensure_std_streams() -> None:
    """Give closed standard streams (``2>&-``, ``>&-``, ``<&-``) a ``/dev/null`` to use.

    A closed stream must not stop the work: without this, Python's ``sys.stderr`` is None
    (every message fails), and the next file opened takes the free descriptor, so native
    libraries logging to fd 2 would write into it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI, turning every failure into one line on stderr and an exit code.

    SIGTERM ends a run like Ctrl-C (nothing left under a final name, workers and encoders
    stopped) with exit code 143.
    """
    ensure_std_streams()
    previous = None
    if threading.current_thread() is threading.main_thread():
        reset_termination()
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    prog = "icface-video"
    from .runtime import tune_allocator

    tune_allocator()  # before torch allocates: freed frame-sized blocks are reused
    try:
        # In non-standalone mode Click returns the code of a ``click.exceptions.Exit``.
        code = cli.main(args=argv, prog_name=prog, standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        if termination_requested():
            click.echo(f"{prog}: error: terminated (SIGTERM)", err=True)
            return EXIT_TERMINATED
        click.echo(f"{prog}: error: interrupted", err=True)
        return 130
    except click.exceptions.ClickException as exc:
        # Usage errors (unknown option, bad value, missing argument).
        click.echo(f"{prog}: error: {exc.format_message()}", err=True)
        return exc.exit_code if exc.exit_code != 1 else EXIT_USAGE
    except IcfaceError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        if termination_requested():
            click.echo(f"{prog}: error: terminated (SIGTERM)", err=True)
            return EXIT_TERMINATED
        click.echo(f"{prog}: error: interrupted", err=True)
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        click.echo(f"{prog}: error: {where}{exc.strerror or exc}", err=True)
        return EXIT_FAILURE
    except Exception as exc:  # last resort: one line, no traceback (ICFACE_DEBUG=1 shows it)
        if os.environ.get("ICFACE_DEBUG"):
            raise
        click.echo(f"{prog}: error: internal error: {type(exc).__name__}: {exc}", err=True)
        return EXIT_FAILURE


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
