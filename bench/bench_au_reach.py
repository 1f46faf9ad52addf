"""How far a hand-set AU reaches: set one AU on every suitable photo of the data and
re-measure it from the rendered picture.

For each image of the data's manifest (Yale's and ORL's grey, low-resolution faces left
out) whose own value of the AU is under ``--below``, render the photo with that AU set to
``--value`` (the default geometric renderer, as ``edit --set AU=VALUE`` and the studio's
slider), re-extract the AU from the result with the package's own face analysis, and
print the rise's median, 90th percentile and how many photos rose by at least
``--rise``. One face per photo (the largest); photos without a face are counted apart.

    python bench/bench_au_reach.py --au AU12 --value 4
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import cv2
import numpy as np

from icface_video.api import Reenactor, load_model
from icface_video.attributes import ATTR_NAMES, AU_NAMES
from icface_video.errors import IcfaceError

ROOT = Path(os.environ.get("ICFACE_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "faces")
LEFT_OUT = ("ORL_att_faces", "yalefaces")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--au", default="AU12", choices=AU_NAMES)
    parser.add_argument("--value", type=float, default=4.0, help="the AU's set value, 0..5 (default 4)")
    parser.add_argument("--below", type=float, default=0.3, help="photos whose own AU is under this (default 0.3)")
    parser.add_argument("--rise", type=float, default=1.5, help="count the photos rising at least this (default 1.5)")
    args = parser.parse_args()
    j = ATTR_NAMES.index(args.au)
    model = load_model()
    rows = [r for r in csv.DictReader(open(ROOT / "manifest.csv")) if r["kind"] == "image"
            and not r["path"].startswith(LEFT_OUT)]
    rises, no_face, skipped = [], 0, 0
    for row in rows:
        bgr = cv2.imread(str(ROOT / row["path"]))
        if bgr is None:
            no_face += 1
            continue
        try:
            r = Reenactor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), model)
        except IcfaceError:
            no_face += 1
            continue
        src = r.source_attributes
        if src[j] >= args.below:
            skipped += 1
            continue
        target = src.copy()
        target[j] = args.value
        out = r.render(target)[0]
        try:
            after = r.measure([out]).attrs[0, j]
        except IcfaceError:  # the face is not found any more in the result
            after = 0.0
        rises.append(float(after - src[j]))
    x = np.array(rises)
    print(f"{args.au} set to {args.value} on {len(x)} photos with {args.au} under {args.below} "
          f"({skipped} above it, {no_face} without a face); re-measured rise:")
    print(f"  median {np.median(x):.2f}   90th percentile {np.percentile(x, 90):.2f}   "
          f"max {x.max():.2f}   at least {args.rise}: {(x >= args.rise).sum()} of {len(x)}")


if __name__ == "__main__":
    main()
