"""Benchmark of `icface-video extract`: frames per second, decode included, and where the time goes.

Usage::

    .venv/bin/python bench/bench_extract.py                  # 512x512 LivePortrait d3.mp4
    .venv/bin/python bench/bench_extract.py --wide           # also the 1280x720 wide shot
    .venv/bin/python bench/bench_extract.py --clip X.mp4 --max-frames 200

Two measurements per clip:

1. End to end: ``icface-video extract CLIP -o tmp.csv`` run in this process (the CLI's own
   code path: probe, decode, landmarker, fallback, attributes, smoothing, CSV write), best
   of ``--repeat`` runs, with and without the one-off model load.
2. Stages, timed separately on the same frames (the analysis loop of
   ``FaceAnalyzer.analyze`` is unrolled here so each part gets its own clock):
   decode alone (PyAV, no pixel conversion), RGB conversion (``to_ndarray("rgb24")``),
   landmarker (MediaPipe VIDEO mode, incl. wrapping the frame), result conversion to numpy
   (478 landmarks, 52 blendshapes), attribute math (AUs, angles, crop params, face
   selection), fallback (YuNet + crop landmarker, only on frames the landmarker missed),
   smoothing and CSV write.

The machine may be shared; the load average (``/proc/loadavg``) is printed before and
after so figures can be judged. The data folder is ``<repo>/../shared/data/faces`` or
``$ICFACE_DATA``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from icface_video import cli  # noqa: E402
from icface_video.align import landmark_params  # noqa: E402
from icface_video.attributes import attributes_from_face  # noqa: E402
from icface_video.csvio import write_attributes_csv  # noqa: E402
from icface_video.face import FaceAnalyzer, _select  # noqa: E402
from icface_video.smoothing import SmoothConfig  # noqa: E402
from icface_video.track import ATTR_UNITS  # noqa: E402

DATA = Path(os.environ.get("ICFACE_DATA") or REPO.parent / "shared" / "data" / "faces")
CLIP_512 = "LivePortrait/assets/examples/driving/d3.mp4"
CLIP_WIDE = "ghost/examples/videos/nggyup.mp4"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def end_to_end(path: Path, max_frames: int, repeat: int) -> dict:
    """Best of ``repeat`` in-process CLI runs; returns the CLI's JSON summary plus wall time."""
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "attrs.csv"
        for _ in range(repeat):
            buf_out, buf_err = io.StringIO(), io.StringIO()
            t0 = time.perf_counter()
            with redirect_stdout(buf_out), redirect_stderr(buf_err):
                code = cli.main(["extract", str(path), "-o", str(out), "--json", "--overwrite",
                                 "--max-frames", str(max_frames)])
            wall = time.perf_counter() - t0
            if code != 0:
                raise SystemExit(f"extract failed ({code}): {buf_err.getvalue().strip()}")
            summary = json.loads(buf_out.getvalue())
            summary["wall"] = wall
            if best is None or wall < best["wall"]:
                best = summary
    return best


