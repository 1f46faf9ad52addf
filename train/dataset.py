"""Source/target pairs from a prepared dataset, with face-aware augmentation.

The prepared dataset (written by ``train/prepare.py``)::

    <root>/index.json      {"version": 1, "resolution": R, "clips": [...], "identities": [...]}
    <root>/clips/<id>.npz  crops uint8 (N,R,R,3) RGB; attrs float32 (N,20); landmarks
                           float32 (N,478,2) crop pixels (x right, y down, origin at the
                           top-left pixel corner); success uint8 (N,); timestamps float64 (N,);
                           au_scale str, the AU scale of attrs (missing: "v1", files
                           prepared before the calibration)

The dataset hands out attributes on the scale it is asked for (``au_scale``, the
training config's ``data.au_scale``: the scale of the model being trained), converting
the stored ones (``icface_video.attributes.convert_scale``, exact on the AUs' range).

A pair is two distinct detected frames (``success == 1``) of one clip: the source and
the target; the target's attributes drive the generator and the target frame is the
reconstruction target. Clips are loaded into memory once (uint8).

Sampling is a pure function of a ``numpy.random.Generator``: the trainer seeds it from
(seed, step, rank), so resuming reproduces the same batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from icface_video.attributes import AU_NAMES, AU_SCALES, NUM_ATTRS, NUM_AUS, convert_scale
from icface_video.mesh_topology import NUM_LANDMARKS
from icface_video.tensors import to_tensor

INDEX_VERSION = 1
_YAW, _ROLL = NUM_AUS + 1, NUM_AUS + 2
AU45 = AU_NAMES.index("AU45")  # eye closure


class DatasetError(ValueError):
    """A prepared dataset that is missing, malformed or empty; the message names the file."""


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation, applied identically to the source and the target of a pair.

    Attributes:
        flip: probability of a horizontal flip (yaw and roll negated, landmarks mirrored).
        scale: maximum zoom-in factor minus 1 (0.08 -> zoom 1.00..1.08); the shift stays
            within the zoom so no border is ever invented.
        brightness, contrast, saturation: maximum relative jitter (0.1 -> x0.9..1.1).
    """

    flip: float = 0.5
    scale: float = 0.08
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


@dataclass
class _Clip:
    id: str
    identity_index: int
    crops: np.ndarray      # (N, R, R, 3) uint8
    attrs: np.ndarray      # (N, 20) float32
    landmarks: np.ndarray  # (N, 478, 2) float32
    valid: np.ndarray      # (M,) int64 indices of success frames


def read_index(root: Path) -> dict:
    """Read and check ``<root>/index.json``."""
    path = Path(root) / "index.json"
    if not path.is_file():
        raise DatasetError(f"{path}: not found (is --data / data.root a prepared dataset?)")
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable JSON ({exc})") from exc
    if index.get("version") != INDEX_VERSION:
        raise DatasetError(f"{path}: version {index.get('version')!r}, expected {INDEX_VERSION}")
    for key in ("resolution", "clips", "identities"):
        if key not in index:
            raise DatasetError(f"{path}: missing key {key!r}")
    return index


class ClipArrays(TypedDict):
    """One clip file's arrays (shapes in the module docstring) and the AU scale of ``attrs``."""

    crops: np.ndarray
    attrs: np.ndarray
    landmarks: np.ndarray
    success: np.ndarray
    au_scale: str


