"""Shared pytest fixtures for icface-video (generic: extraction, training and later stages).

* ``faces_root``: the real face data (``<repo>/../shared/data/faces``, or ``$ICFACE_DATA``).
  When it is missing the test FAILS with a message saying where it was looked for, unless
  ``ICFACE_SKIP_DATA_TESTS=1`` is set, in which case data tests are skipped.
* ``run_cli``: run the ``icface-video`` command line, returning ``(exit_code, stdout, stderr)``.
  In-process by default (fast: models load once per process); ``subprocess=True`` runs the
  installed console script instead, for checks that involve file descriptor 2 (native
  MediaPipe/FFmpeg logging) or process exit status.
* ``workdir``: a fresh empty folder per test (under pytest's ``tmp_path``).
* ``ffmpeg``: run the ffmpeg binary shipped by ``imageio-ffmpeg`` to make test media.

The data is read in place, never copied into the repository.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FACES_ROOT = REPO_ROOT.parent / "shared" / "data" / "faces"


class CliResult(NamedTuple):
    """What one ``icface-video`` run returned; unpacks as ``code, out, err``."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _cli_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m icface_video.cli``."""
    script = Path(sys.executable).parent / "icface-video"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("icface-video")
    return [found] if found else [sys.executable, "-m", "icface_video.cli"]


def _run_in_process(args: Sequence[str]) -> CliResult:
    from icface_video.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # main() should never exit; report it rather than die
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(int(code), out.getvalue(), err.getvalue())


def _run_subprocess(args: Sequence[str], timeout: float, env: dict | None) -> CliResult:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        _cli_command() + [str(a) for a in args],
        capture_output=True, text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(args, subprocess=False, timeout=300, env=None) -> CliResult(exit_code, stdout, stderr)``.

    ``args`` are the arguments after ``icface-video`` (paths may be Path objects).
    ``env`` (subprocess only) adds environment variables.
    """

    def run(args: Sequence[str], subprocess: bool = False, timeout: float = 300, env: dict | None = None) -> CliResult:
        if subprocess:
            return _run_subprocess(args, timeout, env)
        if env:
            raise ValueError("env: only supported with subprocess=True")
        return _run_in_process(args)

    return run


@pytest.fixture(scope="session")
def faces_root() -> Path:
    """The shared face data folder (has ``manifest.csv``); fails clearly when it is missing."""
    root = Path(os.environ.get("ICFACE_DATA") or DEFAULT_FACES_ROOT)
    if not (root / "manifest.csv").is_file():
        message = (
            f"face data not found: expected {root}/manifest.csv "
            f"(set ICFACE_DATA to the data folder, or ICFACE_SKIP_DATA_TESTS=1 to skip data tests)"
        )
        if os.environ.get("ICFACE_SKIP_DATA_TESTS") == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    return root


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh, empty folder for one test's inputs and outputs."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def ffmpeg():
    """``ffmpeg(*args)``: run imageio-ffmpeg's ffmpeg binary (quiet, overwriting); fails the test on error."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()

    def run(*args: object) -> None:
        cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *[str(a) for a in args]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}", pytrace=False)

    run.exe = exe
    return run


@pytest.fixture(scope="session")
def plumbing_model(tmp_path_factory) -> Path:
    """A small randomly initialised fast-design model folder, for pipeline *plumbing* tests only
    (frame counts, sizes, audio, errors). Behaviour tests use the shipped, trained model."""
    import json

    from safetensors.torch import save_file

    from icface_video.networks import Generator, named_config

    folder = tmp_path_factory.mktemp("plumbing-model")
    config = named_config("fast", motion_channels=32, decoder_channels=32, embed_dim=32)
    generator = Generator(config)
    save_file({k: v.contiguous() for k, v in generator.state_dict().items()}, str(folder / "generator.safetensors"))
    (folder / "config.json").write_text(json.dumps({"generator": config.to_dict()}))
    # The geometric renderer (the default) needs the motion model: the shipped, fitted one.
    from icface_video.model import WEIGHTS_DIR
    from icface_video.motion import MOTION_NAME, MOTION_WEIGHTS

    for name in (MOTION_NAME, MOTION_WEIGHTS):
        shutil.copy(WEIGHTS_DIR / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def media(faces_root: Path) -> dict:
    """Short real inputs shared by the pipeline tests."""
    d = faces_root
    return {
        "photo": d / "LIA/data/vox/macron.png",                                  # 256x256
        "grid": d / "LipNet_GRID/evaluation/samples/GRID/bbaf2n.mpg",            # 75 frames, 25 fps, audio
        "short": d / "LivePortrait/assets/examples/driving/d1.mp4",              # 16 frames, 30 fps, audio
        "clip": d / "LivePortrait/assets/examples/driving/d2.mp4",               # 16 frames, 30 fps
        "ntsc": d / "V-Express/test_samples/short_case/AOC/gt.mp4",              # 137 frames, 30000/1001, audio
    }


def frame_png(video: Path, index: int, out: Path) -> Path:
    """Frame ``index`` (0-based) of ``video`` written as the PNG ``out``; returns ``out``."""
    import av

    with av.open(str(video)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                f.to_image().save(out)
                return out
    raise AssertionError(f"{video} has no frame {index}")


def video_facts(path: Path) -> dict:
    """Decoded frame count, frame rate, size and audio presence of a video file (PyAV)."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        return {"frames": frames, "fps": float(v.average_rate), "width": v.codec_context.width,
                "height": v.codec_context.height, "audio": bool(c.streams.audio)}
