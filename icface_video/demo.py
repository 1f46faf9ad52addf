"""The README's built-in example: ``python -m icface_video.demo`` (``make demo``).

Needs no data from outside the installed packages: it takes the astronaut photo that
scikit-image ships, makes a short clip in which the head rolls and the camera zooms
(a known in-plane motion), and runs ``icface-video extract`` on it. The extracted
roll angle must follow the rotation that was applied; the demo prints both.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np


def make_roll_clip(path: Path, seconds: float = 3.0, fps: float = 25.0, max_roll_deg: float = 15.0) -> np.ndarray:
    """Write the synthetic clip; returns the applied roll per frame in degrees (N,)."""
    from skimage import data

    from .encode import VideoEncoder

    photo = data.astronaut()  # (512, 512, 3) uint8 RGB, shipped inside scikit-image
    h, w = photo.shape[:2]
    centre = (w * 0.47, h * 0.3)  # about the face
    n = int(round(seconds * fps))
    rolls = max_roll_deg * np.sin(np.linspace(0, 2 * math.pi, n))
    with VideoEncoder(path, w, h, fps) as enc:
        for i, roll in enumerate(rolls):
            zoom = 1.0 + 0.1 * math.sin(math.pi * i / n)
            m = cv2.getRotationMatrix2D(centre, float(roll), zoom)
            enc.write(cv2.warpAffine(photo, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    return rolls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m icface_video.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    clip = args.out / "astronaut_roll.mp4"
    table = args.out / "astronaut_roll.csv"
    applied = make_roll_clip(clip)
    from .cli import main as cli_main
    from .csvio import read_attributes_csv

    code = cli_main(["extract", str(clip), "-o", str(table), "--overwrite", "--landmarks"])
    if code:
        return code
    result = read_attributes_csv(table)
    measured = np.degrees(result.attrs[:, 19])
    # cv2 turns the picture counter-clockwise for positive angles; roll > 0 is clockwise
    # in the image (OpenFace camera frame, y down), so roll should follow -applied.
    change = measured - measured[0]
    corr = float(np.corrcoef(-applied, measured)[0, 1])
    err = float(np.abs(change - (-applied + applied[0])).mean())
    print(f"clip:  {clip}  ({len(applied)} frames)")
    print(f"table: {table}")
    print(f"applied rotation  {applied.min():+.1f} .. {applied.max():+.1f} deg counter-clockwise")
    print(f"measured roll     {measured.min():+.1f} .. {measured.max():+.1f} deg (clockwise positive)")
    print(f"roll follows the rotation: correlation {corr:+.3f}, mean error of the change {err:.2f} deg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
