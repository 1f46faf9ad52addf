"""Reliability: special files, signals that stop a whole batch, reserved batch outputs,
the one-line-error promise, closed standard streams, job-file encodings, streamed JSON.

Inputs are short real clips and a photo from ``../shared``; the renders use the small
random ``plumbing_model`` (these tests check files, processes and messages, not faces).
Process tests run the installed console script in its own session and are bounded by
timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import video_facts

FAST = ["--x264-preset", "ultrafast", "--batch-size", "16"]
SCRIPT = str(Path(sys.executable).parent / "icface-video")




def one_error_line(r, code: int, *needles: str) -> str:
    """The run failed with ``code`` and printed exactly one ``icface-video: error:`` line holding ``needles``."""
    lines = r.stderr_lines if hasattr(r, "stderr_lines") else [x for x in r.stderr.splitlines() if x.strip()]
    assert r[0] == code if isinstance(r, tuple) else r.returncode == code, r
    assert len(lines) == 1 and lines[0].startswith("icface-video: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_part_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".part" in p.name]


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_until(condition, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


# -- item 14.2: only regular files are replaced ------------------------------------------


def test_overwrite_never_replaces_special_files(run_cli, plumbing_model, media, workdir):
    fifo = workdir / "fifo.csv"
    os.mkfifo(fifo)
    fifo_mp4 = workdir / "fifo.mp4"
    os.mkfifo(fifo_mp4)
    cdev = workdir / "null.csv"
    try:
        os.mknod(cdev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null (root only)
    except PermissionError:
        cdev = None
    r = run_cli(["extract", media["photo"], "-o", fifo, "--overwrite"])
    one_error_line(r, 1, str(fifo), "FIFO", "only a regular file")
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", fifo_mp4, "--overwrite",
                 "--model", plumbing_model, *FAST])
    one_error_line(r, 1, "FIFO")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and stat.S_ISFIFO(os.stat(fifo_mp4).st_mode)
    if cdev is not None:
        r = run_cli(["extract", media["photo"], "-o", cdev, "--overwrite"])
        one_error_line(r, 1, "character device")
        assert stat.S_ISCHR(os.stat(cdev).st_mode)
    jobs = workdir / "jobs.csv"
    jobs.write_text(f"source,driving,output\n{media['photo']},{media['short']},{fifo_mp4}\n")
    r = run_cli(["batch", jobs, "-o", workdir, "--dry-run"])
    assert r.exit_code == 3 and "row 2: output" in r.stderr and "FIFO" in r.stderr
    assert not [p for p in workdir.iterdir() if ".part" in p.name]


# -- items 14.3 and 13.15: however the batch's main process ends, its workers end --------


def _long_jobs(folder: Path, media: dict, n: int = 6) -> Path:
    rows = ["source,driving,output"] + [f"{media['photo']},{media['grid']},job{i}.mp4" for i in range(n)]
    path = folder / "jobs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _start_batch(jobs: Path, outdir: Path, model: Path, extra: list[str] = ()) -> subprocess.Popen:
    cmd = [SCRIPT, "batch", str(jobs), "-o", str(outdir), "--model", str(model), "--jobs", "2", "--quiet", *extra]
    return subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _wait_rendering(proc: subprocess.Popen, outdir: Path) -> None:
    """Until a worker is writing an output (a temporary ``.part`` file exists) and ffmpeg runs."""
    def rendering() -> bool:
        return outdir.is_dir() and any(".part" in p.name for p in outdir.iterdir()) and len(session_pids(proc.pid)) >= 4
    assert wait_until(rendering, 240, 0.05), "the batch never started rendering"
    assert proc.poll() is None


def _kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_batch_main_process_ending_ends_workers_and_encoders(plumbing_model, media, workdir, how):
    jobs = _long_jobs(workdir, media)
    outdir = workdir / "out"
    proc = _start_batch(jobs, outdir, plumbing_model)
    try:
        _wait_rendering(proc, outdir)
        os.kill(proc.pid, getattr(signal, how))  # the main process only, not its group
        proc.wait(timeout=30)
        if how == "SIGTERM":
            assert proc.returncode == 143
            err = [x for x in proc.stderr.read().decode().splitlines() if x.strip()]
            assert err == ["icface-video: error: terminated (SIGTERM)"], err
        else:
            assert proc.returncode == -signal.SIGKILL
        # Workers and their ffmpeg processes end with it (within a few seconds) ...
        assert wait_until(lambda: not session_pids(proc.pid), 10), \
            f"left running: {[Path(f'/proc/{p}/cmdline').read_bytes()[:80] for p in session_pids(proc.pid)]}"
        # ... and stop writing: no temporary file left, nothing changes any more.
        assert no_part_files(outdir)
        files = {p.name: p.stat().st_size for p in outdir.iterdir()}
        time.sleep(1.0)
        assert {p.name: p.stat().st_size for p in outdir.iterdir()} == files
        for p in outdir.glob("job*.mp4"):  # only complete outputs under final names
            assert video_facts(p)["frames"] == 75
    finally:
        _kill_session(proc.pid)


HALT_WHILE_CREATING = """
import sys, threading, time
from pathlib import Path
from icface_video import outputs, runtime
folder = Path(sys.argv[1])
def stopper():
    time.sleep(0.3)
    runtime.halt(7, (outputs.remove_live_temps,))
