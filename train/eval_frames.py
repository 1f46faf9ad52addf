"""Full-frame evaluation: the video the user gets (paste-back included), not 128 px crops.

``python -m train.eval_frames [--split test] [--targets 20] [--cross-frames 60]
[--method NAME=SPEC ...] [--json F] [--markdown F] [--sheet F.png]``

(also ``python -m train.evaluate --full-frames ...``, which passes its arguments here).

Methods (``--method NAME=SPEC``, repeatable; default: ``geometry`` and ``network`` with the
shipped model): ``geometry[:MODEL]`` (the motion model + geometric renderer of MODEL's
folder, with its eyelid warp when it has one: the stage ``reenact`` uses),
``geometry-no-eyelids[:MODEL]``, ``network[:MODEL]`` (the ICface generator pasted back at full resolution with its
eyelid warp: the previous default), ``network-no-eyelids[:MODEL]``. ``no-motion``
(output = the source frame) and ``floor`` (the real target frame itself, re-measured) are
always included.

Protocol, on the video clips of ``--split`` (face tracks from :mod:`train.face_tracks`):

* **self-reenactment**: per clip, source = its most neutral frame; targets = ``--targets``
  frames evenly spaced; each target's measured attributes drive the method in absolute
  mode (geometry: with the target's head position and size in the frame, as ``reenact
  --absolute`` does for a photo driven by a video). Compared with the real target frame:
  L1 inside the face region (the union of the source's and the target's face ovals, grown
  by 10%, pixels 0..1), AU MAE and pose error (degrees) re-extracted from the full output
  frame (one video-mode analyzer per sequence), identity (SFace cosine) to the real frame,
  and the output's AU45 where the real eyes are shut (AU45 over 2.5 on the raw v1 scale).
* **cross-reenactment**: source = a clip's neutral frame; driver = ``--cross-frames``
  consecutive frames of the next clip of another person, relative mode (the source's
  values plus the driver's change from its most neutral frame, as ``reenact`` does for a
  photo); identity to the source; over time, the correlation of the output's re-extracted
  AUs with the planned ones (AUs whose planned values move: standard deviation > 0.3) and
  of yaw and pitch.
* the same self figures for the clips with the largest yaw range (``--wide 3``);
* the **floor**: the real target frames, shifted by half a pixel and JPEG-compressed
  (quality 90), re-measured the same way against their stored attributes: the
  extractor's noise on full frames (its L1 is that of the resampling, not zero).
* a contact sheet (``--sheet``): the 6 largest head turns and the 6 widest mouth openings
  of the self pairs, face region at full resolution: source | methods | real.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from icface_video.align import landmark_params
from icface_video.attributes import AU_NAMES, NUM_AUS, attributes_from_face, clip_aus, from_scale
from icface_video.driving import most_neutral_frame
from icface_video.paste import grown_oval
from train.eval_metrics import CLOSED_EYES, pose_error_deg
from train.face_tracks import ClipTrack, load_tracks
from train.identity import IdentityEmbedder

_AU25, _AU26, _AU45 = AU_NAMES.index("AU25"), AU_NAMES.index("AU26"), AU_NAMES.index("AU45")
# Eyes count as shut where the target's AU45 is over the crop evaluation's CLOSED_EYES
# (stated on the raw v1 scale), converted to the tool's scale of the face tracks.
_SHUT = float(from_scale(np.where(np.arange(NUM_AUS) == _AU45, CLOSED_EYES, 0.0).astype(np.float32), "v1")[_AU45])
_YAW, _PITCH = NUM_AUS + 1, NUM_AUS


def face_region(size: tuple[int, int], *landmark_sets: np.ndarray, grow: float = 0.10) -> np.ndarray:
    """(H, W) bool: the union of the face ovals of these (478, 2+) landmark sets, grown by ``grow``."""
    mask = np.zeros(size, np.uint8)
    for lm in landmark_sets:
        cv2.fillPoly(mask, [np.round(grown_oval(lm, grow) * 4).astype(np.int32)], 1, shift=2)
    return mask.astype(bool)


def resampled(rgb: np.ndarray) -> np.ndarray:
    """The real frame as a renderer's output would carry it: shifted by half a pixel
    (bilinear resampling) and JPEG-compressed at quality 90. Re-measuring these against the
    stored attributes gives the extractor's noise floor on full frames."""
    m = np.array([[1, 0, 0.5], [0, 1, 0.5]], np.float32)
    moved = cv2.warpAffine(rgb, m, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ok, buf = cv2.imencode(".jpg", moved, [cv2.IMWRITE_JPEG_QUALITY, 90])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert decoded is not None  # the JPEG cv2 has just encoded
    return decoded


def read_frames(path: str, indices: np.ndarray) -> dict[int, np.ndarray]:
    """The decoded RGB frames at these indices (one pass over the clip)."""
    from icface_video.media import iter_frames

    want, out = set(int(i) for i in indices), {}
    for f in iter_frames(path, max_frames=int(max(want)) + 1):
        if f.index in want:
            out[f.index] = f.rgb
    return out


class Measure:
    """Re-extracts attributes and landmarks from full frames (one video-mode analyzer per sequence)."""

    def sequence(self, frames: list[np.ndarray], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from icface_video.face import FaceAnalyzer
        from icface_video.mesh_topology import NUM_LANDMARKS

        attrs = np.full((len(frames), 20), np.nan, np.float32)
        lms = np.full((len(frames), NUM_LANDMARKS, 3), np.nan, np.float32)
        with FaceAnalyzer(mode="video") as fa:
            for i, f in enumerate(frames):
                face = fa.analyze(f, float(times[i]))
                if face is not None:
                    attrs[i] = attributes_from_face(face.blendshapes, face.matrix)
                    lms[i] = face.landmarks
        return attrs, lms


@dataclass
class Method:
    """A way to turn (source frame, its landmarks and attributes, target attributes, placement) into a frame."""

    name: str
    render: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


def load_method(name: str, spec: str) -> Method:
    """``geometry[:MODEL]``, ``network[:MODEL]`` or either with ``-no-eyelids``."""
    import torch

    from icface_video.model import ReenactmentModel
    from icface_video.reenact import render_still
    from icface_video.source import SourceFrame, make_source_frame

    kind, _, folder = spec.partition(":")
    model = ReenactmentModel.load(folder or None, eyelids=not kind.endswith("-no-eyelids"))
    if kind in ("geometry", "geometry-no-eyelids"):
        from icface_video.errors import IcfaceError
        from icface_video.reenact import RenderOptions, geometry_stage

        try:  # the stage `reenact` builds: the motion model, with the folder's eyelid warp
            stage = geometry_stage(model, RenderOptions(renderer="geometry"))
        except IcfaceError as exc:
            raise SystemExit(f"{spec}: {exc}") from None
        assert stage is not None  # renderer="geometry"
        return Method(name, lambda rgb, lm, sa, ta, pl: stage.render(rgb, lm, sa, ta, pl))
    if kind not in ("network", "network-no-eyelids"):
        raise SystemExit(f"--method {name}={spec}: unknown kind {kind!r}")
    cache: dict[int, SourceFrame] = {}

    def render(rgb, lm, sa, ta, pl):
        key = id(rgb)
        if key not in cache:
            cache.clear()
            cache[key] = make_source_frame(rgb, lm, sa.astype(np.float32), landmark_params(lm), model.resolution)
        attrs = torch.from_numpy(np.asarray(ta, np.float32)[None])
        return render_still(model, cache[key], attrs, detail=True, renderer="network")
    return Method(name, render)


def _identity(emb: IdentityEmbedder, a: np.ndarray, la: np.ndarray, b: np.ndarray, lb: np.ndarray) -> float:
    if not (np.isfinite(la).all() and np.isfinite(lb).all()):
        return float("nan")
    ea, eb = emb.embed(a, la[:, :2]), emb.embed(b, lb[:, :2])
    return float(ea @ eb) if ea is not None and eb is not None else float("nan")


def neutral_index(track: ClipTrack) -> int:
    """The clip's most neutral frame (as relative driving picks a driver's reference)."""
    return most_neutral_frame(track.attrs, track.success)


def self_pairs(track: ClipTrack, count: int) -> tuple[int, np.ndarray]:
    s = neutral_index(track)
    ok = np.nonzero(track.success)[0]
    ok = ok[ok != s]
    idx = np.unique(np.round(np.linspace(0, len(ok) - 1, min(count, len(ok)))).astype(int))
    return s, ok[idx]


def run_self(tracks: list[ClipTrack], methods: list[Method], targets: int, log) -> tuple[dict, list[dict]]:
    """Per method, per clip arrays of the self-reenactment figures; and the sheet candidates."""
    measure, emb = Measure(), IdentityEmbedder()
    names = ["no-motion"] + [m.name for m in methods] + ["floor"]
    per: dict[str, dict[str, list[np.ndarray | str]]] = {
        n: {"l1": [], "au": [], "pose": [], "id": [], "closed": [], "clip": []} for n in names}
    candidates = []
    for t in tracks:
        s, tg = self_pairs(t, targets)
        if len(tg) < 3:
            continue
        frames = read_frames(t.path, np.concatenate([[s], tg]))
        src, slm, sattr = frames[s], t.landmarks[s].astype(np.float64), t.attrs[s]
        cs = landmark_params(slm)
        outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for j in tg:
            ct = landmark_params(t.landmarks[j])
            pl = np.array([ct[0] - cs[0], ct[1] - cs[1], ct[2] / cs[2]])
            outs["no-motion"].append(src)
            outs["floor"].append(resampled(frames[j]))
            for m in methods:
                outs[m.name].append(m.render(src, slm, sattr, t.attrs[j], pl))
        real = [frames[j] for j in tg]
        times = t.times[tg]
        for n in names:
            got, lms = measure.sequence(outs[n], times)
            l1s, ids = [], []
            for k, j in enumerate(tg):
                reg = face_region(src.shape[:2], slm, t.landmarks[j])
                l1s.append(float(np.abs(outs[n][k].astype(np.float32) - real[k].astype(np.float32))[reg].mean() / 255.0))
                ids.append(_identity(emb, outs[n][k], lms[k], real[k], t.landmarks[j]))
            ref = t.attrs[tg]
            per[n]["l1"].append(np.array(l1s))
            per[n]["au"].append(np.nanmean(np.abs(got[:, :NUM_AUS] - ref[:, :NUM_AUS]), axis=1))
            per[n]["pose"].append(pose_error_deg(got, ref))
            per[n]["id"].append(np.array(ids))
            per[n]["closed"].append(got[ref[:, _AU45] > _SHUT, _AU45])  # the output's AU45 where the eyes shut
            per[n]["clip"].append(t.id)
        for k, j in enumerate(tg):
            candidates.append({"clip": t.id, "yaw_change": float(abs(t.attrs[j, _YAW] - sattr[_YAW])),
                               "mouth": float(t.attrs[j, _AU25] + t.attrs[j, _AU26] - sattr[_AU25] - sattr[_AU26]),
                               "identity": t.identity, "frames": {n: outs[n][k] for n in names if n != "no-motion"},
                               "source": src, "landmarks": t.landmarks[j], "source_landmarks": slm})
        log(f"self {t.id}: {len(tg)} targets, yaw range {np.degrees(np.ptp(t.attrs[t.success, _YAW])):.1f} deg")
    return per, candidates


def run_cross(tracks: list[ClipTrack], methods: list[Method], frames_per: int, log) -> dict:
    """Per method: identity to the source, AU and yaw/pitch correlations with the plan."""
    measure, emb = Measure(), IdentityEmbedder()
    out: dict[str, dict[str, list[float | np.floating]]] = {
        m.name: {"id": [], "au_corr": [], "yaw_corr": [], "pitch_corr": []} for m in methods}
    order = sorted(tracks, key=lambda t: t.id)
    for i, t in enumerate(order):
        drv = next((d for d in order[i + 1:] + order[:i] if d.identity != t.identity), None)
        if drv is None:
            continue
        ok = np.nonzero(drv.success)[0][:frames_per]
        if len(ok) < 10:
            continue
        s = neutral_index(t)
        src = read_frames(t.path, np.array([s]))[s]
        slm, sattr = t.landmarks[s].astype(np.float64), t.attrs[s]
        ref = drv.attrs[neutral_index(drv)]
        plan = sattr + (drv.attrs[ok] - ref)
        clip_aus(plan)
        for m in methods:
            outs = [m.render(src, slm, sattr, a, None) for a in plan]
            got, lms = measure.sequence(outs, drv.times[ok])
            out[m.name]["id"].append(np.nanmean([_identity(emb, o, lm, src, slm) for o, lm in zip(outs, lms)]))
            moving = [k for k in range(NUM_AUS) if plan[:, k].std() > 0.3]
            good = np.isfinite(got[:, 0])
            cors = [np.corrcoef(plan[good, k], got[good, k])[0, 1] for k in moving if got[good, k].std() > 1e-6]
            out[m.name]["au_corr"].append(float(np.nanmean(cors)) if cors else float("nan"))
            for key, col in (("yaw_corr", _YAW), ("pitch_corr", _PITCH)):
                c = np.corrcoef(plan[good, col], got[good, col])[0, 1] if plan[good, col].std() > 0.02 else np.nan
                out[m.name][key].append(float(c))
        log(f"cross {t.id} <- {drv.id}: {len(ok)} frames")
    return out


def summarise(per: dict, keep: set[str] | None = None) -> dict:
    res = {}
    for n, d in per.items():
        sel = [k for k, c in enumerate(d["clip"]) if keep is None or c in keep]
        if not sel:
            continue
        cat = {m: np.concatenate([d[m][k] for k in sel]) for m in ("l1", "au", "pose", "id", "closed")}
        res[n] = {"face_l1": float(np.nanmean(cat["l1"])), "au_mae": float(np.nanmean(cat["au"])),
                  "pose_deg": float(np.nanmean(cat["pose"])), "identity": float(np.nanmean(cat["id"])),
                  "closed_eyes_au45": float(np.nanmean(cat["closed"])) if len(cat["closed"]) else float("nan"),
                  "closed_frames": int(len(cat["closed"])), "frames": int(len(cat["l1"]))}
    return res


def build_sheet(candidates: list[dict], names: list[str], rows_each: int = 6, height: int = 360) -> np.ndarray:
    """Rows: the largest head turns, then the widest mouth openings (one row per person at most)."""
    def pick(key):
        chosen, seen = [], set()
        for c in sorted(candidates, key=lambda c: -c[key]):
            if c["identity"] not in seen:
                chosen.append(c)
                seen.add(c["identity"])
            if len(chosen) == rows_each:
                break
        return chosen

    rows = []
    for c in pick("yaw_change") + pick("mouth"):
        lm = np.concatenate([c["landmarks"][:, :2], c["source_landmarks"][:, :2]])
        x0, y0 = lm.min(0)
        x1, y1 = lm.max(0)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 0.8
        h, w = c["source"].shape[:2]
        a, b = int(max(0, cx - half)), int(min(w, cx + half))
        u, v = int(max(0, cy - half)), int(min(h, cy + half))
        panels = [c["source"][u:v, a:b]] + [c["frames"][n][u:v, a:b] for n in names] + [c["frames"]["floor"][u:v, a:b]]
        panels = [cv2.resize(p, (int(round(p.shape[1] * height / p.shape[0])), height),
                             interpolation=cv2.INTER_AREA if p.shape[0] > height else cv2.INTER_CUBIC) for p in panels]
        row = np.concatenate(panels, axis=1)
        cv2.putText(row, f"{c['clip'][:40]} yaw change {np.degrees(c['yaw_change']):.0f} deg, mouth +{c['mouth']:.1f}",
                    (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    head = np.zeros((28, width, 3), np.uint8)
    cv2.putText(head, " | ".join(["source"] + names + ["real"]), (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([head] + rows, axis=0)


def markdown(result: dict) -> str:
    lines = []
    for title, key in (("self-reenactment, full frames", "self"), ("largest yaw range clips", "self_wide")):
        rows = result[key]
        base = rows.get("no-motion", {})
        lines += [f"**{title}** ({', '.join(result.get('wide_clips', [])) if key == 'self_wide' else 'all test clips'})", "",
                  "| method | face L1 | x no-motion | AU MAE | x no-motion | pose (deg) | identity to real | AU45 where shut |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for n, r in rows.items():
            lines.append(f"| {n} | {r['face_l1']:.4f} | {r['face_l1'] / base['face_l1']:.2f} | {r['au_mae']:.3f} | "
                         f"{r['au_mae'] / base['au_mae']:.2f} | {r['pose_deg']:.2f} | {r['identity']:.3f} | "
                         f"{r['closed_eyes_au45']:.2f} ({r['closed_frames']}) |")
        lines.append("")
    lines += ["**cross-reenactment** (relative driving, another person)", "",
              "| method | identity to source | AU correlation | yaw correlation | pitch correlation |",
              "| --- | --- | --- | --- | --- |"]
    for n, r in result["cross"].items():
        lines.append(f"| {n} | {r['id']:.3f} | {r['au_corr']:.2f} | {r['yaw_corr']:.2f} | {r['pitch_corr']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="test")
    ap.add_argument("--targets", type=int, default=20)
    ap.add_argument("--cross-frames", type=int, default=60)
    ap.add_argument("--max-clips", type=int, default=None)
    ap.add_argument("--wide", type=int, default=3, help="how many largest-yaw-range clips to report apart")
    ap.add_argument("--method", action="append", default=[], help="NAME=SPEC (see the module docstring)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--sheet", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from icface_video.runtime import tune_allocator

    tune_allocator()
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:6.1f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    specs = args.method or ["geometry=geometry", "network=network"]
    methods = [load_method(*s.split("=", 1)) for s in specs]
    tracks = [t for t in load_tracks(args.split) if t.success.sum() >= 10][: args.max_clips]
    per, candidates = run_self(tracks, methods, args.targets, log)
    yaw_range = {t.id: float(np.ptp(t.attrs[t.success, _YAW])) for t in tracks}
    wide = sorted(yaw_range, key=lambda k: -yaw_range[k])[: args.wide]
    cross = run_cross(tracks, methods, args.cross_frames, log)
    result = {"split": args.split, "clips": len(per["no-motion"]["clip"]), "self": summarise(per),
              "self_wide": summarise(per, set(wide)), "wide_clips": wide,
              "wide_yaw_range_deg": {k: round(float(np.degrees(yaw_range[k])), 1) for k in wide},
              "cross": {n: {k: float(np.nanmean(v)) for k, v in d.items()} for n, d in cross.items()},
              "seconds": round(time.perf_counter() - t0, 1),
              "command": "python -m train.eval_frames " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.sheet:
        sheet = build_sheet(candidates, [m.name for m in methods])
        cv2.imwrite(str(args.sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        log(f"wrote {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
