"""Fit the motion model (``icface_video.motion``) on the train clips and measure it on test.

``python -m train.fit_motion [--out icface_video/weights] [--knots 0,1.5,3] [--ridge 30]
[--max-frames 300] [--pose-gain-only]``

1. Face tracks of every video clip of the ``train`` split (``train.face_tracks``: 3D
   landmarks in frame pixels, blendshapes, head angles).
2. Per frame, the canonical shape ``P = R^T (L - c) / s``; per clip, ``P`` and the
   features (AU hinge features, and the head angles as nuisance) are centred on the
   clip's mean, which removes the person's own face shape; then one ridge least squares
   over all clips gives the displacement per feature ``W``.
3. The mirror map: each landmark's nearest neighbour, in the mean canonical shape,
   of its reflection across the midline (pairs kept where they are mutual).
4. The gain per AU on the displacements (:func:`calibrate_gain`): least squares on noisy
   AUs under-estimates the motion (regression dilution: a smile planned at AU12 1.3
   re-read 0.5 at gain 1), so train pairs are rendered at several gains and re-measured.
5. The pose gain per axis (:func:`fit_pose_gain`): MediaPipe's head angles and the turn
   of its landmark cloud differ, so the factors on the angle changes that best predict
   the landmarks of train pairs (2D, all mesh points) are fitted by a coordinate search
   (``--pose-gain-only`` refits just this on an existing motion model).
6. The held-out figure: on the ``test`` clips, pairs of frames of one clip (source =
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

from icface_video.attributes import AU_NAMES, NUM_AUS
from icface_video.driving import most_neutral_frame
from icface_video.mesh_topology import EYE_CONTOURS, INNER_LIPS, NUM_LANDMARKS, NUM_MESH, OUTER_LIPS
from icface_video.motion import MotionModel, canonical_shape, head_frame, hinge_features
from train.face_tracks import ClipTrack, load_tracks

# The displacements are fitted on the raw blendshape scale (v1): landmark motion is close to
# linear in the blendshapes, while the OpenFace calibration (v2) bends each AU with a
# piecewise-linear curve (AU12 tops out near 2). The model converts its v2 inputs to v1.
FIT_SCALE = "v1"

MOUTH = np.array(sorted(set(INNER_LIPS) | set(OUTER_LIPS)))
EYES = np.array(sorted(set(EYE_CONTOURS[0]) | set(EYE_CONTOURS[1])))


def design(track: ClipTrack, knots: tuple[float, ...], scale: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip centred (features, nuisance, canonical shapes) of the frames with a face, AUs on ``scale``."""
    ok = track.success
    attrs = track.attrs_on(scale)[ok]
    p = canonical_shape(track.landmarks[ok], attrs[:, NUM_AUS:]).reshape(int(ok.sum()), -1)
    f = hinge_features(attrs[:, :NUM_AUS], knots)
    pose = attrs[:, NUM_AUS:].astype(np.float64)
    nuis = np.concatenate([pose, pose ** 2], axis=1)
    return f - f.mean(0), nuis - nuis.mean(0), p - p.mean(0)


