"""Benchmark of `icface-video batch` against the same jobs run one by one with `reenact`.

Usage::

    .venv/bin/python bench/bench_batch.py [--jobs 2] [--model DIR] [--count 20]

The job set: ``--count`` jobs pairing 4 source photos (first frames of test-split clips,
so sources repeat 5 times each) with short real driving clips, every job a separate
output. It times (1) a loop of ``icface-video reenact`` processes, one per job, and
(2) one ``icface-video batch`` over the same jobs with ``--jobs N`` workers, then prints
both wall times, jobs per minute and the speed-up. Outputs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ICFACE_DATA") or REPO.parent / "shared" / "data" / "faces")
SOURCES = [
    "dreamtalk/data/style_clip/video/W009_front_neutral_level1_001.mp4",
    "SadTalker/test/examples/source_image/WDA_BobMenendez_000.mp4",
    "MimicTalk/data/raw/examples/May_5s.mp4",
    "video-retalking/examples/face/5.mp4",
]
DRIVERS = [
    "LivePortrait/assets/examples/driving/d1.mp4",
    "LivePortrait/assets/examples/driving/d2.mp4",
    "spectre/samples/LRS3/OzA6jRYjVQs_00004.mp4",
    "spectre/samples/LRS3/PbgB2TaYhio_00007.mp4",
    "spectre/samples/LRS3/0Fi83BHQsMA_00002.mp4",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="batch worker processes")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    import av

    exe = str(Path(sys.executable).parent / "icface-video")
    model = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = []
        for i, rel in enumerate(SOURCES):
            p = tmp / f"source{i}.png"
            with av.open(str(DATA / rel)) as c:
                next(c.decode(video=0)).to_image().save(p)
            photos.append(p)
        jobs = [(photos[i % len(photos)], DATA / DRIVERS[i % len(DRIVERS)], f"job{i:02d}.mp4") for i in range(args.count)]
        frames = 0
        for _, d, _ in jobs:
            with av.open(str(d)) as c:
                frames += sum(1 for _ in c.decode(video=0))
        print(f"{len(jobs)} jobs, {len(photos)} distinct sources, {frames} output frames; "
              f"{os.cpu_count()} cpus, load {open('/proc/loadavg').read().split()[:3]}")

        seq_dir = tmp / "sequential"
        seq_dir.mkdir()
        start = time.perf_counter()
        for src, drv, out in jobs:
            subprocess.run([exe, "reenact", "-s", str(src), "-d", str(drv), "-o", str(seq_dir / out), "--quiet",
                            *model], check=True)
        t_seq = time.perf_counter() - start

        table = tmp / "jobs.csv"
        with open(table, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["source", "driving", "output"])
            w.writerows([(str(s), str(d), o) for s, d, o in jobs])
        start = time.perf_counter()
        subprocess.run([exe, "batch", str(table), "-o", str(tmp / "batch"), "--jobs", str(args.jobs), "--quiet",
                        *model], check=True)
        t_batch = time.perf_counter() - start
        print(f"sequential reenact: {t_seq:.1f} s ({60 * len(jobs) / t_seq:.1f} jobs/min)")
        print(f"batch --jobs {args.jobs}:   {t_batch:.1f} s ({60 * len(jobs) / t_batch:.1f} jobs/min)")
        print(f"speed-up: {t_seq / t_batch:.2f}x; load after {open('/proc/loadavg').read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
