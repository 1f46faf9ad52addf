"""Evaluate reenactment methods on held-out clips: self- and cross-reenactment metrics.

Usage::

    python -m train.evaluate --data data/prepared-128 --split test \\
        [--method NAME=CKPT ...] [--max-frames 40] [--max-clips N] \\
        --json out/eval.json [--markdown out/eval.md] [--sheet out/eval.png]

``--data`` is a prepared dataset folder (``index.json``, see :mod:`train.prepare`), a
manifest (``../shared/data/faces/manifest.csv``, clips of ``--split``), or any folder of
video clips (each clip one person; ``id/video/clip.mp4`` or one folder per person). The
last two are prepared once with :func:`train.prepare.prepare_clip` into a cache folder
(``--cache``, default ``$ICFACE_CACHE/eval-prepared/...``) and reused on later runs.

Methods: ``--method NAME=CKPT`` (repeatable; an exported model folder, a training
checkpoint folder, or a checkpoints folder with ``latest.json``; ``NAME=CKPT:no-eyelids``
renders without the folder's eyelid warp, ``icface_video/eyelids.py``, and
``NAME=CKPT:eyelids=FILE`` with that eyelid file). Without ``--method`` the
shipped default model is used (when it is missing this is said and only the baseline
runs). The ``no-motion`` baseline (output = the source frame) is always included.

``--full-frames`` runs the full-frame evaluation instead (:mod:`train.eval_frames`: the
video the user gets, paste-back and the geometric renderer included), with its arguments.

Protocol (``train/README.md``, section "Evaluation", says more):

* self-reenactment: per clip, source = first frame with a face; targets = up to
  ``--max-frames`` other frames with a face, evenly spaced; each target's own stored
  attributes drive the method; the output is compared with the real target frame.
* cross-reenactment: source = a clip's source frame; driver = the frames of the next clip
  (sorted by id, cyclic) of a different person; absolute driver attributes (the driver's
  own values, not offsets from its first frame) drive the method and are the reference
  for the AU and pose errors; identity is measured against the source.
* attributes are re-extracted from outputs with the project's :class:`FaceAnalyzer` on the
  crop upscaled to 256 px (one video-mode analyzer per sequence of outputs); the noise
  floor runs the same path on the real target crops against their stored attributes.

Modules: :mod:`train.lpips` (LPIPS), :mod:`train.identity` (SFace identity),
:mod:`train.remeasure` (attributes read back from crops), :mod:`train.eval_data` (``--data``
resolution, clips, driver pairing), :mod:`train.eval_methods` (``--method`` specs),
:mod:`train.eval_metrics` (image metrics, tallies), :mod:`train.eval_sheet` (contact sheet);
this module runs both protocols and is the command line.
"""


from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from train.eval_data import Clip, load_clip, pair_drivers, resolve_data, select_entries
from train.eval_methods import DEFAULT_NAME, NO_MOTION, Method, load_methods, parse_model_spec, resolve_checkpoint
from train.eval_metrics import _AU45, CLOSED_EYES, CROSS_KEYS, SELF_KEYS, Tally, image_metrics, pose_error_deg
from train.eval_sheet import _AU, build_sheet, pick_sheet_rows
from train.identity import IdentityEmbedder, five_points
from train.lpips import AlexLPIPS
from train.remeasure import ANALYSIS_SIZE, AttributeReader, scale_points, upscale

