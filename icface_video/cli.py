"""The ``icface-video`` command line (Click).

Every command reports failures as one line on stderr, ``icface-video: error: ...``, and
exits with the codes in :mod:`icface_video.errors` (1 failure, 2 usage, 3 input).
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import click

from . import __version__
from .errors import EXIT_FAILURE, EXIT_USAGE, IcfaceError
from .smoothing import SMOOTH_METHODS, SmoothConfig

# -- shared options ---------------------------------------------------------------


def smoothing_options(func):
    """``--smooth`` and ``--smooth-strength``, shared by every command that reads attributes."""
    func = click.option(
        "--smooth-strength", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
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


@contextmanager
def progress_bar(description: str, enabled: bool) -> Iterator:
    """A rich progress bar on stderr when it is a terminal; yields ``update(done, total)``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[fps]:.0f} fps"), TimeRemainingColumn())
    start = time.perf_counter()
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None, fps=0.0)

        def update(done: int, total: int) -> None:
            fps = done / max(time.perf_counter() - start, 1e-6)
            bar.update(task, completed=done, total=total or None, fps=fps)

        yield update


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

    check_output(output, overwrite)
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
        "seconds": round(seconds, 3), "fps": round(track.num_frames / max(seconds, 1e-9), 1),
    }
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"wrote {output}: {summary['frames']} frames, {summary['faces_found']} with a face "
                   f"({summary['fps']} frames/s)", err=True)


# -- entry point --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the CLI, turning every failure into one line on stderr and an exit code."""
    prog = "icface-video"
    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
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
