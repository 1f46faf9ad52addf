"""Outputs that editing software accepts: exact frame rates, colour tags, containers chosen
by the extension (.mp4 .mov .mkv, PNG sequences, ProRes with alpha), --start/--duration,
variable-frame-rate drivers kept in sync with their audio, and the progress display.

Rendering uses the small random model (``plumbing_model``): these check timing, formats,
tags, audio and files, which do not depend on what the network learned. Drivers and
sources are real clips from ``../shared``.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from conftest import video_facts

FAST = ["--x264-preset", "ultrafast", "--batch-size", "16"]
NTSC = Fraction(30000, 1001)
# av.codec.context color enums (FFmpeg's AVColorPrimaries / TRC / Space / Range).
BT709, LIMITED = 1, 1




@pytest.fixture(scope="module")
def vfr_clip(media, ffmpeg, tmp_path_factory) -> Path:
    """The NTSC clip with two frames of every three dropped between frames 40 and 99,
    keeping the real timestamps of the rest (variable frame rate) and the whole audio."""
    out = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    ffmpeg("-i", media["ntsc"], "-vf", r"select='not(between(n\,40\,99)*mod(n\,3))'", "-fps_mode", "vfr",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "copy", out)
    return out


def frame_times(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.array([f.time for f in c.decode(video=0)], np.float64)


def stream_facts(path: Path) -> dict:
    """Rate, codec, profile, pixel format and colour tags of a file's video stream."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        cc = v.codec_context
        return {"rate": v.average_rate, "codec": cc.name, "profile": cc.profile, "pix_fmt": cc.pix_fmt,
                "tags": (cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range),
                "format": c.format.name, "audio": bool(c.streams.audio)}


def luma_plane(frame: av.VideoFrame) -> np.ndarray:
    """The stored Y plane of a decoded YUV frame in 8-bit code values (10-bit divided by 4)."""
    plane = frame.planes[0]
    deep = "10" in frame.format.name
    data = np.frombuffer(plane, np.uint16 if deep else np.uint8).reshape(frame.height, -1)[:, :frame.width]
    return data / 4.0 if deep else data


