"""Quick held-out check of a checkpoint against the no-motion baseline (no face re-extraction).

``python -m train.quickcheck --data data/prepared-128 --model runs/fast/checkpoints/step_X``

Self-reenactment on the ``test`` split of a prepared dataset: source = first detected
frame of each clip, targets = up to ``--per-clip`` other detected frames spread over the
clip. Reports, for the model and for no-motion (output = source):

* ``l1``: mean |output - target| with pixels in [0, 1], whole crop;
* ``mouth_l1`` / ``eyes_l1``: the same inside the mouth / eye boxes of the target landmarks;
* ``landmark_px``: fast design: mean distance (crop pixels) between where the warp fetches
  each target landmark from and the source landmark; no-motion: target-source distance;
* ``*_expr``: the same on "expressive" targets whose mouth (AU25 + AU26), smile (AU12),
  brow (AU01 + AU02) or blink (AU45) attributes differ from the source's by more than 1.5.

It is a training-time sanity check; ``train.evaluate`` re-extracts AUs and pose.
"""

from __future__ import annotations

import json

import click
import numpy as np
import torch

from icface_video.attributes import from_scale
from icface_video.model import ReenactmentModel, SourceCache
from icface_video.tensors import to_uint8
from train.dataset import PairDataset
from train.losses import BROWS, LEFT_EYE, LIPS, RIGHT_EYE, _box_mask

_EXPR_GROUPS = ((14, 15), (8,), (0, 1), (16,))


def collect_pairs(data: PairDataset, per_clip: int) -> list[tuple[int, int, int]]:
    """(clip, source, target) triples: first detected frame vs evenly spread others."""
    triples = []
    for ci, clip in enumerate(data.clips):
        src = int(clip.valid[0])
        others = clip.valid[1:]
        pick = others[np.linspace(0, others.size - 1, min(per_clip, others.size)).round().astype(int)]
        triples += [(ci, src, int(t)) for t in np.unique(pick)]
    return triples


@torch.inference_mode()
def quickcheck(model: ReenactmentModel | None, data: PairDataset, per_clip: int = 24,
               batch: int = 16) -> dict[str, dict[str, float]]:
    """Metrics for ``model`` (None = no-motion only) and no-motion, as nested dicts."""
    triples = collect_pairs(data, per_clip)
    sums: dict[str, dict[str, list[float]]] = {"no-motion": {}, "model": {}}
    caches: dict[int, SourceCache] = {}
    for i in range(0, len(triples), batch):
        chunk = triples[i:i + batch]
        b = data.collate(chunk)
        tgt, src = b["target"], b["source"]
        outs = {"no-motion": src}
        if model is not None:
            frames, grids = [], []
            for j, (ci, _s, _) in enumerate(chunk):
                if ci not in caches:
                    # prepare_source takes the tool's scale; the batch is on the dataset's
                    caches[ci] = model.prepare_source(src[j:j + 1], from_scale(b["source_attrs"][j:j + 1],
                                                                               data.au_scale))
                full = model.generator.render(caches[ci].tensors, b["target_attrs"][j:j + 1])
                frames.append(full["image"].clamp(-1, 1))
                if "grid" in full:
                    grids.append(full["grid"])
            outs["model"] = torch.cat(frames)
            if grids:
                # where the warp fetches each target landmark from, against where it really is
                res = src.shape[-1]
                size = torch.tensor([res, res], dtype=torch.float32)
                u_t = b["target_landmarks"] * (2.0 / size) - 1.0
                fetched = torch.nn.functional.grid_sample(torch.cat(grids).permute(0, 3, 1, 2), u_t.unsqueeze(2),
                                                          align_corners=False).squeeze(3).transpose(1, 2)
                err = ((fetched + 1) * size / 2 - b["source_landmarks"]).norm(dim=-1).mean(dim=1)
                sums["model"].setdefault("landmark_px", []).extend(err.tolist())
            base = (b["target_landmarks"] - b["source_landmarks"]).norm(dim=-1).mean(dim=1)
            sums["no-motion"].setdefault("landmark_px", []).extend(base.tolist())
        res = tgt.shape[-1]
        mouth = _box_mask(b["target_landmarks"], LIPS, res, 0.25)
        eyes = torch.maximum(_box_mask(b["target_landmarks"], LEFT_EYE + BROWS[:5], res, 0.15),
                             _box_mask(b["target_landmarks"], RIGHT_EYE + BROWS[5:], res, 0.15))
        da = (b["target_attrs"] - b["source_attrs"]).abs()
        expr = torch.zeros(len(chunk), dtype=torch.bool)
        for g in _EXPR_GROUPS:
            expr |= da[:, list(g)].sum(dim=1) > 1.5
        for name, out in outs.items():
            err = (out - tgt).abs().mean(dim=1, keepdim=True) / 2  # [0, 1] pixel scale
            per = {"l1": err.mean(dim=(1, 2, 3)),
                   "mouth_l1": (err * mouth).sum(dim=(1, 2, 3)) / mouth.sum(dim=(1, 2, 3)).clamp_min(1),
                   "eyes_l1": (err * eyes).sum(dim=(1, 2, 3)) / eyes.sum(dim=(1, 2, 3)).clamp_min(1)}
            for k, v in per.items():
                sums[name].setdefault(k, []).extend(v.tolist())
                sums[name].setdefault(k + "_expr", []).extend(v[expr].tolist())
    result = {name: {k: float(np.mean(v)) if v else float("nan") for k, v in d.items()}
              for name, d in sums.items() if d}
    result["pairs"] = {"all": len(triples), "expressive": len(sums["no-motion"].get("l1_expr", []))}
    return result