def stages(path: Path, max_frames: int) -> dict:
    """Seconds spent in each stage over the first ``max_frames`` frames."""
    import mediapipe as mp

    t = {"decode": 0.0, "rgb": 0.0}
    # 1. Decode alone: PyAV, threaded as in media.py, frames left in FFmpeg's pixel format.
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        n = 0
        t0 = time.perf_counter()
        for _ in c.decode(s):
            n += 1
            if n >= max_frames:
                break
        t["decode"] = time.perf_counter() - t0
    # 2. RGB conversion, clocked alone: decoded again single-threaded (unclocked) so that no
    # decoder thread runs while a conversion is timed. RGB frames are kept for stage 3.
    frames, times = [], []
    with av.open(str(path)) as c:
        for vf in c.decode(c.streams.video[0]):
            t0 = time.perf_counter()
            frames.append(vf.to_ndarray(format="rgb24"))
            t["rgb"] += time.perf_counter() - t0
            times.append(float(vf.time or 0.0))
            if len(frames) >= n:
                break
    # 3. Analysis, FaceAnalyzer.analyze unrolled.
    t0 = time.perf_counter()
    fa = FaceAnalyzer(mode="video")
    t["model load"] = time.perf_counter() - t0
    for k in ("landmarker", "to numpy", "attribute math", "fallback"):
        t[k] = 0.0
    attrs, params, found, fallback_frames = [], [], [], 0
    try:
        last_ms = -1
        for rgb, ts in zip(frames, times):
            h, w = rgb.shape[:2]
            t0 = time.perf_counter()
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
            last_ms = max(int(round(ts * 1000)), last_ms + 1)
            result = fa._main.detect_for_video(image, last_ms)
            t1 = time.perf_counter()
            faces = fa._faces_from_result(result, w, h)
            t2 = time.perf_counter()
            pick = _select([f.bbox for f in faces], fa.face_index, fa._previous)
            face = faces[pick] if pick is not None else None
            t3 = time.perf_counter()
            if face is None:
                face = fa._fallback(rgb)
                fallback_frames += face is not None
            t4 = time.perf_counter()
            fa._previous = face.bbox if face is not None else None
            if face is not None:
                attrs.append(attributes_from_face(face.blendshapes, face.matrix))
                params.append(landmark_params(face.landmarks))
            else:
                attrs.append(np.zeros(20, np.float32))
                params.append(np.zeros(3, np.float32))
            found.append(face is not None)
            t5 = time.perf_counter()
            t["landmarker"] += t1 - t0
            t["to numpy"] += t2 - t1
            t["attribute math"] += (t3 - t2) + (t5 - t4)
            t["fallback"] += t4 - t3
        # Cost of one fallback call, measured even when the clip never needed it.
        probe_frames = frames[:: max(1, len(frames) // 10)][:10]
        t0 = time.perf_counter()
        for rgb in probe_frames:
            boxes, scores = fa._detect(rgb)
            if boxes:
                fa._landmarks_in_box(rgb, boxes[0], scores[0])
        fallback_call = (time.perf_counter() - t0) / len(probe_frames)
    finally:
        fa.close()
    # 4. Smoothing and CSV write.
    from icface_video.smoothing import smooth

    ts = np.array(times, np.float64)
    ts = ts - ts[0]
    raw = np.stack(attrs)
    t0 = time.perf_counter()
    smoothed = smooth(raw, ts, SmoothConfig(), unit=ATTR_UNITS)
    t["smoothing"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_attributes_csv(Path(tmp) / "a.csv", ts, smoothed, np.array(found), np.ones(len(found)))
        t["csv write"] = time.perf_counter() - t0
    return {"frames": n, "seconds": t, "found": int(sum(found)), "fallback_frames": fallback_frames,
            "fallback_call_ms": 1000 * fallback_call, "size": f"{frames[0].shape[1]}x{frames[0].shape[0]}"}


def report(name: str, path: Path, max_frames: int, repeat: int) -> None:
    print(f"\n== {name}: {path.name}")
    st = stages(path, max_frames)  # first: its model load is the process's first (sha256 check included)
    e2e = end_to_end(path, max_frames, repeat)
    n = st["frames"]
    per_frame = {k: v for k, v in st["seconds"].items() if k != "model load"}
    total = sum(per_frame.values())
    load_s = st["seconds"]["model load"]
    print(f"   {st['size']}, {n} frames, faces found {st['found']}/{n}, fallback used on {st['fallback_frames']}")
    print(f"   end to end (CLI, best of {repeat}): {e2e['wall']:.2f} s wall = {n / e2e['wall']:.1f} frames/s "
          f"incl. model load; {n / max(e2e['wall'] - load_s, 1e-9):.1f} frames/s without it "
          f"(CLI's own figure {e2e['fps']})")
    print(f"   stages (separately timed; sum {total:.2f} s = {n / total:.1f} frames/s; model load {load_s:.2f} s once):")
    print(f"   {'stage':<16}{'ms/frame':>10}{'share':>8}")
    for k, v in per_frame.items():
        print(f"   {k:<16}{1000 * v / n:>10.2f}{100 * v / total:>7.1f}%")
    print(f"   one fallback call (YuNet on the full frame + crop landmarker): {st['fallback_call_ms']:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", default=None, help=f"clip to time (default: {CLIP_512} in the data folder)")
    ap.add_argument("--wide", action="store_true", help=f"also time the 1280x720 wide shot {CLIP_WIDE}")
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2, help="end-to-end runs; the best is reported")
    args = ap.parse_args()

    import mediapipe

    print(f"icface-video extract benchmark: python {platform.python_version()}, mediapipe {mediapipe.__version__}, "
          f"PyAV {av.__version__}, {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))})")
    print(f"load average before: {load()}")
    clips = [("512x512" if args.clip is None else "clip", Path(args.clip) if args.clip else DATA / CLIP_512)]
    if args.wide:
        clips.append(("wide shot", DATA / CLIP_WIDE))
    for name, path in clips:
        if not path.is_file():
            raise SystemExit(f"bench: {path}: not found (set ICFACE_DATA to the data folder)")
        report(name, path, args.max_frames, args.repeat)
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
