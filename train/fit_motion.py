"""Fit the motion model (``icface_video.motion``) on the train clips and measure it on test.

``python -m train.fit_motion [--out icface_video/weights] [--knots 0,1.5,3] [--ridge 30]
[--max-frames 300]``

1. Face tracks of every video clip of the ``train`` split (``train.face_tracks``: 3D
   landmarks in frame pixels, blendshapes, head angles).
2. Per frame, the canonical shape ``P = R^T (L - c) / s``; per clip, ``P`` and the
   features (AU hinge features, and the head angles as nuisance) are centred on the
   clip's mean, which removes the person's own face shape; then one ridge least squares
   over all clips gives the displacement per feature ``W``.
3. The mirror map: each landmark's nearest neighbour, in the mean canonical shape,
   of its reflection across the midline (pairs kept where they are mutual).
4. The held-out figure: on the ``test`` clips, pairs of frames of one clip (source =
   the clip's most neutral frame, targets = every 5th frame): mean landmark error in
   pixels of the target frame (the 468 mesh points, 2D), for no motion (the source's
   landmarks), pose only (rotation and the target's centre and scale) and the whole
   model, overall and for the mouth and eyes, on all targets and on expressive ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from icface_video.attributes import AU_NAMES, AU_SCALE, NUM_AUS
from icface_video.mesh_topology import EYE_CONTOURS, INNER_LIPS, NUM_LANDMARKS, NUM_MESH
from icface_video.motion import MotionModel, canonical_shape, head_frame, hinge_features
from train.face_tracks import ClipTrack, load_tracks

MOUTH = np.array(sorted(set(INNER_LIPS) | {61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0,
                                           37, 39, 40, 185}))
EYES = np.array(sorted(set(EYE_CONTOURS[0]) | set(EYE_CONTOURS[1])))


def design(track: ClipTrack, knots: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip centred (features, nuisance, canonical shapes) of the frames with a face."""
    ok = track.success
    attrs = track.attrs[ok]
    p = canonical_shape(track.landmarks[ok], attrs[:, NUM_AUS:]).reshape(int(ok.sum()), -1)
    f = hinge_features(attrs[:, :NUM_AUS], knots)
    pose = attrs[:, NUM_AUS:].astype(np.float64)
    nuis = np.concatenate([pose, pose ** 2], axis=1)
    return f - f.mean(0), nuis - nuis.mean(0), p - p.mean(0)


def fit(tracks: list[ClipTrack], knots: tuple[float, ...], ridge: float) -> tuple[np.ndarray, dict]:
    """(F, 478, 3) displacement weights by ridge least squares (nuisance columns unpenalised)."""
    xtx, xty, n = None, None, 0
    for t in tracks:
        if t.success.sum() < 10:
            continue
        f, nuis, p = design(t, knots)
        x = np.concatenate([f, nuis], axis=1)
        xtx = x.T @ x if xtx is None else xtx + x.T @ x
        xty = x.T @ p if xty is None else xty + x.T @ p
        n += len(x)
    nf = NUM_AUS * len(knots)
    reg = np.zeros(xtx.shape[0])
    reg[:nf] = ridge
    w = np.linalg.solve(xtx + np.diag(reg), xty)
    return w[:nf].reshape(nf, NUM_LANDMARKS, 3), {"frames": n}


def mirror_map(mean_shape: np.ndarray) -> np.ndarray:
    """(478,) involution: mutual nearest neighbours of the reflected mesh points; others map to themselves."""
    p = mean_shape[:NUM_MESH]
    refl = p * np.array([-1.0, 1.0, 1.0])
    d = ((refl[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    nn = d.argmin(1)
    mirror = np.arange(NUM_LANDMARKS)
    for i, j in enumerate(nn):
        if nn[j] == i:
            mirror[i] = j
    mirror[468:473], mirror[473:478] = np.arange(473, 478), np.arange(468, 473)  # irises swap
    return mirror


def evaluate(model: MotionModel, tracks: list[ClipTrack], every: int = 5) -> dict:
    """Landmark errors (pixels of the target frame) on pairs of frames of each clip."""
    rows = {"none": [], "pose": [], "model": []}
    parts = {"mouth": MOUTH, "eyes": EYES, "all": np.arange(NUM_MESH)}
    expressive = []
    for t in tracks:
        ok = np.nonzero(t.success)[0]
        if len(ok) < 10:
            continue
        attrs = t.attrs
        score = attrs[ok, :NUM_AUS].sum(1) / 5.0 + np.abs(attrs[ok, NUM_AUS:]).sum(1) / 0.35
        s = ok[int(np.argmin(score))]
        targets = ok[::every]
        src = t.landmarks[s].astype(np.float64)
        cs, ss = head_frame(src)
        ct, st = head_frame(t.landmarks[targets])
        placement = np.concatenate([ct[:, :2] - cs[:2], (st / ss)[:, None]], axis=1)
        pose_only = attrs[targets].copy()
        pose_only[:, :NUM_AUS] = attrs[s, :NUM_AUS]
        preds = {"none": np.repeat(src[None], len(targets), 0),
                 "pose": model.target_landmarks(src, attrs[s], pose_only, placement),
                 "model": model.target_landmarks(src, attrs[s], attrs[targets], placement)}
        real = t.landmarks[targets].astype(np.float64)
        for k, pred in preds.items():
            err = np.linalg.norm(pred[:, :, :2] - real[:, :, :2], axis=-1)  # (B, 478)
            rows[k].append(np.stack([err[:, v].mean(1) for v in parts.values()], 1))
        expressive.append(np.abs(attrs[targets, :NUM_AUS] - attrs[s, :NUM_AUS]).max(1) > 1.5)
    expr = np.concatenate(expressive)
    out = {}
    for k, v in rows.items():
        v = np.concatenate(v)
        out[k] = {f"{part}": round(float(v[:, j].mean()), 3) for j, part in enumerate(parts)}
        out[k].update({f"{part}_expressive": round(float(v[expr, j].mean()), 3) for j, part in enumerate(parts)})
    out["pairs"], out["expressive_pairs"] = int(len(expr)), int(expr.sum())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("icface_video/weights"))
    ap.add_argument("--knots", default="0,1.5,3")
    ap.add_argument("--ridge", type=float, default=30.0)
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--no-write", action="store_true", help="measure only")
    args = ap.parse_args(argv)
    knots = tuple(float(k) for k in args.knots.split(","))
    t0 = time.perf_counter()
    train = load_tracks("train", args.max_frames)
    test = load_tracks("test", args.max_frames)
    weights, stats = fit(train, knots, args.ridge)
    shapes = [canonical_shape(t.landmarks[t.success], t.attrs[t.success, NUM_AUS:]).mean(0) for t in train
              if t.success.sum() >= 10]
    mean_shape = np.mean(shapes, axis=0)
    # the tracks' AUs (train.face_tracks: blendshapes_to_aus) are on the tool's scale
    model = MotionModel(knots, weights, mean_shape, mirror_map(mean_shape), {"au_scale": AU_SCALE})
    result = evaluate(model, test)
    meta = {"fitted_on": "train", "clips": len(train), "frames": stats["frames"], "ridge": args.ridge,
            "au_scale": AU_SCALE,
            "au_names": list(AU_NAMES), "test_landmark_error_px": result,
            "command": "python -m train.fit_motion " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(result, indent=1))
    print(f"{len(train)} train clips, {stats['frames']} frames; {time.perf_counter() - t0:.1f} s")
    if not args.no_write:
        MotionModel(knots, weights, mean_shape, model.mirror, meta).save(args.out)
        print(f"wrote {args.out}/motion.json and motion.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