def load_clip(path: Path, resolution: int) -> ClipArrays:
    """Load one clip file (no pickle) and check its arrays; ``data["au_scale"]`` is the attrs' scale."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in ("crops", "attrs", "landmarks", "success")}
            scale = str(z["au_scale"]) if "au_scale" in z.files else "v1"
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{path}: unreadable clip ({exc})") from exc
    if scale not in AU_SCALES:
        raise DatasetError(f"{path}: au_scale {scale!r}, expected one of {AU_SCALES}")
    n = data["crops"].shape[0]
    expect = {"crops": (n, resolution, resolution, 3), "attrs": (n, NUM_ATTRS),
              "landmarks": (n, NUM_LANDMARKS, 2), "success": (n,)}
    for key, shape in expect.items():
        if data[key].shape != shape:
            raise DatasetError(f"{path}: {key} has shape {data[key].shape}, expected {shape}")
    return ClipArrays(crops=data["crops"], attrs=data["attrs"], landmarks=data["landmarks"],
                      success=data["success"], au_scale=scale)


class PairDataset:
    """All usable clips of one split, in memory.

    Args:
        root: prepared dataset folder.
        split: ``"train"`` or ``"test"``.
        resolution: training resolution; crops are resized (area) when it differs from
            the stored one, landmarks scaled accordingly.
        max_clips: keep only the first N usable clips (tests, quick runs); None = all.
        au_scale: the AU scale of the attributes handed out (``"v1"`` or ``"v2"``).
    """

    def __init__(self, root: str | Path, split: str = "train", resolution: int = 128,
                 max_clips: int | None = None, au_scale: str = "v1") -> None:
        if au_scale not in AU_SCALES:
            raise ValueError(f"au_scale: expected one of {AU_SCALES}, got {au_scale!r}")
        self.au_scale = au_scale
        self.root = Path(root)
        index = read_index(self.root)
        self.stored_resolution = int(index["resolution"])
        self.resolution = resolution
        self.identities: list[str] = list(index["identities"])
        self.clips: list[_Clip] = []
        for entry in index["clips"]:
            if entry.get("split") != split:
                continue
            data = load_clip(self.root / entry["file"], self.stored_resolution)
            valid = np.flatnonzero(data["success"] > 0).astype(np.int64)
            if valid.size < 2:
                continue
            crops, lms = data["crops"], data["landmarks"].astype(np.float32)
            if resolution != self.stored_resolution:
                t = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
                t = F.interpolate(t, size=(resolution, resolution), mode="area")
                crops = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
                lms = lms * (resolution / self.stored_resolution)
            attrs = convert_scale(data["attrs"].astype(np.float32), data["au_scale"], au_scale)
            self.clips.append(_Clip(entry["id"], int(entry.get("identity_index", -1)), crops, attrs, lms, valid))
            if max_clips is not None and len(self.clips) >= max_clips:
                break
        if not self.clips:
            raise DatasetError(f"{self.root / 'index.json'}: no {split!r} clip with 2 or more detected frames")

    @property
    def num_identities(self) -> int:
        return len(self.identities)

    @property
    def num_frames(self) -> int:
        return sum(c.valid.size for c in self.clips)

    def sample_pairs(self, rng: np.random.Generator, batch: int, hard_pair_prob: float = 0.0,
                     eye_pair_prob: float = 0.0, candidates: int = 4) -> list[tuple[int, int, int]]:
        """Draw ``batch`` (clip, source frame, target frame) triples.

        With probability ``hard_pair_prob`` the target is the one of ``candidates`` random
        frames whose AUs differ most from the source (more expression change per step).
        Otherwise, with probability ``eye_pair_prob``, it is the one of ``2 * candidates``
        frames whose AU45 (eye closure, 0-5) differs most: blinks are short, so a plain
        draw rarely pairs an open eye with a closed one.
        """
        out = []
        for _ in range(batch):
            ci = int(rng.integers(len(self.clips)))
            clip = self.clips[ci]
            s = int(clip.valid[rng.integers(clip.valid.size)])
            others = clip.valid[clip.valid != s]
            u = rng.random()
            if u < hard_pair_prob:
                cand = others[rng.integers(others.size, size=candidates)]
                diff = np.abs(clip.attrs[cand, :NUM_AUS] - clip.attrs[s, :NUM_AUS]).sum(axis=1)
                t = int(cand[int(np.argmax(diff))])
            elif u < hard_pair_prob + eye_pair_prob:
                cand = others[rng.integers(others.size, size=2 * candidates)]
                t = int(cand[int(np.argmax(np.abs(clip.attrs[cand, AU45] - clip.attrs[s, AU45])))])
            else:
                t = int(others[rng.integers(others.size)])
            out.append((ci, s, t))
        return out

    def collate(self, triples: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
        """Stack triples into a batch.

        Returns:
            source, target: (B, 3, R, R) float32 RGB in [-1, 1].
            source_attrs, target_attrs: (B, 20) raw attributes.
            source_landmarks, target_landmarks: (B, 478, 2) crop pixels.
            identity: (B,) int64 class index, -1 = no class (test people).
        """
        def img(c: _Clip, i: int) -> np.ndarray:
            return c.crops[i]

        src = np.stack([img(self.clips[c], s) for c, s, _ in triples])
        tgt = np.stack([img(self.clips[c], t) for c, _, t in triples])

        return {
            "source": to_tensor(src),
            "target": to_tensor(tgt),
            "source_attrs": torch.from_numpy(np.stack([self.clips[c].attrs[s] for c, s, _ in triples])),
            "target_attrs": torch.from_numpy(np.stack([self.clips[c].attrs[t] for c, _, t in triples])),
            "source_landmarks": torch.from_numpy(np.stack([self.clips[c].landmarks[s] for c, s, _ in triples])),
            "target_landmarks": torch.from_numpy(np.stack([self.clips[c].landmarks[t] for c, _, t in triples])),
            "identity": torch.tensor([self.clips[c].identity_index for c, _, _ in triples], dtype=torch.int64),
        }

    def sample_batch(self, rng: np.random.Generator, batch: int, augment: AugmentConfig | None = None,
                     hard_pair_prob: float = 0.0, eye_pair_prob: float = 0.0) -> dict[str, torch.Tensor]:
        """:meth:`sample_pairs` + :meth:`collate` + :func:`augment_batch` (if given)."""
        data = self.collate(self.sample_pairs(rng, batch, hard_pair_prob, eye_pair_prob))
        return augment_batch(data, rng, augment) if augment is not None else data


def augment_batch(data: dict[str, torch.Tensor], rng: np.random.Generator,
                  cfg: AugmentConfig) -> dict[str, torch.Tensor]:
    """Augment a collated batch in place of a copy; source and target of a pair get the same
    flip, zoom/shift and colour change. Flipping negates yaw and roll and mirrors landmark x
    (indices keep their meaning as correspondences between the two frames)."""
    out = dict(data)
    b, _, h, w = data["source"].shape
    flip = torch.from_numpy(rng.random(b) < cfg.flip)
    zoom = torch.from_numpy(1.0 + rng.random(b) * cfg.scale).float()
    room = 1.0 - 1.0 / zoom  # normalised shift that keeps the view inside the crop
    shift = torch.from_numpy(rng.uniform(-1, 1, size=(b, 2))).float() * room[:, None] * zoom[:, None]
    sx = torch.where(flip, -zoom, zoom)
    # output normalised coords u' = (sx, zoom) * u + shift  <=>  u = (u' - shift) / (sx, zoom)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1.0 / sx
    theta[:, 1, 1] = 1.0 / zoom
    theta[:, 0, 2] = -shift[:, 0] / sx
    theta[:, 1, 2] = -shift[:, 1] / zoom
    grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)
    bright = torch.from_numpy(rng.uniform(-cfg.brightness, cfg.brightness, b)).float()[:, None, None, None]
    contrast = torch.from_numpy(1 + rng.uniform(-cfg.contrast, cfg.contrast, b)).float()[:, None, None, None]
    sat = torch.from_numpy(1 + rng.uniform(-cfg.saturation, cfg.saturation, b)).float()[:, None, None, None]

    def colour(x: torch.Tensor) -> torch.Tensor:
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * sat
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * contrast + 2 * bright
        return x.clamp(-1, 1)

    for key in ("source", "target"):
        out[key] = colour(F.grid_sample(data[key], grid, mode="bilinear", padding_mode="border",
                                        align_corners=False))
    scale_xy = torch.stack([sx, zoom], dim=1)[:, None, :]
    size = torch.tensor([w, h], dtype=torch.float32)
    for key in ("source_landmarks", "target_landmarks"):
        u = data[key] * (2.0 / size) - 1.0
        out[key] = ((u * scale_xy + shift[:, None, :]) + 1.0) * (size / 2.0)
    for key in ("source_attrs", "target_attrs"):
        a = data[key].clone()
        a[flip, _YAW] = -a[flip, _YAW]
        a[flip, _ROLL] = -a[flip, _ROLL]
        out[key] = a
    return out
