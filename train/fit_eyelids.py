"""Fit the eyelid warp (``icface_video.eyelids``) on a prepared dataset and write ``eyelids.json``.

``python -m train.fit_eyelids --data data/prepared-128 [--split train] [--model icface_video/weights]
--out icface_video/weights/eyelids.json``

Three fits, all on the ``--split`` clips (never the test split for the shipped file):

1. the openness curve: per clip and eye, the lid opening (eye widths) over its open-eye
   opening (the clip's 90th percentile), median per AU45 bin of width 0.5, made
   non-increasing;
2. the lid motion: per lid landmark, least squares of its displacement in the eye frame
   on the change of the opening, over random pairs of frames of one clip, with pitch and
   yaw changes as nuisance regressors (so a nod's foreshortening is not read as a blink).
   With ``--ring-follow F`` (default 1) the ring above the upper lid moves F times as its
   contour point instead of by its own fit (0.4x): the lash band then slides down whole
   instead of being stretched, which keeps the lash line and reads as more closed (train
   split, ``train.eyecheck --per-clip 2``: AU45 2.40 against 2.11 with the fitted ring);
3. the gain: for blinking clips, the most open-eyed frame is rendered by ``--model`` with
   the eyelid warp toward frames at several AU45 levels; AU45 is re-extracted from each
   output (enlarged to 256 px). The kept gain is the smallest whose mean absolute AU45
   error is within 5% of the best one: past it the error barely falls (a warped lid reads
   at most about AU45 2 however far it is pulled) while half-closed targets snap shut.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from icface_video.attributes import POSE_NAMES, attributes_from_face, from_scale, to_scale
from icface_video.eyelids import EyelidConfig, eye_frames, eye_opening
from icface_video.face import FaceAnalyzer
from icface_video.mesh_topology import EYES
from icface_video.model import ReenactmentModel
from icface_video.tensors import to_tensor, to_uint8
from train.dataset import AU45, NUM_AUS, PairDataset
from train.remeasure import upscale

_PITCH, _YAW = NUM_AUS + POSE_NAMES.index("pitch"), NUM_AUS + POSE_NAMES.index("yaw")


def fit_openness(ds: PairDataset, bin_width: float = 0.5, min_count: int = 30) -> tuple[list[float], list[float], list[int]]:
    """AU45 knots, openness at each knot, frames per bin (see the module docstring, step 1)."""
    ratios, au = [], []
    for clip in ds.clips:
        lm = torch.from_numpy(clip.landmarks[clip.valid]).double()
        for eye in EYES:
            o = eye_opening(lm, eye).numpy()
            ratios.append(o / max(np.percentile(o, 90), 1e-6))
            au.append(clip.attrs[clip.valid, AU45])
    r, a = np.concatenate(ratios), np.concatenate(au)
    knots, values, counts = [], [], []
    for lo in np.arange(0.0, 5.0, bin_width):
        m = (a >= lo) & (a < lo + bin_width)
        if m.sum() >= min_count:
            knots.append(float(lo + bin_width / 2))
            values.append(float(np.median(r[m])))
            counts.append(int(m.sum()) // len(EYES))
    if not values:
        return [], [], []
    values = np.minimum.accumulate(np.minimum(values, 1.0)).clip(0.0, 1.0).tolist()
    knots = [0.0] + knots + [5.0]
    values = [values[0]] + values + [values[-1]]
    return knots, [round(v, 4) for v in values], counts


def fit_motion(ds: PairDataset, pairs_per_clip: int,
               rng: np.random.Generator) -> tuple[list[dict[int, tuple[float, float]]], list[float]]:
    """Per eye ``{landmark: (kx, ky)}`` and the R^2 of the y fit over the contour (step 2)."""
    motion, r2s = [], []
    for eye in EYES:
        idx = list(eye.moved)
        xs, ys = [], []
        for clip in ds.clips:
            lm = torch.from_numpy(clip.landmarks[clip.valid]).double()
            at = clip.attrs[clip.valid]
            c, x, y, w = eye_frames(lm, eye)
            d = lm[:, idx] - c[:, None]
            loc = torch.stack([(d * x[:, None]).sum(-1), (d * y[:, None]).sum(-1)], -1) / w[:, None]
            o = eye_opening(lm, eye).numpy()
            n = len(o)
            i, j = rng.integers(n, size=pairs_per_clip), rng.integers(n, size=pairs_per_clip)
            xs.append(np.stack([o[j] - o[i], at[j, _PITCH] - at[i, _PITCH], at[j, _YAW] - at[i, _YAW]], 1))
            ys.append((loc[j] - loc[i]).numpy().reshape(pairs_per_clip, -1))
        X, Y = np.concatenate(xs), np.concatenate(ys)
        coef, *_ = np.linalg.lstsq(X, Y, rcond=None)
        k = coef[0].reshape(len(idx), 2)
        resid = Y - X @ coef
        contour = [2 * q + 1 for q in range(len(eye.upper) + len(eye.lower))]  # y columns of the contour
        r2s.append(float(1 - (resid[:, contour] ** 2).sum() / ((Y[:, contour] - Y[:, contour].mean(0)) ** 2).sum()))
        motion.append({int(q): (round(float(k[n, 0]), 4), round(float(k[n, 1]), 4)) for n, q in enumerate(idx)})
    return motion, r2s


def ring_follows_lid(motion: dict[int, tuple[float, float]], eye, factor: float) -> dict[int, tuple[float, float]]:
    """``motion`` with each ring landmark moving ``factor`` times as its upper-lid contour point."""
    out = dict(motion)
    for r, u in zip(eye.ring, eye.upper):
        out[r] = (round(factor * motion[u][0], 4), round(factor * motion[u][1], 4))
    return out


def calibration_pairs(ds: PairDataset, levels: tuple[float, ...], max_clips: int) -> list[tuple[int, int, int]]:
    """(clip, most open-eyed source, target nearest each AU45 level) for clips that blink."""
    pairs = []
    for ci, clip in enumerate(ds.clips):
        au = clip.attrs[clip.valid, AU45]
        if au.max() <= 2.5:
            continue
        s = int(clip.valid[np.argmin(au)])
        targets = {int(clip.valid[np.argmin(np.abs(au - lv))]) for lv in levels}
        pairs += [(ci, s, t) for t in sorted(targets) if t != s]
        if len({c for c, _, _ in pairs}) >= max_clips:
            break
    return pairs


def render_measured(model: ReenactmentModel, clip, s: int, t: int, fa: FaceAnalyzer) -> tuple[np.ndarray, float]:
    """Clip frame ``s`` rendered by ``model`` with frame ``t``'s attributes, and its AU45 re-measured.

    Convention:
        clip: a :class:`train.dataset.PairDataset` clip (crops (N, R, R, 3) uint8,
            attributes on the dataset's scale v1, landmarks (N, 478, 2) crop pixels).
        fa: an image-mode :class:`FaceAnalyzer`; the crop is enlarged to
            :data:`train.remeasure.ANALYSIS_SIZE` px first (:func:`train.remeasure.upscale`).
        returns: the (R, R, 3) uint8 render and its AU45 on the scale v1 (NaN: no face found).
    """
    cache = model.prepare_source(to_tensor(clip.crops[s]), torch.from_numpy(from_scale(clip.attrs[s], "v1"))[None],
                                 torch.from_numpy(clip.landmarks[s])[None])
    img = to_uint8(model.render(cache, torch.from_numpy(from_scale(clip.attrs[t], "v1"))[None]).cpu())[0]
    face = fa.analyze(upscale(img[None])[0])
    # measured on the dataset's (eyelids') scale v1
    return img, np.nan if face is None else float(to_scale(attributes_from_face(face.blendshapes, face.matrix), "v1")[AU45])


def calibrate_gain(ds: PairDataset, base: EyelidConfig, model: ReenactmentModel, pairs, gains) -> list[dict]:
    """Mean |re-extracted AU45 - target AU45| of the model's outputs for each gain (step 3)."""
    rows = []
    targets = np.array([ds.clips[c].attrs[t, AU45] for c, _, t in pairs])
    with FaceAnalyzer(mode="image") as fa:
        for g in gains:
            model.eyelids = EyelidConfig(base.au45, base.openness, base.motion, gain=g)
            found = np.array([render_measured(model, ds.clips[c], s, t, fa)[1] for c, s, t in pairs])
            rows.append({"gain": g, "au45_mae": round(float(np.nanmean(np.abs(found - targets))), 4),
                         "au45_mean": round(float(np.nanmean(found)), 4), "no_face": int(np.isnan(found).sum())})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.fit_eyelids", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument("--split", default="train")
    ap.add_argument("--model", default=None, help="model folder for the gain calibration (default: the shipped one)")
    ap.add_argument("--out", required=True, help="eyelids.json to write")
    ap.add_argument("--gains", default="1.0,1.3,1.6,2.0,2.5,3.0")
    ap.add_argument("--calibration-clips", type=int, default=40)
    ap.add_argument("--pairs-per-clip", type=int, default=300)
    ap.add_argument("--ring-follow", type=float, default=1.0,
                    help="the ring above the upper lid moves this times its contour point (0 = its own fit)")
    ap.add_argument("--min-bin-frames", type=int, default=30, help="frames an AU45 bin needs to become a knot")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    ds = PairDataset(args.data, args.split)
    knots, values, counts = fit_openness(ds, min_count=args.min_bin_frames)
    if len(knots) < 4:
        ap.error(f"{args.data}: too few frames per AU45 bin to fit the openness curve (lower --min-bin-frames)")
    print(f"{len(ds.clips)} {args.split} clips, {ds.num_frames} frames")
    print("openness: " + ", ".join(f"AU45 {a:.2f} -> {v:.3f}" for a, v in zip(knots, values)))
    motion, r2 = fit_motion(ds, args.pairs_per_clip, np.random.default_rng(args.seed))
    print(f"lid motion fitted; contour R^2 {r2[0]:.2f} / {r2[1]:.2f}")
    if args.ring_follow > 0:
        motion = [ring_follows_lid(m, eye, args.ring_follow) for m, eye in zip(motion, EYES)]
    left, right = motion  # one per eye of EYES
    base = EyelidConfig(tuple(knots), tuple(values), (left, right))
    model = ReenactmentModel.load(args.model, eyelids=False)
    pairs = calibration_pairs(ds, (1.0, 2.0, 2.5, 3.0, 3.5, 4.0), args.calibration_clips)
    gains = [float(g) for g in args.gains.split(",")]
    rows = calibrate_gain(ds, base, model, pairs, gains)
    for row in rows:
        print(f"gain {row['gain']:.2f}: AU45 MAE {row['au45_mae']:.3f}, mean {row['au45_mean']:.2f}, no face {row['no_face']}")
    lowest = min(r["au45_mae"] for r in rows)
    best = min((r for r in rows if r["au45_mae"] <= 1.05 * lowest), key=lambda r: r["gain"])
    targets = np.array([ds.clips[c].attrs[t, AU45] for c, _, t in pairs])
    config = EyelidConfig(base.au45, base.openness, base.motion, gain=best["gain"], provenance={
        "data": str(args.data), "split": args.split, "clips": len(ds.clips), "frames": ds.num_frames,
        "frames_per_bin": counts, "contour_r2": [round(x, 3) for x in r2], "ring_follow": args.ring_follow,
        "calibration": {"model": args.model or "icface_video/weights", "pairs": len(pairs),
                        "clips": len({c for c, _, _ in pairs}), "target_au45_mean": round(float(targets.mean()), 3),
                        "gains": rows},
        "command": "python -m train.fit_eyelids " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seconds": round(time.time() - t0, 1)})
    config.save(args.out)
    print(f"gain {best['gain']} -> {args.out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