def fit(tracks: list[ClipTrack], knots: tuple[float, ...], ridge: float, scale: str = FIT_SCALE) -> tuple[np.ndarray, dict]:
    """(F, 478, 3) displacement weights by ridge least squares (nuisance columns unpenalised)."""
    xtx: np.ndarray | None = None
    xty: np.ndarray | None = None
    n = 0
    for t in tracks:
        if t.success.sum() < 10:
            continue
        f, nuis, p = design(t, knots, scale)
        x = np.concatenate([f, nuis], axis=1)
        xtx = x.T @ x if xtx is None else xtx + x.T @ x
        xty = x.T @ p if xty is None else xty + x.T @ p
        n += len(x)
    if xtx is None or xty is None:
        raise ValueError("tracks: no clip with 10 or more frames with a face")
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
    rows: dict[str, list[np.ndarray]] = {"none": [], "pose": [], "model": []}
    parts = {"mouth": MOUTH, "eyes": EYES, "all": np.arange(NUM_MESH)}
    expressive: list[np.ndarray] = []
    for t in tracks:
        ok = np.nonzero(t.success)[0]
        if len(ok) < 10:
            continue
        attrs = t.attrs
        s = most_neutral_frame(attrs, t.success)
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
    out: dict[str, dict[str, float] | int] = {}
    for k, v in rows.items():
        errs = np.concatenate(v)
        figures = {f"{part}": round(float(errs[:, j].mean()), 3) for j, part in enumerate(parts)}
        figures.update({f"{part}_expressive": round(float(errs[expr, j].mean()), 3) for j, part in enumerate(parts)})
        out[k] = figures
    out["pairs"], out["expressive_pairs"] = int(len(expr)), int(expr.sum())
    return out


def calibrate_gain(model: MotionModel, tracks: list[ClipTrack], gains: tuple[float, ...], clips: int = 10,
                   targets: int = 8, log=print) -> tuple[np.ndarray, dict[float, float]]:
    """The displacement gain: render train pairs (source = a clip's most neutral frame, the
    ``targets`` frames whose AUs differ most from it) with the geometric renderer at each
    gain, re-measure the AUs of the outputs, and keep the smallest gain whose mean absolute
    AU error is within 2% of the best one (past it the error barely falls while the
    largest expressions overshoot), per AU: returns (17,) gains and the mean error by
    global gain."""
    from icface_video.eyelids import EyelidConfig, EYELIDS_NAME
    from icface_video.face import FaceAnalyzer
    from icface_video.geo_render import GeometryStage
    from icface_video.model import WEIGHTS_DIR
    from icface_video.attributes import attributes_from_face
    from train.eval_frames import read_frames
    from icface_video.align import landmark_params

    lids = EyelidConfig.load(WEIGHTS_DIR / EYELIDS_NAME)
    rng = np.random.default_rng(0)
    usable = [t for t in tracks if t.success.sum() >= 30]
    chosen = [usable[i] for i in sorted(rng.choice(len(usable), size=min(clips, len(usable)), replace=False))]
    errors: dict[float, list[np.ndarray]] = {g: [] for g in gains}
    with FaceAnalyzer(mode="image") as fa:
        for t in chosen:
            ok = np.nonzero(t.success)[0]
            a = t.attrs
            s = most_neutral_frame(a, t.success)
            change = np.abs(a[ok, :NUM_AUS] - a[s, :NUM_AUS]).sum(1)
            tg = ok[np.argsort(-change)[:targets]]
            frames = read_frames(t.path, np.concatenate([[s], tg]))
            cs = landmark_params(t.landmarks[s])
            for g in gains:
                stage = GeometryStage(MotionModel(model.knots, model.weights, model.mean_shape, model.mirror,
                                                  dict(model.meta, gain=[g] * NUM_AUS)), eyelids=lids)
                for j in tg:
                    ct = landmark_params(t.landmarks[j])
                    pl = np.array([ct[0] - cs[0], ct[1] - cs[1], ct[2] / cs[2]])
                    out = stage.render(frames[s], t.landmarks[s].astype(np.float64), a[s], a[j], pl)
                    face = fa.analyze(out)
                    if face is not None:
                        got = attributes_from_face(face.blendshapes, face.matrix)
                        errors[g].append(np.abs(got[:NUM_AUS] - a[j, :NUM_AUS]))
            log(f"gain calibration: {t.id}")
    # Per AU: its own error as a function of the gain (each AU's reading depends mostly on
    # the landmarks its own displacement moves), smallest gain within 2% of its best.
    per = {g: np.mean(v, axis=0) for g, v in errors.items()}  # (17,) per gain
    out = np.ones(NUM_AUS)
    for k in range(NUM_AUS):
        best = min(per[g][k] for g in gains)
        out[k] = next(g for g in gains if per[g][k] <= best * 1.02 + 1e-3)
    return out, {g: round(float(v.mean()), 4) for g, v in per.items()}


