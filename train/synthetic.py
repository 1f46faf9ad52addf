"""A tiny synthetic prepared dataset in the exact ``train/prepare.py`` format (tests, plumbing).

Each "person" is a coloured disc face on a coloured background with two eyes and a mouth
whose opening follows AU25/AU26 and whose eyes close with AU45; the face shifts with yaw
and pitch. Landmarks: the lips ring and eye rings are placed on the drawn mouth and eyes,
every other landmark on the face disc.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from icface_video.attributes import NUM_ATTRS
from icface_video.mesh_topology import EYE_CONTOURS, OUTER_LIPS

LIPS = OUTER_LIPS
# Each eye contour from its outer corner the other way round (lower lid first): the order
# the synthetic eye rings are drawn in.
LEFT_EYE, RIGHT_EYE = ((c[0],) + c[:0:-1] for c in EYE_CONTOURS)


def _ring(cx: float, cy: float, rx: float, ry: float, n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def render_face(res: int, attrs: np.ndarray, skin: np.ndarray, bg: np.ndarray,
                base_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic frame: (res, res, 3) uint8 and (478, 2) landmarks in crop pixels."""
    yy, xx = np.mgrid[0:res, 0:res] + 0.5
    cx = res * (0.5 + 0.25 * attrs[NUM_ATTRS - 2])
    cy = res * (0.5 + 0.25 * attrs[NUM_ATTRS - 3])
    r = 0.3 * res
    img = np.broadcast_to(bg, (res, res, 3)).copy()
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = skin
    open_ = min(1.0, (attrs[14] + attrs[15]) / 6.0)
    close_eye = min(1.0, attrs[16] / 4.0)
    my, mh, mw = cy + 0.15 * res, 0.02 * res + 0.08 * res * open_, 0.12 * res
    img[((xx - cx) / mw) ** 2 + ((yy - my) / mh) ** 2 < 1] = (60, 10, 20)
    eh = 0.04 * res * (1 - close_eye) + 0.005 * res
    for ex in (cx - 0.1 * res, cx + 0.1 * res):
        img[((xx - ex) / (0.05 * res)) ** 2 + ((yy - (cy - 0.05 * res)) / eh) ** 2 < 1] = (250, 250, 250)
    pts = base_points * r + np.array([cx, cy])
    pts[list(LIPS)] = _ring(cx, my, mw, mh, len(LIPS))
    pts[list(LEFT_EYE)] = _ring(cx - 0.1 * res, cy - 0.05 * res, 0.05 * res, eh, len(LEFT_EYE))
    pts[list(RIGHT_EYE)] = _ring(cx + 0.1 * res, cy - 0.05 * res, 0.05 * res, eh, len(RIGHT_EYE))
    return img.astype(np.uint8), pts.astype(np.float32)


def make_synthetic_dataset(root: str | Path, resolution: int = 64, people: int = 3,
                           clips_per_person: int = 2, frames: int = 12, test_people: int = 1,
                           seed: int = 0) -> Path:
    """Write a synthetic prepared dataset under ``root`` and return ``root``."""
    root = Path(root)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.uniform(-0.8, 0.8, size=(478, 2))
    clips, identities = [], []
    for p in range(people + test_people):
        is_test = p >= people
        name = f"person{p:02d}"
        if not is_test:
            identities.append(name)
        skin, bg = rng.integers(80, 240, 3), rng.integers(0, 255, 3)
        for k in range(clips_per_person):
            cid = f"{name}_{k}"
            attrs = np.zeros((frames, NUM_ATTRS), np.float32)
            attrs[:, :17] = rng.uniform(0, 1, (frames, 17))
            attrs[:, 14] = attrs[:, 15] = rng.uniform(0, 4, frames)
            attrs[:, 16] = rng.choice([0.0, 4.0], frames, p=[0.7, 0.3])
            attrs[:, 17:] = rng.uniform(-0.2, 0.2, (frames, 3))
            crops, lms = zip(*(render_face(resolution, a, skin, bg, base) for a in attrs))
            success = np.ones(frames, np.uint8)
            success[-1] = 0
            np.savez_compressed(root / "clips" / f"{cid}.npz", crops=np.stack(crops), attrs=attrs,
                                landmarks=np.stack(lms), success=success,
                                timestamps=np.arange(frames, dtype=np.float64) / 25.0)
            clips.append({"id": cid, "file": f"clips/{cid}.npz", "identity": name,
                          "identity_index": -1 if is_test else len(identities) - 1,
                          "split": "test" if is_test else "train", "frames": frames,
                          "fps": 25.0, "source": "synthetic"})
    (root / "index.json").write_text(json.dumps(
        {"version": 1, "resolution": resolution, "clips": clips, "identities": identities}, indent=1))
    return root
