"""reenact / animate / edit / neutralize / batch: pipeline rules and bad input.

These use a small random model (``plumbing_model``): they check frame counts, rates,
sizes, audio, files and errors, which do not depend on what the network learned.
What the trained model does is checked in ``test_model_behaviour.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import video_facts

FAST = ["--x264-preset", "ultrafast", "--batch-size", "16"]




def no_leftovers(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".part" in p.name]


def test_photo_driven_by_video_keeps_rules(run_cli, plumbing_model, media, workdir):
    out = workdir / "out.mp4"
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["grid"], "-o", out, "--model", plumbing_model,
                 "--json", *FAST])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    facts = video_facts(out)
    assert facts["frames"] == 75 == summary["frames"]
    assert facts["fps"] == pytest.approx(25.0)
    assert (facts["width"], facts["height"]) == (256, 256)
    assert facts["audio"] and summary["audio"]
    assert no_leftovers(workdir)
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["grid"], "-o", workdir / "mute.mp4",
                 "--model", plumbing_model, "--no-audio", *FAST])
    assert r.exit_code == 0, r.stderr
    assert not video_facts(workdir / "mute.mp4")["audio"]


def test_odd_source_size_rounds_down_to_even_and_crop_only(run_cli, plumbing_model, media, workdir):
    img = cv2.imread(str(media["photo"]))
    odd = workdir / "odd.png"
    cv2.imwrite(str(odd), img[:253, :255])
    r = run_cli(["reenact", "-s", odd, "-d", media["short"], "-o", workdir / "o.mp4", "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    facts = video_facts(workdir / "o.mp4")
    assert (facts["width"], facts["height"], facts["frames"]) == (254, 252, 16)
    assert facts["fps"] == pytest.approx(30.0)
    r = run_cli(["reenact", "-s", odd, "-d", media["short"], "-o", workdir / "c.mp4", "--model", plumbing_model,
                 "--crop-only", *FAST])
    assert r.exit_code == 0, r.stderr
    assert (video_facts(workdir / "c.mp4")["width"], video_facts(workdir / "c.mp4")["height"]) == (128, 128)


def test_source_clip_rules(run_cli, plumbing_model, media, workdir):
    # Shorter source clip than the driver: output follows the driver (last source frame held).
    r = run_cli(["reenact", "-s", media["clip"], "-d", media["grid"], "-o", workdir / "a.mp4",
                 "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    facts = video_facts(workdir / "a.mp4")
    assert facts["frames"] == 75 and facts["audio"] and (facts["width"], facts["height"]) == (512, 512)
    # A source clip with no driver: its own timeline and audio, presets on top.
    r = run_cli(["reenact", "-s", media["grid"], "--preset", "smile", "-o", workdir / "b.mp4",
                 "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    facts = video_facts(workdir / "b.mp4")
    assert facts["frames"] == 75 and facts["audio"] and (facts["width"], facts["height"]) == (360, 288)


def test_csv_driver_parts_and_preview(run_cli, plumbing_model, media, workdir):
    table = workdir / "drv.csv"
    assert run_cli(["extract", media["short"], "-o", table, "--quiet"]).exit_code == 0
    out = workdir / "p.mp4"
    r = run_cli(["reenact", "-s", media["photo"], "-d", table, "--mouth-from", media["grid"], "-o", out,
                 "--model", plumbing_model, "--preview", "--json", *FAST])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert video_facts(out)["frames"] == 16  # the primary driver (the CSV) sets the length
    assert Path(summary["preview"]).is_file() and Path(summary["contact_sheet"]).is_file()
    sheet = cv2.imread(summary["contact_sheet"])
    assert sheet is not None and sheet.shape[0] >= 256


def test_animate_edit_neutralize(run_cli, plumbing_model, media, workdir):
    r = run_cli(["animate", "-s", media["photo"], "--preset", "smile", "--duration", "1", "--fps", "10",
                 "-o", workdir / "a.mp4", "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    facts = video_facts(workdir / "a.mp4")
    assert facts["frames"] == 10 and facts["fps"] == pytest.approx(10) and not facts["audio"]
    keys = workdir / "k.toml"
    keys.write_text('[[key]]\ntime = 0\nAU12 = 0\n[[key]]\ntime = 0.8\nAU12 = 4\n')
    r = run_cli(["animate", "-s", media["photo"], "--keyframes", keys, "-o", workdir / "k.mp4", "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    assert video_facts(workdir / "k.mp4")["frames"] == 20  # 0.8 s at 25 fps
    r = run_cli(["edit", "-s", media["photo"], "--preset", "surprise", "-o", workdir / "e.png", "--model", plumbing_model])
    assert r.exit_code == 0, r.stderr
    edited, source = cv2.imread(str(workdir / "e.png")), cv2.imread(str(media["photo"]))
    assert edited.shape == source.shape
    # Paste-back leaves pixels far from the face exactly as they were.
    for region in (np.s_[:, :16], np.s_[:, -16:], np.s_[:16, :]):  # background strips of this 256x256 portrait
        assert np.array_equal(edited[region], source[region])
    assert not np.array_equal(edited, source)  # the face itself was replaced
    r = run_cli(["neutralize", "-s", media["photo"], "-o", workdir / "n.png", "--crop-only", "--model", plumbing_model])
    assert r.exit_code == 0, r.stderr
    assert cv2.imread(str(workdir / "n.png")).shape == (128, 128, 3)


def _one_error(r, needle: str, code: int) -> None:
    assert r.exit_code == code, (r.exit_code, r.stderr)
    lines = r.stderr_lines
    assert len(lines) == 1 and lines[0].startswith("icface-video: error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_bad_inputs(run_cli, plumbing_model, media, workdir):
    noise = workdir / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    out = workdir / "o.mp4"
    m = ["--model", plumbing_model]
    _one_error(run_cli(["reenact", "-s", noise, "-d", media["short"], "-o", out, *m]), "noise.png", 3)
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", noise, "-o", out, *m]), "noise.png", 3)
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", workdir / "missing.mp4", "-o", out, *m]), "missing.mp4", 3)
    _one_error(run_cli(["reenact", "-s", media["photo"], "-o", out, *m]), "needs --driving", 2)
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--set", "AU12=9", *m]), "AU12", 2)
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--preset", "nope", *m]), "nope", 3)
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--model", workdir]), "config.json", 3)
    _one_error(run_cli(["animate", "-s", media["photo"], "-o", out, *m]), "animate needs", 2)
    import torch

    if not torch.cuda.is_available():
        _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--device", "cuda", *m]),
                   "--device cuda", 2)
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--device", "gpu0", *m]),
               "'gpu0' is not one of", 2)
    assert not out.exists() and no_leftovers(workdir)


def test_existing_output_untouched_and_interrupt_leaves_nothing(run_cli, plumbing_model, media, workdir, monkeypatch):
    out = workdir / "keep.mp4"
    out.write_bytes(b"precious")
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--model", plumbing_model]),
               "already exists", 1)
    assert out.read_bytes() == b"precious"
    # An interrupted render (Ctrl-C mid-way) leaves no file under the final name and no temp file.
    import icface_video.reenact as R

    real = R.GeometryStage.render
    calls = {"n": 0}

    def interrupt(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # in the second batch of 4 frames
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(R.GeometryStage, "render", interrupt)
    target = workdir / "new.mp4"
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["grid"], "-o", target, "--model", plumbing_model,
                 "--batch-size", "4"])
    assert r.exit_code == 130 and not target.exists() and no_leftovers(workdir)


def test_missing_ffmpeg_is_one_clear_error(run_cli, plumbing_model, media, workdir, monkeypatch):
    import icface_video.encode as E

    monkeypatch.setattr(E.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    out = workdir / "o.mp4"
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--model", plumbing_model]),
               "ffmpeg not found", 1)
    assert not out.exists() and no_leftovers(workdir)


# -- batch ---------------------------------------------------------------------------------


def _write_jobs(folder: Path, media: dict, faulty: bool = True) -> Path:
    noise = folder / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(1).integers(0, 255, (120, 120, 3), dtype=np.uint8))
    rows = ["source,driving,preset,output"]
    for i in range(6):
        rows.append(f"{media['photo']},{media['short'] if i % 2 else media['clip']},{'smile' if i % 3 == 0 else ''},job{i}.mp4")
    if faulty:
        rows.append(f"{noise},{media['short']},,bad_source.mp4")      # no face in the source
        rows.append(f"{media['photo']},{noise},,bad_driver.mp4")      # no face in the driver
    path = folder / "jobs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_batch_failures_isolated_and_reported(run_cli, plumbing_model, media, workdir):
    jobs = _write_jobs(workdir, media)
    outdir = workdir / "out"
    r = run_cli(["batch", jobs, "-o", outdir, "--model", plumbing_model, "--json", "--jobs", "2"])
    assert r.exit_code == 4, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    assert len(lines) == 8
    report = json.loads((outdir / "report.json").read_text())
    assert (report["done"], report["failed"]) == (6, 2)
    failed = {Path(e["output"]).name for e in report["entries"] if e["status"] == "failed"}
    assert failed == {"bad_source.mp4", "bad_driver.mp4"}
    for i in range(6):
        assert video_facts(outdir / f"job{i}.mp4")["frames"] == 16
    assert not (outdir / "bad_source.mp4").exists() and no_leftovers(outdir)


def test_batch_invalid_file_reports_every_row_and_runs_nothing(run_cli, plumbing_model, media, workdir):
    jobs = workdir / "jobs.csv"
    jobs.write_text(f"source,driving,preset,colour\n{media['photo']},{media['short']},,x\n"
                    f"{workdir / 'missing.jpg'},{media['short']},,\n{media['photo']},{media['short']},nope,\n")
    outdir = workdir / "out"
    r = run_cli(["batch", jobs, "-o", outdir, "--model", plumbing_model])
    assert r.exit_code == 3
    err = r.stderr
    assert "row 2: colour: unknown field" in err and "row 3: source" in err and "row 4: preset" in err
    assert not outdir.exists() or not any(p.suffix == ".mp4" for p in outdir.iterdir())


def test_batch_shards_cover_every_job_once(run_cli, plumbing_model, media, workdir):
    jobs = _write_jobs(workdir, media, faulty=False)
    seen = []
    for k in (1, 2):
        r = run_cli(["batch", jobs, "-o", workdir / "out", "--shard", f"{k}/2", "--dry-run"])
        assert r.exit_code == 0, r.stderr
        seen += [json.loads(x)["output"] for x in r.stdout.splitlines()]
    assert sorted(seen) == sorted(str((workdir / "out" / f"job{i}.mp4").resolve()) for i in range(6))


def test_batch_killed_then_resumed(plumbing_model, media, workdir):
    jobs = _write_jobs(workdir, media, faulty=False)
    outdir = workdir / "out"
    cmd = [str(Path(sys.executable).parent / "icface-video"), "batch", str(jobs), "-o", str(outdir),
           "--model", str(plumbing_model), "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_dir = outdir / ".icface-batch"  # a job is finished once its state file is written
    deadline = time.time() + 240
    while time.time() < deadline and not (state_dir.is_dir() and any(state_dir.glob("*.json"))):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the whole batch, workers included
    proc.wait()
    recorded = {Path(json.loads(sp.read_text())["output"]).name for sp in state_dir.glob("*.json")}
    finished_before = {p.name: p.stat().st_mtime_ns for p in outdir.glob("job*.mp4") if p.name in recorded}
    assert 1 <= len(finished_before) < 6
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    for i in range(6):
        assert video_facts(outdir / f"job{i}.mp4")["frames"] == 16
    for name, mtime in finished_before.items():  # not redone
        state_ok = (outdir / name).stat().st_mtime_ns == mtime
        assert state_ok or name not in finished_before
    assert no_leftovers(outdir)


def test_driver_face_lost_for_some_frames_is_held_and_counted(run_cli, plumbing_model, media, workdir, ffmpeg):
    driver = workdir / "covered.mp4"
    # Black out the face in frames 5..9 of a 16-frame driver.
    ffmpeg("-i", media["short"], "-vf", "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n,5,9)'",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", driver)
    r = run_cli(["reenact", "-s", media["photo"], "-d", driver, "-o", workdir / "o.mp4", "--json",
                 "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["lost_driver_frames"] == 5
    assert video_facts(workdir / "o.mp4")["frames"] == 16


def test_huge_source_keeps_its_resolution(run_cli, plumbing_model, media, workdir):
    big = workdir / "big.png"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(media["photo"])), (2560, 2560), interpolation=cv2.INTER_CUBIC))
    r = run_cli(["reenact", "-s", big, "-d", media["short"], "-o", workdir / "o.mp4", "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    facts = video_facts(workdir / "o.mp4")
    assert (facts["width"], facts["height"], facts["frames"]) == (2560, 2560, 16)


def test_encoder_failure_leaves_nothing(run_cli, plumbing_model, media, workdir, monkeypatch):
    """An encoder that dies mid-way (disk full, killed ffmpeg) is one error line and no output file."""
    import icface_video.encode as E

    monkeypatch.setattr(E, "ffmpeg_exe", lambda: "/bin/false")
    out = workdir / "o.mp4"
    _one_error(run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--model", plumbing_model]),
               "ffmpeg failed", 1)
    assert not out.exists() and no_leftovers(workdir)


def test_analysis_cache_computes_a_key_once_across_threads(tmp_path):
    """reenact analyses its drivers in a second thread while the model loads; a caller
    asking for the same file meanwhile waits for that result (and gets its error)."""
    import threading

    from icface_video.errors import InputError
    from icface_video.memo import AnalysisCache

    f = tmp_path / "driver.mp4"
    f.write_bytes(b"x")
    cache, calls, gate = AnalysisCache(), [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(5)
        return "track"

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("track", str(f), slow))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert results == ["track"] * 3 and len(calls) == 1

    def broken():
        raise InputError(f, "no face found")

    for _ in range(2):
        with pytest.raises(InputError, match="no face"):
            cache.get("still", str(f), broken)


def test_sources_yield_batches_and_a_still_is_encoded_and_masked_once(plumbing_model, media, tmp_path, monkeypatch):
    """The one source interface: a photo yields its one frame per batch, a clip the frame shown
    at each output time; the render loop encodes, pastes and masks a photo's frame once and a
    clip's frames per batch (the still-source optimisations kept without a still branch)."""
    import icface_video.reenact as R
    from icface_video.model import ReenactmentModel
    from icface_video.source import SourceClip, analyze_still

    model = ReenactmentModel.load(plumbing_model)
    still = analyze_still(media["photo"], model.resolution)
    clip = SourceClip(media["clip"], model.resolution)
    times = clip.times[:7]
    assert still.shape == still.rgb.shape[:2] == (256, 256)
    photo_batches = list(still.batches(times, 3))
    assert [len(b) for b in photo_batches] == [1, 1, 1] and all(b[0] is still for b in photo_batches)
    clip_batches = list(clip.batches(times, 3))
    assert [len(b) for b in clip_batches] == [3, 3, 1]
    assert clip.shape == clip_batches[0][0].shape
    shown = [sf.rgb for b in clip_batches for sf in b]
    assert not np.array_equal(shown[0], shown[6])  # the clip's own frames, in turn

    counts = {"encode": 0, "mask": 0, "paste": 0}
    encode, mask, paste = R.encode_sources, R.mask_alpha, R.PasteBack

    def counted(name, fn):
        def wrapper(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(R, "encode_sources", counted("encode", encode))
    monkeypatch.setattr(R, "mask_alpha", counted("mask", mask))
    monkeypatch.setattr(R, "PasteBack", counted("paste", paste))
    attrs = np.tile(still.attrs, (7, 1))
    options = R.RenderOptions(renderer="network", batch_size=3,
                              encode=R.EncodeConfig(codec="prores", alpha=True))
    R.render_video(model, still, attrs, times, 30, tmp_path / "still.mov", options)
    assert counts == {"encode": 1, "mask": 1, "paste": 2}  # one paste-back, one inside the mask
    counts.update(encode=0, mask=0, paste=0)
    R.render_video(model, clip, attrs, times, 30, tmp_path / "clip.mov", options)
    assert counts == {"encode": 3, "mask": 7, "paste": 14}  # per batch; per frame
