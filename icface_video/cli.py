"""The ``icface-video`` command line (Click).

Every command reports failures as one line on stderr, ``icface-video: error: ...``, and
exits with the codes in :mod:`icface_video.errors` (1 failure, 2 usage, 3 input).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Iterator

import click

from . import __version__
from .controls import MAX_SECONDS
from .errors import EXIT_FAILURE, EXIT_USAGE, IcfaceError, UsageError
from .options import FIELD_NAMES, FiniteFloatRange, click_options
from .runtime import on_sigterm, reset_termination, termination_requested
from .smoothing import SmoothConfig

if TYPE_CHECKING:
    from rich.progress import TaskID

# -- shared options ---------------------------------------------------------------


device_option = click_options("device")  # ``--device``, shared by every command that loads the model
model_option = click_options("model")    # ``--model DIR`` (parameter ``model_path``)
smoothing_options = click_options("smooth", "smooth_strength")  # every command that reads attributes


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
        self._tasks: dict[str, tuple[TaskID, float]] = {}
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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.__exit__(exc_type, exc, tb)


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
            smooth, smooth_strength, overwrite, quiet, as_json) -> None:
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
    smoothing = SmoothConfig(smooth, smooth_strength)
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
    from .tensors import pick_device

    return ReenactmentModel.load(model_path, device=pick_device(device), eyelids=eyelids)


#: the options ``animate`` shares with ``reenact``, besides source, output, presets and sets.
RENDER_OPTIONS = ("model", "device", "batch_size", "renderer", "detail", "eyelids", "crop_only", "color_match", "crf",
                  "x264_preset", "no_audio", "codec", "alpha", "preview", "face_index", "source_face")
#: the options of ``edit`` and ``neutralize``.
STILL_OPTIONS = ("source", "output", "model", "device", "renderer", "detail", "eyelids", "crop_only", "face_index",
                 "source_face")
#: help texts of the commands that write from one photo, where they differ from ``reenact``'s.
PHOTO_HELP = {"source": "Source photo.", "preset": "Preset name or TOML file (repeatable).",
              "face_index": "Which face when several are visible (0 = largest, 1 = next, ...): the source's."}
IMAGE_HELP = dict(PHOTO_HELP, output="Image to write (.png, .jpg).")


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
@click_options(*FIELD_NAMES, gather="opts")
@output_options
def reenact(opts, overwrite, quiet, as_json) -> None:
    """Make the SOURCE face perform a driving video's (or CSV's) pose and expression.

    Output: the source's size (rounded down to even), the driver's frame rate and frame
    count, the driver's audio. A source clip is reenacted frame by frame (its last frame
    is held if the driver is longer).
    """
    from .encode import output_format
    from .memo import AnalysisCache, driver_list, prefetch_tracks
    from .outputs import check_output

    output_format(opts.output, opts.codec, opts.alpha)
    check_output(opts.output, overwrite, [opts.source, opts.driving, *opts.parts.values()])
    from .jobs import reenact_job, run_reenact

    job = reenact_job(opts, overwrite)
    with stage_progress(not quiet and not as_json) as update:
        # The drivers are analysed in a second thread while torch and the model load.
        cache = AnalysisCache()
        prefetch_tracks(cache, driver_list(job.driving, job.parts), job.smoothing, job.driver_index, update)
        model = _load_model(opts.model, opts.device, opts.eyelids)
        summary = run_reenact(job, model, update, cache)
    _report(summary, quiet, as_json)


@cli.command()
@click_options("source", "output", "preset", "set", *RENDER_OPTIONS, gather="opts",
               help=dict(PHOTO_HELP, set="Constant overrides, e.g. AU12=3 or yaw=10deg."))
@click.option("--keyframes", type=click.Path(path_type=str), help="Keyframe file (TOML or CSV): times and values.")
@click.option("--duration", type=FiniteFloatRange(min=0.04, max=MAX_SECONDS), default=None,
              help="Seconds (default: the keyframes' or presets' length, else 3).")
@click.option("--fps", type=FiniteFloatRange(min=1, max=120), default=25.0, show_default=True)
@click.option("--ramp", type=FiniteFloatRange(0, 0.5), default=0.25, show_default=True,
              help="Presets without a timeline ramp in and out over this fraction of the duration.")
@output_options
def animate(opts, keyframes, duration, fps, ramp, overwrite, quiet, as_json) -> None:
    """Animate a photo with no driving video: keyframes and/or presets over time."""
    from .encode import output_format
    from .jobs import animate_job, run_reenact
    from .keyframes import load_keyframes
    from .outputs import check_output

    output_format(opts.output, opts.codec, opts.alpha)
    check_output(opts.output, overwrite, [opts.source, keyframes])
    job = animate_job(opts, load_keyframes(keyframes) if keyframes else None, duration, fps, ramp, overwrite)
    model = _load_model(opts.model, opts.device, opts.eyelids)
    with stage_progress(not quiet and not as_json) as update:
        summary = run_reenact(job, model, update)
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
@click_options("source", "output", "preset", "set", *STILL_OPTIONS[2:], gather="opts",
               help=dict(IMAGE_HELP, set="AU12=3.5, yaw=10deg, AU04+=1 ... (repeatable).",
                         crop_only="Write the aligned crop, not pasted back."))
@output_options
def edit(opts, overwrite, quiet, as_json) -> None:
    """Change a photo's expression or pose with presets and --set values; write an image."""
    import numpy as np
    import torch

    from .jobs import apply_overrides, load_overrides
    from .outputs import check_output
    from .reenact import render_still
    from .source import analyze_still

    output, source = opts.output, opts.source
    _check_image_output(output)
    check_output(output, overwrite, [source])
    if not opts.preset and not opts.set:
        raise UsageError("edit needs --preset or --set")
    presets, sets = load_overrides(opts.preset, opts.set)
    model = _load_model(opts.model, opts.device, opts.eyelids)
    still = analyze_still(source, model.resolution, opts.source_index)
    attrs = apply_overrides(still.attrs[None], np.zeros(1), presets, sets)
    image = render_still(model, still, torch.from_numpy(attrs).to(model.device), opts.detail, opts.crop_only,
                         opts.renderer)
    _write_image(output, image, overwrite)
    from .attributes import ATTR_NAMES

    summary = {"output": output, "source": source, "width": int(image.shape[1]), "height": int(image.shape[0]),
               "attributes": {n: round(float(v), 3) for n, v in zip(ATTR_NAMES, attrs[0])}}
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"wrote {output}", err=True)