def mono_audio(path: Path, rate: int = 16000) -> np.ndarray:
    """A file's first audio stream as mono float32 at ``rate`` Hz (from its first sample)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = []
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks)


def audio_offset(output: Path, original: Path, search: tuple[float, float], rate: int = 16000) -> float:
    """Where (s) in ``original``'s audio ``output``'s audio starts: the lag of the largest
    normalised cross-correlation of its first second, searched within ``search``."""
    out, ref = mono_audio(output, rate), mono_audio(original, rate)
    probe = out[int(0.05 * rate):int(1.05 * rate)]  # skip the encoder's first frame
    best, best_lag = -np.inf, None
    for lag in range(int(search[0] * rate), int(search[1] * rate)):
        seg = ref[lag + int(0.05 * rate):lag + int(0.05 * rate) + len(probe)]
        if len(seg) < len(probe):
            break
        score = float(np.dot(seg, probe) / (np.linalg.norm(seg) * np.linalg.norm(probe) + 1e-9))
        if score > best:
            best, best_lag = score, lag
    assert best > 0.8, f"no audio match (best correlation {best:.2f})"
    return best_lag / rate


# -- exact frame rates -------------------------------------------------------------------------


def test_ntsc_driver_gives_exact_ntsc_output(run_cli, plumbing_model, media, workdir):
    out = workdir / "out.mp4"
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["ntsc"], "-o", out, "--model", plumbing_model,
                 "--json", "--duration", "1", *FAST])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["fps"] == "30000/1001" and summary["fps_float"] == pytest.approx(29.97003, abs=1e-5)
    facts = stream_facts(out)
    assert facts["rate"] == NTSC, facts["rate"]  # was 979001/32666
    t = frame_times(out)
    assert len(t) == 30
    np.testing.assert_allclose(np.diff(t), 1001 / 30000, atol=1e-6)

    # The same rate through an extracted CSV driver (ms timestamps) and `animate --fps 29.97`.
    csv = workdir / "drv.csv"
    assert run_cli(["extract", media["ntsc"], "-o", csv, "--max-frames", "40", "--quiet"]).exit_code == 0
    r = run_cli(["reenact", "-s", media["photo"], "-d", csv, "-o", workdir / "csv.mp4", "--model", plumbing_model,
                 "--json", *FAST])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["fps"] == "30000/1001" and stream_facts(workdir / "csv.mp4")["rate"] == NTSC
    r = run_cli(["animate", "-s", media["photo"], "--preset", "smile", "--duration", "0.4", "--fps", "29.97",
                 "-o", workdir / "anim.mov", "--model", plumbing_model, "--json", *FAST])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["fps"] == "30000/1001" and stream_facts(workdir / "anim.mov")["rate"] == NTSC


def test_rates_are_snapped_only_near_standard_ones():
    from icface_video.media import exact_rate, is_variable_rate, nominal_rate, uniform_times

    assert exact_rate(30000 / 1001) == NTSC and exact_rate(23.976) == Fraction(24000, 1001) and exact_rate(25.0) == 25
    assert exact_rate(23.95) == Fraction(479, 20) and exact_rate(23.95, tolerance=2e-3) == Fraction(24000, 1001)
    assert exact_rate(12.5) == Fraction(25, 2)
    assert exact_rate(Fraction(2997, 100)) == Fraction(2997, 100)  # given exactly: kept
    assert nominal_rate(Fraction(2997, 100), Fraction(2997, 100)) == NTSC  # an average within 0.001%
    assert nominal_rate(Fraction(2910000, 137137), NTSC) == NTSC  # dropped frames: the timestamps' rate
    with pytest.raises(ValueError):
        exact_rate(float("nan"))
    t = np.arange(10) / 25.0
    assert not is_variable_rate(t + 0.004 * np.sin(np.arange(10)), 25)
    vfr = np.r_[t[:5], t[5:] + 0.12]  # three frames missing after the fifth
    assert is_variable_rate(vfr, 25)
    np.testing.assert_allclose(uniform_times(vfr, 25), np.arange(13) / 25.0)


# -- colour tags ---------------------------------------------------------------------------------


def test_encoder_converts_and_tags_bt709_limited(workdir):
    """Pure red, green and blue land on BT.709 limited-range luma (63, 173, 32; BT.601
    would give 81, 145, 41) and the stream says so."""
    from icface_video.encode import EncodeConfig, VideoEncoder

    for codec, name in (("h264", "c.mp4"), ("prores", "c.mov")):
        path = workdir / name
        with VideoEncoder(path, 64, 64, 25, EncodeConfig(codec=codec)) as enc:
            for rgb in ((255, 0, 0), (0, 255, 0), (0, 0, 255)):
                enc.write(np.full((64, 64, 3), rgb, np.uint8))
        assert stream_facts(path)["tags"] == (BT709, BT709, BT709, LIMITED), codec
        with av.open(str(path)) as c:
            luma = [int(np.median(luma_plane(f))) for f in c.decode(video=0)]
        assert np.abs(np.array(luma) - [63, 173, 32]).max() <= 1, (codec, luma)


def test_reenact_output_tagged_and_background_colours_kept(run_cli, plumbing_model, media, workdir):
    out = workdir / "out.mp4"
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", out, "--model", plumbing_model,
                 "--crf", "10", *FAST])
    assert r.exit_code == 0, r.stderr
    assert stream_facts(out)["tags"] == (BT709, BT709, BT709, LIMITED)
    # Away from the face the frame is the photo's own: decoded as tagged, its colours come back.
    photo = cv2.cvtColor(cv2.imread(str(media["photo"])), cv2.COLOR_BGR2RGB).astype(np.float32)
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    corner = (slice(0, 40), slice(0, 40))
    assert np.abs(frame[corner] - photo[corner]).mean(axis=(0, 1)).max() < 2.5


# -- containers, ProRes, alpha, image sequences --------------------------------------------------


@pytest.mark.parametrize("suffix, brand", [(".mp4", b"isom"), (".mov", b"qt  "), (".mkv", None)])
def test_extension_decides_the_container(run_cli, plumbing_model, media, workdir, suffix, brand):
    out = workdir / f"out{suffix}"
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["ntsc"], "-o", out, "--model", plumbing_model,
                 "--duration", "0.5", *FAST])
    assert r.exit_code == 0, r.stderr
    head = out.read_bytes()[:12]
    if brand:
        assert head[4:8] == b"ftyp" and head[8:12] == brand, head
    else:
        assert head[:4] == b"\x1a\x45\xdf\xa3"  # EBML: Matroska
    facts = stream_facts(out)
    assert facts["codec"] == "h264" and facts["pix_fmt"] == "yuv420p" and facts["audio"] and facts["rate"] == NTSC
    assert video_facts(out)["frames"] == 15


def test_prores_alpha_and_png_sequence_carry_the_face_mask(run_cli, plumbing_model, media, workdir):
    from icface_video.reenact import RenderOptions, mask_alpha
    from icface_video.source import analyze_still

    r = run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", workdir / "hq.mov",
                 "--codec", "prores", "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    hq = stream_facts(workdir / "hq.mov")
    assert (hq["codec"], hq["profile"], hq["pix_fmt"]) == ("prores", "HQ", "yuv422p10le")
    with av.open(str(workdir / "hq.mov")) as c:
        assert c.streams.audio[0].codec_context.name == "pcm_s16le"  # the driver's sound, uncompressed for editing
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", workdir / "alpha.mov",
                 "--codec", "prores", "--alpha", "--model", plumbing_model, *FAST])
    assert r.exit_code == 0, r.stderr
    facts = stream_facts(workdir / "alpha.mov")
    assert facts["codec"] == "prores" and facts["profile"] == "4444" and facts["pix_fmt"].startswith("yuva444p")
    assert facts["tags"] == (BT709, BT709, BT709, LIMITED)
    (workdir / "frames").mkdir()
    pattern = workdir / "frames" / "%05d.png"
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", pattern, "--alpha",
                 "--model", plumbing_model, "--json", *FAST])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["audio"] is False
    names = sorted(p.name for p in (workdir / "frames").iterdir())
    assert names == [f"{i:05d}.png" for i in range(1, 17)]  # 1-based, like extract's frame column

    expected = mask_alpha(analyze_still(media["photo"], 128), 128, RenderOptions())
    assert expected.min() == 0 and expected.max() == 255
    photo = cv2.imread(str(media["photo"]))
    with av.open(str(workdir / "alpha.mov")) as c:
        prores = [f.to_ndarray(format="rgba") for f in c.decode(video=0)]
    assert len(prores) == 16
    for i, name in enumerate(names):
        png = cv2.imread(str(workdir / "frames" / name), cv2.IMREAD_UNCHANGED)  # BGRA
        assert png.shape == (256, 256, 4)
        np.testing.assert_array_equal(png[..., 3], expected)
        assert np.abs(prores[i][..., 3].astype(int) - expected).max() <= 1
        # The alpha is where the face was replaced: outside it the photo is untouched.
        outside = expected == 0
        assert np.abs(png[..., :3][outside].astype(int) - photo[outside]).max() <= 1


@pytest.mark.parametrize("name, extra, says", [
    ("out.png", [], ".mp4, .mov, .mkv"), ("out.gif", [], ".mp4, .mov, .mkv"), ("out.webm", [], ".mp4, .mov, .mkv"),
    ("out.avi", [], ".mp4, .mov, .mkv"), ("out.txt", [], ".mp4, .mov, .mkv"), ("out", [], ".mp4, .mov, .mkv"),
    ("out.mp4", ["--codec", "prores"], ".mov or .mkv"), ("out.mp4", ["--alpha"], "--codec prores"),
    ("%05d.jpg", [], "written as PNG"), ("seq%03d.png", ["--codec", "prores"], "not an image sequence"),
    ("out.mp4", ["--codec", "vp9"], "h264"),
])
def test_unsupported_outputs_are_usage_errors(run_cli, media, workdir, name, extra, says):
    existing = workdir / "keep.mp4"
    existing.write_bytes(b"old")
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["short"], "-o", workdir / name, *extra])
    assert r.exit_code == 2, r.stderr
    assert len(r.stderr_lines) == 1 and r.stderr_lines[0].startswith("icface-video: error: ") and says in r.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["keep.mp4"] and existing.read_bytes() == b"old"


def test_extract_edit_and_neutralize_check_their_extensions(run_cli, media, workdir):
    r = run_cli(["extract", media["short"], "-o", workdir / "attrs.mp4"])
    assert r.exit_code == 2 and ".csv" in r.stderr and len(r.stderr_lines) == 1
    for cmd in (["edit", "--preset", "smile"], ["neutralize"]):
        r = run_cli([*cmd, "-s", media["photo"], "-o", workdir / "x.mp4"])
        assert r.exit_code == 2 and ".png" in r.stderr and len(r.stderr_lines) == 1, r.stderr
    assert not list(workdir.iterdir())


def test_image_sequence_is_written_whole_or_not_at_all(run_cli, plumbing_model, media, workdir):
    from icface_video.outputs import atomic_output

    pattern = workdir / "f_%03d.png"
    with pytest.raises(RuntimeError):
        with atomic_output(pattern) as tmp:
            for i in (1, 2):
                (tmp.parent / (tmp.name % i)).write_bytes(b"x")
            raise RuntimeError("killed half way")
    assert not list(workdir.iterdir())  # no frames, no temporary folder

    args = ["reenact", "-s", media["photo"], "-d", media["short"], "-o", pattern, "--model", plumbing_model, *FAST]
    assert run_cli(args).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    assert len(before) == 16
    r = run_cli(args)  # exists: refused, nothing touched
    assert r.exit_code == 1 and "f_001.png already exists" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == before
    # --overwrite with a shorter run replaces the whole sequence (no stale frames left).
    assert run_cli([*args, "--overwrite", "--duration", "0.2"]).exit_code == 0
    assert sorted(p.name for p in workdir.iterdir()) == [f"f_{i:03d}.png" for i in range(1, 7)]


def test_batch_checks_output_extensions_and_takes_codec_fields(run_cli, plumbing_model, media, workdir):
    jobs = workdir / "jobs.csv"
    jobs.write_text("source,driving,output,codec,alpha,start,duration\n"
                    f"{media['photo']},{media['short']},a.png,,,,\n"
                    f"{media['photo']},{media['short']},b.mp4,prores,,,\n"
                    f"{media['photo']},{media['short']},f/%05d.png,,,,\n"
                    f"{media['photo']},{media['short']},,prores,true,0.1,0.2\n")
    r = run_cli(["batch", jobs, "-o", workdir / "out", "--model", plumbing_model])
    assert r.exit_code == 3
    assert "row 2: output" in r.stderr and "row 3: output" in r.stderr and "row 4: output" in r.stderr
    r = run_cli(["batch", jobs, "-o", workdir / "out", "--model", plumbing_model, "--skip-invalid", "--json"])
    assert r.exit_code == 0, r.stderr
    entry = json.loads(r.stdout.splitlines()[-1])
    assert entry["output"].endswith(".mov") and entry["frames"] == 6
    facts = stream_facts(Path(entry["output"]))
    assert facts["codec"] == "prores" and facts["profile"] == "4444"


# -- --start / --duration --------------------------------------------------------------------------


def test_start_duration_is_the_same_part_of_the_full_run(media):
    from icface_video.jobs import ReenactJob, cut_timeline, plan_attributes
    from icface_video.memo import AnalysisCache

    cache = AnalysisCache()
    full = plan_attributes(ReenactJob(source=str(media["photo"]), output="x.mp4", driving=str(media["ntsc"])), 128,
                           cache=cache)
    part = plan_attributes(ReenactJob(source=str(media["photo"]), output="x.mp4", driving=str(media["ntsc"]),
                                      start=1.0, duration=2.0), 128, cache=cache)
    assert part.fps == full.fps == NTSC
    assert len(part.times) == 60 and part.times[0] == pytest.approx(30 / float(NTSC))  # first frame at or after 1 s
    np.testing.assert_array_equal(part.attrs, full.attrs[30:90])
    assert len(cut_timeline(full.times, 4.0)) == len(full.times) - int(np.ceil(4.0 * float(NTSC)))
    from icface_video.errors import UsageError
    with pytest.raises(UsageError, match="past its last frame"):
        cut_timeline(full.times, 5.0)


def test_start_duration_cuts_picture_and_audio_together(run_cli, plumbing_model, media, workdir):
    out = workdir / "part.mp4"
    r = run_cli(["reenact", "-s", media["photo"], "-d", media["ntsc"], "-o", out, "--model", plumbing_model,
                 "--start", "1", "--duration", "2", "--json", *FAST])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 60 and video_facts(out)["frames"] == 60
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        audio_seconds = float(a.duration * a.time_base)
    assert audio_seconds == pytest.approx(60 / float(NTSC), abs=1 / float(NTSC))
    # The audio is the driver's from its first output frame's time (30 / fps = 1.001 s), within one frame.
    assert audio_offset(out, media["ntsc"], (0.5, 1.5)) == pytest.approx(30 / float(NTSC), abs=1 / float(NTSC))
    for bad, says in ((["--start", "9"], "past its last frame"), (["--start", "nan"], "finite"),
                      (["--duration", "0"], "--duration")):
        r = run_cli(["reenact", "-s", media["photo"], "-d", media["ntsc"], "-o", workdir / "bad.mp4",
                     "--model", plumbing_model, *bad])
        assert r.exit_code == 2 and says in r.stderr and len(r.stderr_lines) == 1, r.stderr
    assert not (workdir / "bad.mp4").exists()


# -- variable frame rate ----------------------------------------------------------------------------


def test_variable_rate_driver_keeps_picture_on_its_real_times(media, vfr_clip):
    """Each output frame shows the driver's state at its own presentation time: the
    attributes planned from the VFR clip follow the original constant-rate clip with no
    lag, where playing the VFR frames one per 1/fps would put them 1.3 s early."""
    from icface_video.jobs import ReenactJob, plan_attributes
    from icface_video.media import is_variable_rate, probe

    truth = frame_times(vfr_clip)
    truth -= truth[0]
    info = probe(vfr_clip)
    assert info.rate == NTSC and len(truth) == 97 and is_variable_rate(truth, info.rate)
    drift = np.abs(truth - np.arange(len(truth)) / float(info.rate)).max()
    assert drift > 1.0  # what re-timing to a uniform rate did to the picture

    plan = plan_attributes(ReenactJob(source=str(media["photo"]), output="x.mp4", driving=str(vfr_clip),
                                      relative=False), 128)
    ref = plan_attributes(ReenactJob(source=str(media["photo"]), output="x.mp4", driving=str(media["ntsc"]),
                                     relative=False), 128)
    assert plan.fps == NTSC and len(plan.times) == 137
    np.testing.assert_allclose(plan.times, np.arange(137) / float(NTSC), atol=1e-9)
    # Mouth and head over the frames after the dropped run (identical pictures in both clips).
    from icface_video.controls import attr_index
    cols = [attr_index(n) for n in ("AU25", "AU26", "yaw", "pitch")]
    a = plan.attrs[100:130, cols]
    lags = {lag: float(np.abs(a - ref.attrs[100 + lag:130 + lag, cols]).mean()) for lag in range(-8, 5)}
    assert min(lags, key=lags.get) == 0, lags
    assert lags[0] < 0.5 * min(lags[-3], lags[3]), lags


def test_variable_rate_reenact_keeps_audio_and_picture_together(run_cli, plumbing_model, media, vfr_clip, workdir):
    out = workdir / "vfr_out.mp4"
    r = run_cli(["reenact", "-s", media["photo"], "-d", vfr_clip, "-o", out, "--model", plumbing_model, "--json",
                 *FAST])
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["fps"] == "30000/1001" and summary["frames"] == 137
    t = frame_times(out)
    assert len(t) == 137 and np.allclose(np.diff(t), 1001 / 30000, atol=1e-6)
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        audio_seconds = float(a.duration * a.time_base)
    # Picture and sound end together (within one frame), and the sound starts where the picture does.
    assert abs(audio_seconds - 137 / float(NTSC)) <= 1 / float(NTSC)
    assert abs(audio_offset(out, vfr_clip, (0.0, 0.5))) <= 1 / float(NTSC)


def test_variable_rate_source_clip_shows_each_frame_at_its_time(run_cli, plumbing_model, vfr_clip, workdir):
    """A VFR source clip with no driver: output frame k (at k / fps) shows the clip's last
    frame at or before that time, found by its pixels away from the face, and the clip's
    own audio ends with the picture."""
    out = workdir / "clip.mp4"
    r = run_cli(["reenact", "-s", vfr_clip, "--preset", "smile", "-o", out, "--model", plumbing_model,
                 "--crf", "12", "--json", *FAST])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 137

    def top_rows(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
        with av.open(str(path)) as c:
            fs = [(f.time, f.to_ndarray(format="rgb24")[:64].astype(np.float32)) for f in c.decode(video=0)]
        return np.array([t for t, _ in fs]) - fs[0][0], [x for _, x in fs]

    src_t, src = top_rows(vfr_clip)
    out_t, shown = top_rows(out)
    off = []
    for k in range(len(shown)):
        expected = int(np.searchsorted(src_t, out_t[k] + 1e-6, side="right") - 1)
        best = int(np.argmin([np.abs(shown[k] - s).mean() for s in src]))
        off.append(best - expected)
    # Ties between near-identical neighbours aside, the picture is the right one; re-timing
    # the clip's 97 frames one per 1/fps would show frame k (40 frames off by the end).
    assert max(abs(o) for o in off) <= 1, off
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert abs(float(a.duration * a.time_base) - 137 / float(NTSC)) <= 1 / float(NTSC)


# -- progress ------------------------------------------------------------------------------------------


def test_progress_names_each_stage_with_its_own_eta():
    from rich.console import Console

    from icface_video.cli import StageProgress, stage_label

    assert [stage_label(s) for s in ("analyse driver", "analyse mouth driver", "analyse source", "render")] == \
        ["analysing driver", "analysing mouth driver", "analysing source", "rendering"]
    clock = [0.0]
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    bar = StageProgress(console=console, get_time=lambda: clock[0])
    bar.update("analyse driver", 0, 300)
    clock[0] = 2.0
    bar.update("analyse driver", 100, 300)   # 50 frames/s: 4 s left
    bar.update("analyse driver", 300, 300)
    bar.update("render", 0, 300)
    clock[0] = 3.5
    bar.update("render", 30, 300)
    clock[0] = 5.0
    bar.update("render", 60, 300)            # 20 frames/s from its own start: 12 s left
    tasks = {t.description: t for t in bar.progress.tasks}
    assert tasks["rendering"].time_remaining == pytest.approx(12.0, abs=0.5)
    console.print(bar.progress.make_tasks_table(bar.progress.tasks))
    text = console.file.getvalue()
    assert "analysing driver" in text and "rendering" in text and "0:00:12" in text and "20 frames/s" in text
    assert "encoding" not in tasks
    bar.update("render", 300, 300)           # the last frame is in: ffmpeg finishes the file
    assert "encoding" in {t.description for t in bar.progress.tasks}