def pose_pairs(tracks: list[ClipTrack], per_clip: int = 12, max_turn_deg: float = 30.0,
               seed: int = 0) -> list[tuple[ClipTrack, int, int]]:
    """Random pairs of frames (source, target) of one clip each, for the pose-gain fit.

    Pairs whose head angles differ by more than ``max_turn_deg`` on any axis are left out:
    in the train clips such pairs are mostly cuts between shots, not head turns.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for t in tracks:
        ok = np.nonzero(t.success)[0]
        if len(ok) < 10:
            continue
        for i, j in zip(rng.choice(ok, per_clip), rng.choice(ok, per_clip)):
            if np.degrees(np.abs(t.attrs[j, NUM_AUS:] - t.attrs[i, NUM_AUS:])).max() <= max_turn_deg:
                pairs.append((t, int(i), int(j)))
    return pairs


def landmark_error(model: MotionModel, pairs: list[tuple[ClipTrack, int, int]]) -> float:
    """Mean 2D error of the 468 mesh landmarks the model predicts for ``pairs`` (the target's
    own centre and scale as placement), in units of the target head's scale."""
    errs = []
    for t, i, j in pairs:
        src, real = t.landmarks[i].astype(np.float64), t.landmarks[j].astype(np.float64)
        cs, ss = head_frame(src)
        ct, st = head_frame(real)
        placement = np.array([[ct[0] - cs[0], ct[1] - cs[1], st / ss]])
        pred = model.target_landmarks(src, t.attrs[i], t.attrs[j][None], placement)[0]
        errs.append(np.linalg.norm(pred[:NUM_MESH, :2] - real[:NUM_MESH, :2], axis=1).mean() / st)
    return float(np.mean(errs))