threading.Thread(target=stopper, daemon=True).start()
i = 0
while True:  # temporary outputs and sequence folders, created as fast as possible, never finished
    pattern = folder / (f"o{i}.mp4" if i % 2 else f"s{i}_%05d.png")
    outputs.atomic_output(pattern).__enter__()
    i += 1
"""


def test_halting_while_the_main_thread_creates_temporaries_leaves_none(workdir):
    """:func:`runtime.halt` from another thread while the main thread keeps creating
    temporary outputs: the process ends with the code, and no temporary file or folder is
    left (none is created unregistered, none after the cleanup)."""
    for _ in range(3):
        folder = workdir / f"halt{_}"
        folder.mkdir()
        r = subprocess.run([sys.executable, "-c", HALT_WHILE_CREATING, str(folder)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 7, r.stderr
        assert list(folder.iterdir()) == []


def test_sigterm_to_reenact_unwinds_like_ctrl_c(plumbing_model, media, workdir):
    out = workdir / "out.mp4"
    cmd = [SCRIPT, "reenact", "-s", str(media["photo"]), "-d", str(media["grid"]), "-o", str(out),
           "--model", str(plumbing_model), "--x264-preset", "ultrafast", "--batch-size", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        assert wait_until(lambda: any(".part" in p.name for p in workdir.iterdir()), 120, 0.02)
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
        err = proc.stderr.read()
        assert code == 143, err
        assert err.strip().splitlines()[-1] == "icface-video: error: terminated (SIGTERM)"
        assert wait_until(lambda: not session_pids(proc.pid), 10)  # its ffmpeg too
        assert list(workdir.iterdir()) == []
    finally:
        _kill_session(proc.pid)


# -- item 14.4: reserved names and outputs outside OUTDIR ------------------------------------


def test_batch_refuses_reserved_and_outside_outputs(run_cli, media, workdir):
    outdir = workdir / "out"
    outside = workdir / "elsewhere.mp4"
    rows = ["source,driving,output", f"{media['photo']},{media['short']},report.json",
            f"{media['photo']},{media['short']},.icface-batch/x.mp4",
            f"{media['photo']},{media['short']},../x.mp4",
            f"{media['photo']},{media['short']},{outside}",
            f"{media['photo']},{media['short']},{media['short']}",
            f"{media['photo']},{media['short']},fine.mp4"]
    jobs = workdir / "jobs.csv"
    jobs.write_text("\n".join(rows) + "\n")
    r = run_cli(["batch", jobs, "-o", outdir, "--dry-run"])
    assert r.exit_code == 3, r.stderr
    for row, needle in ((2, "reserved"), (3, "reserved"), (4, "outside OUTDIR"), (5, "outside OUTDIR"),
                        (6, "also an input")):
        assert any(f"row {row}: output" in line and needle in line for line in r.stderr_lines), (row, r.stderr)
    assert "row 7" not in r.stderr
    # --allow-outside lets ../x.mp4 and absolute paths through, never the batch's own files or an input.
    r = run_cli(["batch", jobs, "-o", outdir, "--dry-run", "--allow-outside", "--skip-invalid"])
    assert r.exit_code == 0, r.stderr
    outputs = sorted(Path(json.loads(x)["output"]).name for x in r.stdout.splitlines())
    assert outputs == ["elsewhere.mp4", "fine.mp4", "x.mp4"]
    assert "row 2: output" in r.stderr and "row 3: output" in r.stderr and "row 6: output" in r.stderr


# -- item 14.6: one line and a documented code everywhere ------------------------------------


def test_bad_model_folder_in_batch_is_one_line_exit_3(media, workdir):
    jobs = workdir / "jobs.csv"
    jobs.write_text(f"source,driving\n{media['photo']},{media['short']}\n")
    r = subprocess.run([SCRIPT, "batch", str(jobs), "-o", str(workdir / "out"), "--model", "/nonexistent"],
                       capture_output=True, text=True, timeout=120)
    one_error_line(r, 3, "/nonexistent", "model folder not found")
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("args", [
    ["extract", "{photo}", "-o", "{out}.csv", "--smooth-strength", "nan"],
    ["extract", "{photo}", "-o", "{out}.csv", "--smooth-strength", "inf"],
    ["animate", "-s", "{photo}", "--preset", "smile", "-o", "{out}.mp4", "--fps", "nan"],
    ["animate", "-s", "{photo}", "--preset", "smile", "-o", "{out}.mp4", "--duration", "nan"],
    ["animate", "-s", "{photo}", "--preset", "smile", "-o", "{out}.mp4", "--duration", "inf"],
    ["animate", "-s", "{photo}", "--preset", "smile", "-o", "{out}.mp4", "--ramp", "nan"],
    ["reenact", "-s", "{photo}", "-d", "{photo}", "-o", "{out}.mp4", "--start", "nan"],
    ["reenact", "-s", "{photo}", "-d", "{photo}", "-o", "{out}.mp4", "--duration", "inf"],
])
def test_non_finite_option_values_are_usage_errors(run_cli, media, workdir, args):
    r = run_cli([a.format(photo=media["photo"], out=workdir / "x") for a in args])
    one_error_line(r, 2, "Invalid value for '--")
    assert not list(workdir.iterdir())


def test_edit_to_a_video_name_is_one_clear_error(run_cli, plumbing_model, media, workdir):
    r = run_cli(["edit", "-s", media["photo"], "--preset", "smile", "-o", workdir / "x.mp4", "--model", plumbing_model])
    one_error_line(r, 2, "x.mp4", "writes an image")
    r = run_cli(["neutralize", "-s", media["photo"], "-o", workdir / "x.mp4", "--model", plumbing_model])
    one_error_line(r, 2, "x.mp4")
    assert not list(workdir.iterdir())


@pytest.mark.parametrize("value", ["inf", "1e300", "-inf", "nan"])
def test_csv_driver_with_absurd_values_is_one_line(run_cli, plumbing_model, media, workdir, value):
    csv_path = workdir / "driver.csv"
    r = run_cli(["extract", media["short"], "-o", csv_path])
    assert r.exit_code == 0, r.stderr
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index("AU12_r")] = value
    lines[3] = ",".join(cells)
    csv_path.write_text("\n".join(lines) + "\n")
    r = subprocess.run([SCRIPT, "reenact", "-s", str(media["photo"]), "-d", str(csv_path), "-o",
                        str(workdir / "out.mp4"), "--model", str(plumbing_model), *FAST],
                       capture_output=True, text=True, timeout=120)
    one_error_line(r, 3, "driver.csv: line 4", "non-finite or out-of-range")
    assert not (workdir / "out.mp4").exists()


# -- item 14.7: a closed stream does not stop the work ------------------------------------------


def test_closed_stderr_and_stdout_do_not_stop_the_work(plumbing_model, media, workdir):
    def run(redirect: str, *args) -> int:
        cmd = ["bash", "-c", f'exec "$@" {redirect}', "_", SCRIPT, *map(str, args)]
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=180).returncode

    assert run("2>&-", "extract", media["short"], "-o", workdir / "a.csv") == 0
    assert len((workdir / "a.csv").read_text().splitlines()) == 17
    assert run("2>&- >&-", "reenact", "-s", media["photo"], "-d", media["short"], "-o", workdir / "a.mp4",
               "--model", plumbing_model, "--json", *FAST) == 0
    assert video_facts(workdir / "a.mp4")["frames"] == 16
    # Errors still give their exit code.
    assert run("2>&-", "extract", workdir / "missing.mp4", "-o", workdir / "b.csv") == 3
    assert sorted(p.name for p in workdir.iterdir()) == ["a.csv", "a.mp4"]


# -- item 14.10: Excel's byte order mark ----------------------------------------------------


def test_job_csv_with_utf8_bom_is_read(run_cli, media, workdir):
    jobs = workdir / "jobs.csv"
    jobs.write_bytes(b"\xef\xbb\xbf" + f"source,driving,output\n{media['photo']},{media['short']},a.mp4\n".encode())
    r = run_cli(["batch", jobs, "-o", workdir / "out", "--dry-run"])
    assert r.exit_code == 0, r.stderr
    (job,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert job["source"] == str(media["photo"]) and Path(job["output"]).name == "a.mp4"


# -- item 14.11: --json is streamed -------------------------------------------------------------


def test_batch_json_lines_are_streamed_into_a_pipe(plumbing_model, media, workdir):
    jobs = _long_jobs(workdir, media, n=4)
    outdir = workdir / "out"
    cmd = [SCRIPT, "batch", str(jobs), "-o", str(outdir), "--model", str(plumbing_model), "--json", "--jobs", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        first = json.loads(proc.stdout.readline())
        # The first line arrives while jobs are still to run (before: all lines at the very end).
        finished = len(list((outdir / ".icface-batch").glob("*.json")))
        assert first["status"] == "done" and finished < 4, finished
        assert not (outdir / "report.json").exists()
        rest = [json.loads(x) for x in proc.stdout.read().splitlines()]
        assert proc.wait(timeout=300) == 0 and len(rest) == 3
    finally:
        _kill_session(proc.pid)


# -- item 14.13: the right reasons ---------------------------------------------------------------


def test_wrong_reasons_are_right(run_cli, media, workdir):
    loop = workdir / "loop.mp4"
    loop.symlink_to(loop)
    one_error_line(run_cli(["extract", loop, "-o", workdir / "a.csv"]), 3, "symbolic link loop")
    fifo = workdir / "pipe.mp4"
    os.mkfifo(fifo)
    # A FIFO is never opened (that would block): refused for what it is.
    r = subprocess.run([SCRIPT, "extract", str(fifo), "-o", str(workdir / "a.csv")], capture_output=True, text=True,
                       timeout=60)
    one_error_line(r, 3, "FIFO", "not a video or image file")
    r = subprocess.run([SCRIPT, "reenact", "-s", str(media["photo"]), "-d", str(fifo), "-o", str(workdir / "b.mp4")],
                       capture_output=True, text=True, timeout=60)
    one_error_line(r, 3, "FIFO")
    # A folder where no file can be created (sysfs): the error names the output, not a temporary file.
    r = run_cli(["extract", media["photo"], "-o", "/sys/icface-test.csv"])
    line = one_error_line(r, 1, "/sys/icface-test.csv", "cannot be written")
    assert ".part" not in line
    # A 0-byte job file, and one with a header only, are input errors.
    empty = workdir / "jobs.csv"
    empty.write_bytes(b"")
    one_error_line(run_cli(["batch", empty, "-o", workdir / "out"]), 3, "no jobs")
    empty.write_text("source,driving\n")
    one_error_line(run_cli(["batch", empty, "-o", workdir / "out"]), 3, "no jobs")
    assert not (workdir / "out").exists()


def test_output_that_is_an_input_is_refused(run_cli, plumbing_model, media, workdir):
    photo = workdir / "photo.png"
    photo.write_bytes(Path(media["photo"]).read_bytes())
    before = photo.read_bytes()
    driver = workdir / "drv.mp4"
    driver.write_bytes(Path(media["short"]).read_bytes())
    r = run_cli(["reenact", "-s", photo, "-d", driver, "-o", workdir / "." / "drv.mp4", "--overwrite",
                 "--model", plumbing_model, *FAST])
    one_error_line(r, 1, "is also an input")
    r = run_cli(["edit", "-s", photo, "--preset", "smile", "-o", photo, "--overwrite", "--model", plumbing_model])
    one_error_line(r, 1, "is also an input")
    assert photo.read_bytes() == before and driver.read_bytes() == Path(media["short"]).read_bytes()


# -- issue 13 items 3, 13, 16 ---------------------------------------------------------------------


def test_presets_validate_reports_every_error(run_cli, workdir):
    bad = workdir / "bad.toml"
    bad.write_text('description = 3\nintensity = 5\n[set]\nAU99 = 1\nAU12 = 9\n[add]\nyaw = "x"\n')
    good = workdir / "good.toml"
    good.write_text('[set]\nAU12 = 2\n')
    r = run_cli(["presets", "validate", bad, good])
    assert r.exit_code == 3
    lines = r.stderr_lines
    for line_no, key in ((1, "description"), (2, "intensity"), (4, "AU99"), (5, "AU12"), (7, "yaw")):
        assert any(line.startswith(f"icface-video: error: {bad}:{line_no}: {key}: ") for line in lines), (key, lines)
    assert len(lines) == 6 and "1 of 2 preset file(s) invalid" in lines[-1]
    assert r.stdout.strip() == f"{good}: ok"
    # Elsewhere a bad preset is still one line: its first problem.
    r = run_cli(["animate", "-s", "x.png", "--preset", bad, "-o", workdir / "x.mp4"])
    one_error_line(r, 3, f"{bad}:1: description")


@pytest.mark.parametrize("command", ["reenact", "animate", "edit", "neutralize", "batch"])
def test_device_is_a_choice(run_cli, media, workdir, command):
    args = {"reenact": ["reenact", "-s", media["photo"], "-d", media["short"], "-o", workdir / "x.mp4"],
            "animate": ["animate", "-s", media["photo"], "--preset", "smile", "-o", workdir / "x.mp4"],
            "edit": ["edit", "-s", media["photo"], "--preset", "smile", "-o", workdir / "x.png"],
            "neutralize": ["neutralize", "-s", media["photo"], "-o", workdir / "x.png"],
            "batch": ["batch", "-o", workdir / "out", "--source", media["photo"], "--driving", media["short"]]}[command]
    r = run_cli([command, "--help"])
    assert r.exit_code == 0 and "[auto|cpu|cuda|cuda:N|mps]" in r.stdout, r.stderr
    start = time.perf_counter()
    r = run_cli([*args, "--device", "gpu0"])
    one_error_line(r, 2, "--device", "'gpu0' is not one of auto, cpu, cuda, mps, cuda:N")
    assert time.perf_counter() - start < 5  # refused while parsing, before any work
    r = run_cli([*args, "--device", "cuda:7", "--dry-run"] if command == "batch" else [*args, "--device", "cuda:7"])
    if r.exit_code != 0:  # cuda:N is a valid name; on a machine without that GPU it is refused clearly
        one_error_line(r, 2, "--device cuda:7")
    assert not list(workdir.glob("x.*"))


def test_resume_json_prints_skipped_jobs(run_cli, plumbing_model, media, workdir):
    jobs = workdir / "jobs.csv"
    jobs.write_text("source,driving,output\n" + "".join(f"{media['photo']},{media['short']},j{i}.mp4\n" for i in range(2)))
    outdir = workdir / "out"
    r = run_cli(["batch", jobs, "-o", outdir, "--model", plumbing_model, "--json"])
    assert r.exit_code == 0, r.stderr
    r = run_cli(["batch", jobs, "-o", outdir, "--model", plumbing_model, "--json", "--resume"])
    assert r.exit_code == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(e["row"], Path(e["output"]).name, e["status"]) for e in lines] == [(2, "j0.mp4", "skipped"),
                                                                                 (3, "j1.mp4", "skipped")]


def test_sigterm_swallowed_on_the_way_still_keeps_the_final_name_free(tmp_path):
    """A SIGTERM whose exception Python swallowed (raised inside a finaliser or a callback
    from C) is raised again before the finished output is renamed."""
    import contextlib

    from icface_video import runtime
    from icface_video.outputs import atomic_output

    final = tmp_path / "out.mp4"
    runtime.reset_termination()
    try:
        with pytest.raises(runtime.Terminated):
            with atomic_output(final, False) as tmp:
                tmp.write_bytes(b"frames")
                with contextlib.suppress(KeyboardInterrupt):
                    runtime.on_sigterm(signal.SIGTERM, None)
        assert list(tmp_path.iterdir()) == []
    finally:
        runtime.reset_termination()
