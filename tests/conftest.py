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

Test layers (markers registered in pyproject.toml, set here, not in the test files):

* ``data``: every test that uses ``faces_root`` (directly or through a fixture such as
  ``media``) reads the real clips.
* ``slow``: the tests in :data:`SLOW_TESTS` and every user of a fixture in
  :data:`SLOW_FIXTURES`: over about 2 s each on the project's 2-core machine. ``make
  test-fast`` (``-m "not slow"``) runs the rest in under a minute; ``make test`` runs all.

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


#: Tests that took over 2 s (set-up included) in ``pytest --durations=0`` over the whole suite
#: on the 2-core machine (2026-12-02, 308 tests in 507 s); every parametrisation of a name.
#: Re-measure with ``pytest --durations=0 --junitxml=j.xml`` when the suite changes.
SLOW_TESTS: dict[str, set[str]] = {
    "test_api.py": {"test_one_call_job_with_cli_options", "test_reenactor_numpy_in_numpy_out",
                    "test_soak_many_short_jobs_on_one_model"},
    "test_au_scale.py": {"test_a_v2_run_records_its_scale_and_refuses_a_v1_resume",
                         "test_leave_one_clip_out_brings_moving_aus_closer_to_openface"},
    "test_controls_parts.py": {"test_mouth_part_driver_opens_the_output_mouth",
                               "test_second_face_of_a_group_photo_driven_by_a_one_face_clip"},
    "test_extract.py": {"test_bad_input_in_a_real_process", "test_blinks_are_au45_peaks",
                        "test_clean_stderr_when_a_long_clip_is_analysed_in_two_halves",
                        "test_happy_clip_smiles_more_than_neutral", "test_head_turn_clip_has_large_yaw_range",
                        "test_smoothing_options", "test_surprised_clip_raises_brows_and_drops_jaw",
                        "test_wide_shot_uses_the_fallback_detector"},
    "test_geometry.py": {"test_cli_reenact_follows_a_real_head_turn", "test_predicted_landmarks_beat_no_motion"},
    "test_model_behaviour.py": {"test_blinks_follow_the_driver_over_a_video",
                                "test_mode_expression_follows_aus_and_keeps_pose",
                                "test_mode_pose_follows_yaw_and_keeps_expression"},
    "test_options.py": {"test_batch_eyelids_field_renders_like_the_cli_flag"},
    "test_outputs.py": {"test_batch_checks_output_extensions_and_takes_codec_fields",
                        "test_extension_decides_the_container", "test_ntsc_driver_gives_exact_ntsc_output",
                        "test_prores_alpha_and_png_sequence_carry_the_face_mask",
                        "test_start_duration_cuts_picture_and_audio_together",
                        "test_start_duration_is_the_same_part_of_the_full_run",
                        "test_variable_rate_driver_keeps_picture_on_its_real_times",
                        "test_variable_rate_reenact_keeps_audio_and_picture_together",
                        "test_variable_rate_source_clip_shows_each_frame_at_its_time"},
    "test_reenact.py": {"test_batch_failures_isolated_and_reported", "test_batch_killed_then_resumed",
                        "test_csv_driver_parts_and_preview", "test_existing_output_untouched_and_interrupt_leaves_nothing",
                        "test_huge_source_keeps_its_resolution", "test_photo_driven_by_video_keeps_rules",
                        "test_source_clip_rules"},
    "test_reliability.py": {"test_bad_model_folder_in_batch_is_one_line_exit_3",
                            "test_batch_json_lines_are_streamed_into_a_pipe",
                            "test_batch_main_process_ending_ends_workers_and_encoders",
                            "test_closed_stderr_and_stdout_do_not_stop_the_work",
                            "test_csv_driver_with_absurd_values_is_one_line", "test_resume_json_prints_skipped_jobs",
                            "test_sigterm_to_reenact_unwinds_like_ctrl_c", "test_wrong_reasons_are_right"},
    "test_training.py": {"test_tiny_config_overfits_a_few_real_frames", "test_two_process_ddp_gloo_identical_checkpoints"},
}
#: Module fixtures (per test file) whose set-up takes over 2 s: every test that uses one is
#: slow (else deselecting the first user would move the set-up onto the next one).
SLOW_FIXTURES: dict[str, set[str]] = {
    "test_au_scale.py": {"clips"}, "test_evaluate.py": {"eval_run"}, "test_geometry.py": {"turn", "talk"},
    "test_extract.py": {"extracted"},  # whole real clips analysed, memoised per process
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the test layers: ``data`` by fixture use, ``slow`` from the measured lists above."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "faces_root" in fixtures:
            item.add_marker(pytest.mark.data)
        name = getattr(item, "originalname", item.name)
        if name in SLOW_TESTS.get(item.path.name, ()) or fixtures & SLOW_FIXTURES.get(item.path.name, set()):
            item.add_marker(pytest.mark.slow)


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