# The pieces live in the modules above (one concern each); their names stay importable from
# here (train.eval_frames, train.eyecheck and older scripts import them from train.evaluate).
__all__ = [
    "ANALYSIS_SIZE", "CLOSED_EYES", "CROSS_KEYS", "DEFAULT_NAME", "NO_MOTION", "SELF_KEYS", "_AU", "_AU45",
    "AlexLPIPS", "AttributeReader", "Clip", "IdentityEmbedder", "Method", "Tally", "build_sheet", "evaluate",
    "five_points", "image_metrics", "load_clip", "load_methods", "main", "markdown_table", "pair_drivers",
    "parse_model_spec", "pick_sheet_rows", "pose_error_deg", "resolve_checkpoint", "resolve_data",
    "scale_points", "select_entries", "upscale",
]


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate(clips: list[Clip], methods: list[Method], log, sheet: bool = True,
             lpips: AlexLPIPS | None = None, embedder: IdentityEmbedder | None = None) -> dict[str, Any]:
    """Run both protocols for every method; returns the result dict (and sheet rows)."""
    lpips = lpips or AlexLPIPS()
    embedder = embedder or IdentityEmbedder()
    reader = AttributeReader()
    size = reader.size
    drivers = pair_drivers(clips)
    by_id = {c.id: c for c in clips}
    sheet_rows = pick_sheet_rows(clips, drivers) if sheet else []
    want = {(proto, cid, j): label for label, proto, cid, j in sheet_rows}
    sheet_imgs: dict[tuple[str, str, int], dict[str, np.ndarray]] = {k: {} for k in want}

    noise = Tally()
    # identity of real frames: same clip vs source, other person vs source
    ref_same: list[float] = []
    ref_diff: list[float] = []
    tallies = {m.name: {"self": Tally(), "cross": Tally()} for m in methods}
    timings = {m.name: 0.0 for m in methods}

    real_cache: dict[str, dict[str, Any]] = {}
    for c in clips:  # real frames: embeddings and the noise floor
        r = c.resolution
        big = upscale(c.crops)
        lm = scale_points(c.landmarks, r, size)
        embs = [embedder.embed(big[i], lm[i]) for i in range(len(big))]
        found, _ = reader.sequence(c.crops[1:], c.times[1:])
        noise.add_attrs(found, c.attrs[1:])
        real_cache[c.id] = {"embs": embs, "lm": lm}
    for c in clips:
        e = real_cache[c.id]["embs"]
        if e[0] is not None:
            ref_same.extend(float(e[0] @ t) for t in e[1:] if t is not None)
            driver_id = drivers[c.id]
            if driver_id is not None:
                ref_diff.extend(float(e[0] @ t) for t in real_cache[driver_id]["embs"][1:] if t is not None)

    def identity(outs: np.ndarray, found_lm: np.ndarray, fallback_lm: np.ndarray, refs: list) -> list[float]:
        big = upscale(outs)
        sims = []
        for i in range(len(big)):
            lm = found_lm[i] if np.isfinite(found_lm[i]).all() else fallback_lm[i]
            emb = embedder.embed(big[i], lm)
            if emb is not None and refs[i] is not None:
                sims.append(float(emb @ refs[i]))
        return sims

    for n, c in enumerate(clips, 1):
        start = time.time()
        src, src_attrs = c.crops[0], c.attrs[0]
        cache = real_cache[c.id]
        driver_id = drivers[c.id]
        d = by_id[driver_id] if driver_id is not None else None
        for m in methods:
            t0 = time.time()
            # self-reenactment
            outs = m.render(src, src_attrs, c.attrs[1:], c.landmarks[0])
            timings[m.name] += time.time() - t0
            tally = tallies[m.name]["self"]
            for k, v in image_metrics(outs, c.crops[1:], lpips).items():
                tally.add(k, v)
            found, flm = reader.sequence(outs, c.times[1:])
            tally.add_attrs(found, c.attrs[1:])
            tally.add("identity", identity(outs, flm, cache["lm"][1:], cache["embs"][1:]))
            for j in range(len(outs)):
                if ("self", c.id, j) in want:
                    sheet_imgs[("self", c.id, j)][m.name] = outs[j]
            # cross-reenactment (absolute driver attributes)
            if d is not None:
                t0 = time.time()
                outs = m.render(src, src_attrs, d.attrs[1:], c.landmarks[0])
                timings[m.name] += time.time() - t0
                tally = tallies[m.name]["cross"]
                found, flm = reader.sequence(outs, d.times[1:])
                tally.add_attrs(found, d.attrs[1:])
                src_lm = np.repeat(cache["lm"][:1], len(outs), axis=0)
                tally.add("identity", identity(outs, flm, src_lm, [cache["embs"][0]] * len(outs)))
                for j in range(len(outs)):
                    if ("cross", c.id, j) in want:
                        sheet_imgs[("cross", c.id, j)][m.name] = outs[j]
        log(f"[{n}/{len(clips)}] {c.id}: {len(c.frames)} frames, driver {d.id if d else '-'} "
            f"({time.time() - start:.1f} s)")

    result: dict[str, Any] = {
        "noise_floor": {
            **{k: v for k, v in noise.summary(()).items()},
            "identity_same_clip_real": float(np.mean(ref_same)) if ref_same else None,
            "identity_cross_pair_real": float(np.mean(ref_diff)) if ref_diff else None,
        },
        "methods": {},
    }
    for m in methods:
        total = tallies[m.name]["self"].frames + tallies[m.name]["cross"].frames
        result["methods"][m.name] = {
            "self": tallies[m.name]["self"].summary(SELF_KEYS),
            "cross": tallies[m.name]["cross"].summary(CROSS_KEYS) if any(drivers.values()) else None,
            "checkpoint": m.path,
            # the eyelid warp the model rendered with (icface_video/eyelids.py), or None
            "eyelid_gain": getattr(getattr(m.model, "eyelids", None), "gain", None),
            # wall time of prepare_source + render + uint8 conversion, per output frame
            "render_ms_per_frame": 1000.0 * timings[m.name] / total if total and m.model is not None else None,
        }
    result["clips"] = [{"id": c.id, "identity": c.identity, "source_frame": c.src,
                        "frames": [int(f) for f in c.frames], "driver": drivers[c.id]} for c in clips]
    rows = []
    for label, proto, cid, j in sheet_rows:
        c = by_id[cid]
        driver_id = cid if proto == "self" else drivers[cid]
        assert driver_id is not None  # cross rows are picked only for clips with a driver
        drv = by_id[driver_id]
        a = drv.attrs[1 + j]
        rows.append({"label": label, "clip": cid if proto == "self" else f"{cid} <- {drv.id}",
                     "source": c.crops[0], "target": drv.crops[1 + j],
                     "outputs": sheet_imgs[(proto, cid, j)],
                     "info": [f"AU12 {a[_AU['AU12']]:.1f} AU26 {a[_AU['AU26']]:.1f}",
                              f"AU45 {a[_AU['AU45']]:.1f} AU01 {a[_AU['AU01']]:.1f}",
                              "yaw {:+.0f} pitch {:+.0f}".format(*np.degrees(a[[18, 17]]))]})
    result["_sheet_rows"] = rows
    return result


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_table(result: dict[str, Any]) -> str:
    nf = result["noise_floor"]
    lines = [
        "| method | self L1 ↓ | PSNR ↑ | SSIM ↑ | LPIPS ↓ | ID ↑ | AU MAE ↓ | pose ° ↓ | no face "
        "| cross ID ↑ | AU MAE ↓ | pose ° ↓ | no face |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in result["methods"].items():
        s, c = m["self"], m["cross"] or {}
        lines.append(
            f"| {name} | {_fmt(s['l1'], 4)} | {_fmt(s['psnr'], 2)} | {_fmt(s['ssim'])} | {_fmt(s['lpips'])} "
            f"| {_fmt(s['identity'])} | {_fmt(s['au_mae'])} | {_fmt(s['pose_err_deg'], 2)} "
            f"| {s['no_face']}/{s['frames']} | {_fmt(c.get('identity'))} | {_fmt(c.get('au_mae'))} "
            f"| {_fmt(c.get('pose_err_deg'), 2)} | {c.get('no_face', '-')}/{c.get('frames', '-')} |")
    lines.append(
        f"| extractor noise floor (real crops) | | | | | | {_fmt(nf['au_mae'])} | {_fmt(nf['pose_err_deg'], 2)} "
        f"| {nf['no_face']}/{nf['frames']} | | | | |")
    info = result.get("run", {})
    lines += [
        "",
        f"{info.get('clips', '?')} clips ({info.get('people', '?')} people), up to {info.get('max_frames', '?')} "
        f"target frames per clip, split `{info.get('split', '')}`; wall time {info.get('seconds', 0):.0f} s. "
        "Cross-reenactment uses the driver's absolute attributes. Identity of real frames to their "
        f"clip's source: {_fmt(nf.get('identity_same_clip_real'))}; to another person's source: "
        f"{_fmt(nf.get('identity_cross_pair_real'))}.",
        "",
        f"Closed-eye targets (self, reference AU45 > {CLOSED_EYES}): "
        + "; ".join(f"{name} AU45 {_fmt(m['self']['closed_eyes']['output_au45'], 2)} "
                    f"(reference {_fmt(m['self']['closed_eyes']['reference_au45'], 2)}, "
                    f"{m['self']['closed_eyes']['frames']} frames)"
                    for name, m in result["methods"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if "--full-frames" in args_in:  # the full-frame protocol lives in train.eval_frames
        from train.eval_frames import main as full_frames

        return full_frames([a for a in args_in if a != "--full-frames"])
    from icface_video.runtime import tune_allocator

    tune_allocator()
    ap = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="prepared dataset folder (index.json), manifest.csv, or a folder of clips")
    ap.add_argument("--split", default="test", help="split to evaluate (manifest and prepared data)")
    ap.add_argument("--method", action="append", default=[], metavar="NAME=CKPT",
                    help="a model or checkpoint folder to evaluate (repeatable); default: the shipped model")
    ap.add_argument("--max-frames", type=int, default=40, help="target frames per clip (evenly spaced)")
    ap.add_argument("--max-clips", type=int, default=None, help="evaluate at most this many clips")
    ap.add_argument("--json", type=Path, required=True, help="write the results here")
    ap.add_argument("--markdown", type=Path, help="write a markdown table here")
    ap.add_argument("--sheet", type=Path, help="write a contact sheet PNG here")
    ap.add_argument("--cache", type=Path, help="where manifest/folder data is prepared (default: user cache)")
    ap.add_argument("--size", type=int, default=128, help="crop side when preparing a manifest or folder")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/OpenCV threads (1 avoids oversubscription when the machine is busy)")
    ap.add_argument("--device", default="cpu", help="torch device for the models")
    args = ap.parse_args(argv)
    if args.max_frames < 1:
        ap.error("--max-frames must be >= 1")
    if args.max_clips is not None and args.max_clips < 1:
        ap.error("--max-clips must be >= 1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    old_threads, old_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(max(1, args.threads))
    cv2.setNumThreads(max(1, args.threads))
    start = time.time()
    try:
        from icface_video.errors import IcfaceError

        try:
            lpips, embedder = AlexLPIPS(), IdentityEmbedder()
            methods, notes = load_methods(args.method, args.device, log)
            folder, entries, skipped = resolve_data(args.data, args.split, args.max_clips, args.cache, args.size, log)
        except (IcfaceError, OSError, ValueError, pickle.UnpicklingError) as exc:
            log(f"train.evaluate: error: {exc}")
            return 2
        clips, unusable = [], []
        for e in entries:
            c = load_clip(folder, e, args.max_frames)
            (clips.append(c) if c is not None else unusable.append(e["id"]))
        if not clips:
            log(f"train.evaluate: error: no usable clips in {args.data} (split {args.split!r})")
            return 2
        log(f"evaluating {len(clips)} clips x {len(methods)} methods ({', '.join(m.name for m in methods)})")
        result = evaluate(clips, methods, log, sheet=args.sheet is not None, lpips=lpips, embedder=embedder)
        rows = result.pop("_sheet_rows")
        result["run"] = {
            "data": str(args.data), "prepared": str(folder), "split": args.split, "clips": len(clips),
            "people": len({c.identity for c in clips}), "max_frames": args.max_frames,
            "threads": args.threads, "seconds": time.time() - start,
            "unusable_clips": unusable, "skipped_clips": skipped, "notes": notes,
            "cross_attributes": "absolute (the driver's own values)",
            "analysis": f"FaceAnalyzer (video mode, one per sequence) on crops upscaled to {ANALYSIS_SIZE} px",
        }
        for path in (args.json, args.markdown, args.sheet):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_clean(result), indent=1))
        table = markdown_table(result)
        if args.markdown:
            args.markdown.write_text(table)
        if args.sheet and rows:
            names = [m.name for m in methods]
            sheet = build_sheet(rows, names, clips[0].resolution)
            cv2.imwrite(str(args.sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(table)
        log(f"done in {time.time() - start:.0f} s: {args.json}")
        return 0
    finally:
        torch.set_num_threads(old_threads)
        cv2.setNumThreads(old_cv)


if __name__ == "__main__":
    sys.exit(main())
