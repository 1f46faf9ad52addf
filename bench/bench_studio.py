"""Benchmark of the studio's preview latency: slider change -> new image, through HTTP.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_studio.py            # 512x512 source
    .venv/bin/python bench/bench_studio.py --size 1024 --changes 40

It starts ``icface-video studio`` (the installed command line, ``--no-browser``, a free
port) on a 512x512 photo (the first frame of
SadTalker/test/examples/source_image/RD_Radio34_000.mp4, as ``bench_reenact.py``; resized
when ``--size`` says so), then sends slider changes to ``POST /api/render`` one after the
other, as the page does (one request in flight), and times each from the request to the
last byte of the image: drafts (``draft: true``, JPEG, what the page asks while a slider
moves) and full-size PNGs (on release). Prints the median and the 90th percentile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ICFACE_DATA") or REPO.parent / "shared" / "data" / "faces")
SOURCE = "SadTalker/test/examples/source_image/RD_Radio34_000.mp4"


def post(url: str, body: dict) -> float:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="source side in pixels (default 512)")
    parser.add_argument("--changes", type=int, default=30, help="slider changes of each kind (default 30)")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    import cv2

    from icface_video.media import load_image

    rgb = load_image(DATA / SOURCE)
    if rgb.shape[:2] != (args.size, args.size):
        rgb = cv2.resize(rgb, (args.size, args.size), interpolation=cv2.INTER_CUBIC)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "source.png"
        cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        exe = Path(sys.executable).parent / "icface-video"
        proc = subprocess.Popen([str(exe), "studio", str(photo), "--no-browser", "--port", "0", "--out",
                                 str(Path(tmp) / "out")], stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)
        url = None
        for line in proc.stderr:
            m = re.search(r"studio: (http://\S+/)", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            sys.exit("the studio did not start")
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        try:
            with urllib.request.urlopen(url + "api/state") as r:
                values = json.loads(r.read())["source"]["values"]
            for _ in range(3):  # warm-up
                post(url + "api/render", {"values": values, "draft": True})
            results = {}
            for draft in (True, False):
                times = []
                for i in range(args.changes):
                    v = dict(values)
                    v["AU12"] = 4.0 * (i % 10) / 9           # a slider moving
                    v["yaw"] = -20 + 40 * ((i * 7) % 10) / 9
                    v["AU26"] = 2.0 * ((i * 3) % 10) / 9
                    times.append(post(url + "api/render", {"values": v, "draft": draft}))
                times.sort()
                results[draft] = (statistics.median(times), times[int(0.9 * (len(times) - 1))])
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    cores = os.cpu_count()
    print(f"studio preview latency, {args.size}x{args.size} source, {cores} CPU cores ({platform.processor() or platform.machine()}), "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {args.changes} slider changes each")
    for draft, (median, p90) in results.items():
        kind = "draft (while dragging, JPEG)" if draft else "full size (on release, PNG)"
        print(f"  {kind:<32} median {median * 1000:6.1f} ms   90th percentile {p90 * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