@cli.command()
@click_options(*STILL_OPTIONS, gather="opts",
               help=dict(IMAGE_HELP, crop_only="Write the aligned neutral crop, not pasted back."))
@output_options
def neutralize(opts, overwrite, quiet, as_json) -> None:
    """Write the source's neutral face (G_N: pose straightened, expression relaxed)."""
    from .outputs import check_output
    from .reenact import render_still
    from .source import analyze_still

    output, source = opts.output, opts.source
    _check_image_output(output)
    check_output(output, overwrite, [source])
    model = _load_model(opts.model, opts.device, opts.eyelids)
    still = analyze_still(source, model.resolution, opts.source_index)
    _write_image(output, render_still(model, still, None, opts.detail, opts.crop_only, opts.renderer), overwrite)
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
@model_option
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
    from .tensors import pick_device

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


# -- studio ----------------------------------------------------------------------------------


@cli.command()
@click.argument("source", required=False, type=click.Path(path_type=str))
@click.option("--driving", "-d", type=click.Path(path_type=str), default=None, help="Driving clip to load.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True, help="Port (0: a free one).")
@click.option("--no-browser", is_flag=True, help="Do not open the page in a browser.")
@click.option("--out", "outdir", type=click.Path(file_okay=False, path_type=str), default="studio-out", show_default=True,
              help="Folder for exported presets, keyframes, videos and uploads.")
@click.option("--preset", "preset_files", multiple=True, type=click.Path(path_type=str),
              help="A preset TOML file to add to the presets menu (repeatable).")
@click.option("--max-upload-mb", type=FiniteFloatRange(min=0.001), default=200.0, show_default=True,
              help="Largest upload accepted.")
@device_option
def studio(source, driving, host, port, no_browser, outdir, preset_files, max_upload_mb, device) -> None:
    """A local page with the AU and head-pose sliders, a live preview, a driving clip's
    timeline and exports (preset, keyframes, video, command line). Ctrl-C stops it."""
    from pathlib import Path

    from .studio import require_extra

    require_extra()
    from .studio.server import bind, serve
    from .studio.session import Studio

    bind(host, port).close()  # a taken port is one line before the model loads
    session = Studio(outdir, device)
    if source:
        session.load_source(source)
    if driving:
        session.load_clip(driving)
    for f in preset_files:
        session.add_user_preset(Path(f))
    serve(session, host, port, open_browser=not no_browser, max_upload_mb=max_upload_mb,
          announce=lambda line: click.echo(line, err=True))


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