def fit_pose_gain(model: MotionModel, tracks: list[ClipTrack], grid: np.ndarray = np.arange(0.8, 1.401, 0.025),
                  sweeps: int = 2) -> tuple[np.ndarray, dict[str, float]]:
    """The per-axis pose gain (:attr:`icface_video.motion.MotionModel.pose_gain`): the
    factors on the pitch, yaw and roll changes that best predict where the landmarks of
    train pairs go (:func:`landmark_error`), by coordinate search over ``grid``. Returns
    (3,) gains and the train error before and after."""
    gain = np.ones(3)

    def with_gain(g: np.ndarray) -> MotionModel:
        return MotionModel(model.knots, model.weights, model.mean_shape, model.mirror, dict(model.meta, pose_gain=g.tolist()))

    pairs = pose_pairs(tracks)
    before = landmark_error(with_gain(gain), pairs)
    for _ in range(sweeps):
        for axis in range(3):
            errors = []
            for v in grid:
                g = gain.copy()
                g[axis] = v
                errors.append(landmark_error(with_gain(g), pairs))
            gain[axis] = float(grid[int(np.argmin(errors))])
    gain = np.round(gain, 3)
    return gain, {"pairs": len(pairs), "before": round(before, 5), "after": round(landmark_error(with_gain(gain), pairs), 5)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("icface_video/weights"))
    ap.add_argument("--knots", default="0,1.5,3")
    ap.add_argument("--ridge", type=float, default=30.0)
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--no-write", action="store_true", help="measure only")
    ap.add_argument("--no-gain", action="store_true", help="skip the gain calibration (gain 1)")
    ap.add_argument("--pose-gain-only", action="store_true",
                    help="keep the motion model in --out and fit only its pose gain (step 5)")
    args = ap.parse_args(argv)
    if args.pose_gain_only:
        return _pose_gain_only(args.out, args.max_frames, args.no_write, argv)
    knots = tuple(float(k) for k in args.knots.split(","))
    t0 = time.perf_counter()
    train = load_tracks("train", args.max_frames)
    test = load_tracks("test", args.max_frames)
    weights, stats = fit(train, knots, args.ridge)
    shapes = [canonical_shape(t.landmarks[t.success], t.attrs[t.success, NUM_AUS:]).mean(0) for t in train
              if t.success.sum() >= 10]
    mean_shape = np.mean(shapes, axis=0)
    # the tracks' AUs (train.face_tracks: blendshapes_to_aus) are on the tool's scale
    model = MotionModel(knots, weights, mean_shape, mirror_map(mean_shape), {"au_scale": FIT_SCALE})
    gain = np.ones(NUM_AUS)
    gain_mae: dict[float, float] = {}
    if not args.no_gain:
        gain, gain_mae = calibrate_gain(model, train, (1.0, 1.25, 1.5, 1.75, 2.0, 2.5),
                                        log=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"gains {dict(zip(AU_NAMES, gain.tolist()))} (train AU MAE by global gain: {gain_mae})")
    model = MotionModel(knots, weights, mean_shape, model.mirror, {"au_scale": FIT_SCALE, "gain": gain.tolist()})
    pose_gain, pose_fit = fit_pose_gain(model, train)
    print(f"pose gain (pitch, yaw, roll) {pose_gain.tolist()}; train landmark error {pose_fit}")
    model = MotionModel(knots, weights, mean_shape, model.mirror,
                        {"au_scale": FIT_SCALE, "gain": gain.tolist(), "pose_gain": pose_gain.tolist()})
    result = evaluate(model, test)
    meta = {"fitted_on": "train", "clips": len(train), "frames": stats["frames"], "ridge": args.ridge,
            "gain": gain.tolist(), "gain_train_au_mae": {str(k): v for k, v in gain_mae.items()},
            "pose_gain": pose_gain.tolist(), "pose_gain_fit": pose_fit,
            "au_scale": FIT_SCALE,
            "au_names": list(AU_NAMES), "test_landmark_error_px": result,
            "command": "python -m train.fit_motion " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(json.dumps(result, indent=1))
    print(f"{len(train)} train clips, {stats['frames']} frames; {time.perf_counter() - t0:.1f} s")
    if not args.no_write:
        MotionModel(knots, weights, mean_shape, model.mirror, meta).save(args.out)
        print(f"wrote {args.out}/motion.json and motion.safetensors")
    return 0


def _pose_gain_only(folder: Path, max_frames: int, no_write: bool, argv: list[str] | None) -> int:
    """``--pose-gain-only``: fit the pose gain of the motion model in ``folder``; the test
    landmark errors before and after go into its ``motion.json``."""
    model = MotionModel.load(folder)
    plain = MotionModel(model.knots, model.weights, model.mean_shape, model.mirror,
                        {k: v for k, v in model.meta.items() if k not in ("pose_gain", "pose_gain_fit")})
    train = load_tracks("train", max_frames)
    test = load_tracks("test", max_frames)
    pose_gain, pose_fit = fit_pose_gain(plain, train)
    fitted = MotionModel(model.knots, model.weights, model.mean_shape, model.mirror,
                         dict(plain.meta, pose_gain=pose_gain.tolist(), pose_gain_fit=pose_fit))
    before, after = evaluate(plain, test), evaluate(fitted, test)
    fitted.meta["test_landmark_error_px"] = after
    fitted.meta["test_landmark_error_px_pose_gain_1"] = {k: before[k] for k in ("pose", "model")}
    fitted.meta["pose_gain_command"] = "python -m train.fit_motion " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"pose gain (pitch, yaw, roll) {pose_gain.tolist()}; train landmark error {pose_fit}")
    print("test landmark error px, pose gain 1:", json.dumps({k: before[k] for k in ("pose", "model")}))
    print("test landmark error px, fitted:     ", json.dumps({k: after[k] for k in ("pose", "model")}))
    if not no_write:
        fitted.save(folder)
        print(f"wrote {folder}/motion.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
