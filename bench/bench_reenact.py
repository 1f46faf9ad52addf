"""Benchmark of `icface-video reenact`: end-to-end speed, time per stage, peak memory.

Usage::

    .venv/bin/python bench/bench_reenact.py                       # 512x512 30 fps driver, 512x512 photo
    .venv/bin/python bench/bench_reenact.py --long 300            # also a 5-minute driver (memory)
    .venv/bin/python bench/bench_reenact.py --model runs/x/checkpoints/step_00001000

In one go it times a plain ffmpeg transcode of the driver (libx264, same settings as the
tool) and the full reenactment (driver decode + face analysis + smoothing + generator +
paste-back + encode, with the driver's audio muxed when present), prints frames per
second, the ratio to the transcode, seconds per stage (from ``--json``) and the peak
resident memory of each run (``getrusage`` of the child process). ``--long S`` builds an
S-second driver by looping the clip, to check that memory does not grow with length.

Driver: LivePortrait/assets/examples/driving/d3.mp4 (512x512, 30 fps, 354 frames).
Source: the first frame of SadTalker/test/examples/source_image/RD_Radio34_000.mp4 (512x512).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ICFACE_DATA") or REPO.parent / "shared" / "data" / "faces")
DRIVER = "LivePortrait/assets/examples/driving/d3.mp4"
SOURCE = "SadTalker/test/examples/source_image/RD_Radio34_000.mp4"


def ffmpeg_exe() -> str:
    sys.path.insert(0, str(REPO))
    from icface_video.encode import ffmpeg_exe as exe

    return exe()


_PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")


def run_child(cmd: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run a command; returns (wall seconds, peak RSS MiB of that command alone, result).

    The command runs under a small wrapper process whose ``RUSAGE_CHILDREN`` peak is that
    command's own, so each figure is per run.
    """
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return wall, peak_kib / 1024.0, proc


def frames_of(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def bench(driver: Path, source: Path, out: Path, model: str | None, preset: str, batch_size: int,
          renderer: str = "geometry") -> dict:
    ff = ffmpeg_exe()
    n = frames_of(driver)
    t_ff, mem_ff, _ = run_child([ff, "-hide_banner", "-loglevel", "error", "-y", "-i", str(driver), "-c:v", "libx264",
                                 "-preset", preset, "-crf", "18", "-pix_fmt", "yuv420p", str(out / "transcode.mp4")])
    cmd = [str(Path(sys.executable).parent / "icface-video"), "reenact", "-s", str(source), "-d", str(driver),
           "-o", str(out / "reenact.mp4"), "--overwrite", "--json", "--x264-preset", preset,
           "--batch-size", str(batch_size), "--renderer", renderer]
    if model:
        cmd += ["--model", model]
    t_re, mem_re, proc = run_child(cmd)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"driver": str(driver), "frames": n, "transcode_s": round(t_ff, 2), "transcode_fps": round(n / t_ff, 1),
            "reenact_s": round(t_re, 2), "reenact_fps": round(n / t_re, 1), "ratio": round(t_re / t_ff, 2),
            "stages_s": summary["stage_seconds"], "peak_rss_mib": round(mem_re, 1),
            "transcode_peak_rss_mib": round(mem_ff, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: shipped)")
    ap.add_argument("--long", type=float, default=0, help="also run a 10 s and an S-second looped driver")
    ap.add_argument("--skip-short", action="store_true", help="with --long: skip the plain d3 run")
    ap.add_argument("--x264-preset", default="medium")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--renderer", default="geometry", choices=["geometry", "network"])
    args = ap.parse_args()
    import av

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        src = out / "source.png"
        with av.open(str(DATA / SOURCE)) as c:
            next(c.decode(video=0)).to_image().save(src)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load {open('/proc/loadavg').read().split()[:3]}")
        drivers = [] if (args.long and args.skip_short) else [DATA / DRIVER]
        if args.long:
            ff = ffmpeg_exe()
            for secs in (10.0, args.long):
                p = out / f"driver_{int(secs)}s.mp4"
                # Loop the clip by stream copy (no re-encode: fast, same pictures).
                subprocess.run([ff, "-hide_banner", "-loglevel", "error", "-y", "-stream_loop", "-1", "-i",
                                str(DATA / DRIVER), "-t", f"{secs}", "-c", "copy", str(p)], check=True)
                drivers.append(p)
        for drv in drivers:
            r = bench(drv, src, out, args.model, args.x264_preset, args.batch_size, args.renderer)
            print(json.dumps(r))
            stages = ", ".join(f"{k} {v:.2f} s ({1000 * v / r['frames']:.1f} ms/frame)" for k, v in r["stages_s"].items())
            print(f"  {Path(drv).name}: {r['frames']} frames; transcode {r['transcode_fps']} fps; reenact "
                  f"{r['reenact_fps']} fps end to end ({r['ratio']}x the transcode time); peak RSS {r['peak_rss_mib']} MiB")
            print(f"  stages: {stages}")
        print(f"load after: {open('/proc/loadavg').read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
