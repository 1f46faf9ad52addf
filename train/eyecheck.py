"""Closed-eye check: do the model's eyes close when the driver's do?

``python -m train.eyecheck --data data/prepared-128 [--split test] NAME=MODEL ...``

For every clip of the split that blinks, the source is its most open-eyed frame (lowest
AU45) and the targets are up to ``--per-clip`` frames with AU45 above ``--closed``; each
model renders the source with the target's attributes, and AU45 is re-extracted from the
128 px output enlarged to 256 px (bicubic). Prints the mean target AU45, each model's
mean output AU45 and its mean absolute error. A model whose eyes stay open reads near
the source's AU45. A model folder with an ``eyelids.json`` renders with its eyelid warp
(the source's stored landmarks are passed); ``NAME=MODEL:no-eyelids`` renders without it,
``NAME=MODEL:eyelids=FILE`` with that file (a training checkpoint has none of its own).
``--sheet PNG`` also writes a picture: one row per clip (its first closed-eye pair),
columns source | target | each model's output, enlarged 2x.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from icface_video.face import FaceAnalyzer
from icface_video.model import ReenactmentModel
from train.dataset import AU45, PairDataset
from train.eval_methods import parse_model_spec, resolve_checkpoint
from train.fit_eyelids import render_measured


def closed_eye_pairs(ds: PairDataset, closed: float, per_clip: int) -> list[tuple[int, int, int]]:
    """(clip, source frame, target frame): most open-eyed source, closed-eye targets."""
    pairs = []
    for ci, clip in enumerate(ds.clips):
        au45 = clip.attrs[clip.valid, AU45]
        if au45.max() <= closed:
            continue
        source = int(clip.valid[np.argmin(au45)])
        pairs += [(ci, source, int(t)) for t in clip.valid[au45 > closed][:per_clip]]
    return pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.eyecheck", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset folder")
    ap.add_argument("--split", default="test")
    ap.add_argument("--closed", type=float, default=2.5, help="AU45 above which a target's eyes count as closed")
    ap.add_argument("--per-clip", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sheet", help="also write a PNG: source | target | each model, one row per clip")
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL", help="model or checkpoint folders")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep:
            ap.error(f"{item}: expected NAME=MODEL")
        try:
            path, eyelids = parse_model_spec(path, item)
        except ValueError as exc:
            ap.error(str(exc))
        models[name] = ReenactmentModel.load(resolve_checkpoint(Path(path)), eyelids=eyelids)
    ds = PairDataset(args.data, args.split)
    pairs = closed_eye_pairs(ds, args.closed, args.per_clip)
    if not pairs:
        ap.error(f"{args.data}: no {args.split!r} clip has frames with AU45 > {args.closed}")
    targets = np.array([ds.clips[c].attrs[t, AU45] for c, _, t in pairs])
    print(f"{len(pairs)} pairs from {len({c for c, _, _ in pairs})} clips; target AU45 {targets.mean():.2f}, "
          f"source AU45 {np.mean([ds.clips[c].attrs[s, AU45] for c, s, _ in pairs]):.2f}")
    shown = {c: i for i, (c, _, _) in reversed(list(enumerate(pairs)))}  # clip -> its first pair
    columns: dict[int, list[np.ndarray]] = {i: [ds.clips[c].crops[s], ds.clips[c].crops[t]]
                                            for i, (c, s, t) in enumerate(pairs) if shown[c] == i}
    with FaceAnalyzer(mode="image") as fa:
        for name, model in models.items():
            found = []
            for i, (c, s, t) in enumerate(pairs):
                img, au45 = render_measured(model, ds.clips[c], s, t, fa)
                if i in columns:
                    columns[i].append(img)
                found.append(au45)
            got = np.array(found)
            print(f"{name}: output AU45 {np.nanmean(got):.2f}, MAE {np.nanmean(np.abs(got - targets)):.2f}, "
                  f"no face {int(np.isnan(got).sum())}")
    if args.sheet:
        rows = [np.concatenate([cv2.resize(im, (256, 256), interpolation=cv2.INTER_CUBIC) for im in cols], axis=1)
                for cols in columns.values()]
        cv2.imwrite(args.sheet, cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
        print(f"sheet: {args.sheet} (source | target | {' | '.join(models)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