@click.command()
@click.option("--data", required=True, help="Prepared dataset folder.")
@click.option("--model", "model_path", default=None, help="Checkpoint or exported model folder.")
@click.option("--split", default="test", show_default=True)
@click.option("--per-clip", default=24, show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--sheet", default=None, help="Also write a PNG: the most expression-changed pairs, "
              "columns source | target | model | mask.")
def main(data: str, model_path: str | None, split: str, per_clip: int, threads: int, sheet: str | None) -> None:
    """Print held-out L1 / mouth / eye errors of a model and of no-motion as JSON."""
    torch.set_num_threads(threads)
    model = ReenactmentModel.load(model_path) if model_path else None
    res = model.resolution if model else 128
    ds = PairDataset(data, split, res, au_scale=model.au_scale if model else "v1")  # the network's scale
    click.echo(json.dumps(quickcheck(model, ds, per_clip), indent=1))
    if sheet and model is not None:
        write_sheet(model, ds, sheet)


@torch.inference_mode()
def write_sheet(model: ReenactmentModel, data: PairDataset, path: str, rows: int = 10) -> None:
    """PNG of the ``rows`` pairs with the largest AU change (one per clip first)."""
    from PIL import Image

    triples = collect_pairs(data, 48)
    b = data.collate(triples)
    change = (b["target_attrs"][:, :17] - b["source_attrs"][:, :17]).abs().sum(dim=1)
    order, seen = [], set()
    for i in change.argsort(descending=True).tolist():
        if triples[i][0] not in seen:
            order.append(i)
            seen.add(triples[i][0])
        if len(order) == rows:
            break
    lines = []
    for i in order:
        cache = model.prepare_source(b["source"][i:i + 1], from_scale(b["source_attrs"][i:i + 1], data.au_scale))
        full = model.generator.render(cache.tensors, b["target_attrs"][i:i + 1])
        cols = [b["source"][i:i + 1], b["target"][i:i + 1], full["image"].clamp(-1, 1)]
        if "mask" in full:
            cols.append(full["mask"].expand(-1, 3, -1, -1) * 2 - 1)
        lines.append(torch.cat(cols, dim=3))
    img = to_uint8(torch.cat(lines, dim=2))[0]
    Image.fromarray(img).save(path)


if __name__ == "__main__":
    main()
