"""Eyelid warp: close (or open) the source's eyes to the driving AU45 by moving its lid landmarks.

Why: a backward warp learned from 16x16 motion features cannot fold an upper lid onto
the lower one (train/README.md, "Closed eyes" I-III), so the generator alone keeps the
eyes open. The geometry of a blink is simple and is measured on the training clips:

1. **How open an eye is for an AU45.** Per eye, the *opening* is the mean distance
   between the 7 upper-lid and 7 lower-lid contour landmarks across the eye, in eye
   widths (corner to corner). Divided by the clip's open-eye opening (its 90th
   percentile), it falls with AU45 along a curve (``au45`` -> ``openness`` knots).
2. **How each lid landmark moves when the opening changes.** A least-squares
   coefficient per landmark, in the eye's own frame (x from outer to inner corner, y
   down, eye widths), per unit of opening change, fitted on pairs of frames of one clip
   with the head's pitch and yaw changes as nuisance regressors. (The shipped file lets
   the ring above the upper lid move with its lid point, so the lashes slide down whole:
   ``train/fit_eyelids.py``, ``--ring-follow``.)

For a source whose AU45 is ``a_s`` and a driver whose AU45 is ``a_t``, the opening is
scaled by ``openness(a_t) / openness(a_s)`` (sharpened by ``gain``, capped at
``max_ratio``, never below 0), each moved landmark follows its coefficient, and the
face mesh's triangles around the eyes (:mod:`icface_video.mesh_warp`) turn the moved
landmarks into a backward grid over the source crop: the *pre-warp*. The generator's own
backward grid is composed with it (``Generator.render(..., pre_grid=...)``), so the
upper lid slides down over the eye in the crop and in the full-resolution paste-back.

The fitted numbers live in ``eyelids.json`` next to the model's weights
(``python -m train.fit_eyelids``); :class:`EyelidConfig` reads and checks it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icface_video.errors import InputError
from icface_video.mesh_topology import EYES, NUM_LANDMARKS, EyeTopology
from icface_video.mesh_warp import identity_grid, mesh_triangles, piecewise_affine_grid

EYELIDS_NAME = "eyelids.json"


@dataclass(frozen=True)
class EyelidConfig:
    """Fitted eyelid geometry (see the module docstring).

    Attributes:
        au45: increasing AU45 knots, 0..5 scale.
        openness: relative eye opening at each knot (1 = the person's open eye), non-increasing.
        motion: per eye (same order as :data:`EYES`), ``{landmark: (kx, ky)}``: its
            displacement in the eye frame (eye widths) per unit change of the opening.
        gain: sharpening of the opening change: ratio = 1 + gain * (q - 1), q the
            openness quotient driver / source.
        max_ratio: cap on the opening ratio (opening an eye beyond the source's shows
            stretched eyeball, so only a little is allowed).
        min_source_openness: floor on the source's openness in the quotient (a source
            with closed eyes cannot be opened by a warp).
        provenance: how it was fitted (data, command, counts).
    """

    au45: tuple[float, ...]
    openness: tuple[float, ...]
    motion: tuple[dict[int, tuple[float, float]], ...]
    gain: float = 1.0
    max_ratio: float = 1.2
    min_source_openness: float = 0.15
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a, o = np.asarray(self.au45, float), np.asarray(self.openness, float)
        if a.ndim != 1 or a.size < 2 or a.shape != o.shape:
            raise ValueError("au45, openness: expected two equal-length lists of 2 or more knots")
        if np.any(np.diff(a) <= 0) or np.any(np.diff(o) > 1e-9):
            raise ValueError("au45 must increase and openness must not increase")
        if len(self.motion) != len(EYES):
            raise ValueError(f"motion: expected {len(EYES)} eyes, got {len(self.motion)}")
        for eye, m in zip(EYES, self.motion):
            extra = set(m) - set(eye.moved)
            if extra:
                raise ValueError(f"motion: landmarks {sorted(extra)} are not lid landmarks of that eye")
        if not (self.gain > 0 and self.max_ratio >= 1 and 0 < self.min_source_openness <= 1):
            raise ValueError("gain must be > 0, max_ratio >= 1, min_source_openness in (0, 1]")

    # -- file ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["motion"] = [{str(k): list(v) for k, v in m.items()} for m in self.motion]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EyelidConfig":
        motion = tuple({int(k): (float(v[0]), float(v[1])) for k, v in m.items()} for m in d["motion"])
        return cls(tuple(float(x) for x in d["au45"]), tuple(float(x) for x in d["openness"]), motion,
                   float(d.get("gain", 1.0)), float(d.get("max_ratio", 1.2)),
                   float(d.get("min_source_openness", 0.15)), dict(d.get("provenance", {})))

    @classmethod
    def load(cls, path: str | Path) -> "EyelidConfig":
        """Read ``eyelids.json``. Raises InputError naming the file when it is unusable."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except OSError as exc:
            raise InputError(path, f"cannot read eyelid config ({exc.strerror or exc})") from exc
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(path, f"unusable eyelid config ({exc})") from exc

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)


def eye_frames(landmarks: torch.Tensor, eye: EyeTopology) -> tuple[torch.Tensor, ...]:
    """An eye's frame: ``(centre, x_axis, y_axis, width)``.

    Convention:
        landmarks: (B, 478, 2) crop pixels (x right, y down).
        returns: centre (B, 2) px, the corners' midpoint; x_axis (B, 2) unit vector outer ->
            inner corner; y_axis (B, 2) unit vector perpendicular to it, pointing down the
            image; width (B, 1) px, corner to corner (at least 1e-3).
    """
    a, b = landmarks[:, eye.corners[0]], landmarks[:, eye.corners[1]]
    d = b - a
    width = d.norm(dim=-1, keepdim=True).clamp_min(1e-3)
    x = d / width
    y = torch.stack([-x[:, 1], x[:, 0]], dim=-1)
    y = y * torch.where(y[:, 1:2] < 0, -1.0, 1.0)
    return (a + b) / 2, x, y, width


def eye_opening(landmarks: torch.Tensor, eye: EyeTopology) -> torch.Tensor:
    """(B,) mean upper-to-lower lid distance across the eye, in eye widths (about 0.3 when open)."""
    c, _, y, w = eye_frames(landmarks, eye)
    up = ((landmarks[:, list(eye.upper)] - c[:, None]) * y[:, None]).sum(-1)
    lo = ((landmarks[:, list(eye.lower)] - c[:, None]) * y[:, None]).sum(-1)
    return (lo - up).mean(dim=1) / w[:, 0]


def openness(config: EyelidConfig, au45: torch.Tensor) -> torch.Tensor:
    """Relative eye opening (1 = open) for AU45 values (any shape, 0..5), piecewise linear."""
    xs = torch.tensor(config.au45, dtype=au45.dtype, device=au45.device)
    ys = torch.tensor(config.openness, dtype=au45.dtype, device=au45.device)
    a = au45.clamp(xs[0], xs[-1])
    i = torch.searchsorted(xs, a.contiguous(), right=True).clamp(1, xs.numel() - 1)
    t = (a - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + t * (ys[i] - ys[i - 1])


def opening_ratio(config: EyelidConfig, source_au45: torch.Tensor, driving_au45: torch.Tensor) -> torch.Tensor:
    """(B,) factor on the source's eye opening: 0 = shut, 1 = as in the source, <= ``max_ratio``."""
    q = openness(config, driving_au45) / openness(config, source_au45).clamp_min(config.min_source_openness)
    return (1 + config.gain * (q - 1)).clamp(0.0, config.max_ratio)


def move_lids(config: EyelidConfig, landmarks: torch.Tensor, source_au45: torch.Tensor,
              driving_au45: torch.Tensor) -> torch.Tensor:
    """The source's landmarks with the lids moved to the driving AU45.

    Convention:
        landmarks: (B, 478, 2) source crop pixels (x right, y down, origin top-left corner).
        source_au45, driving_au45: (B,) AU45 on the 0..5 scale.
        returns: (B, 478, 2) crop pixels; only the lid landmarks of ``config.motion`` move,
            and an upper-lid landmark never passes the lower-lid one facing it.
    """
    check_landmarks(landmarks)
    out = landmarks.clone()
    ratio = opening_ratio(config, source_au45.to(landmarks), driving_au45.to(landmarks))
    for eye, motion in zip(EYES, config.motion):
        if not motion:
            continue
        c, x, y, w = eye_frames(landmarks, eye)
        step = (eye_opening(landmarks, eye) * (ratio - 1))[:, None] * w  # (B, 1) px of opening change
        idx = list(motion)
        k = torch.tensor([motion[i] for i in idx], dtype=landmarks.dtype, device=landmarks.device)  # (M, 2)
        disp = step[:, :, None] * (k[None, :, :1] * x[:, None] + k[None, :, 1:] * y[:, None])
        out[:, idx] = landmarks[:, idx] + disp
        # Where a pair of lid points would cross, both go to their midpoint along y.
        up, lo = list(eye.upper), list(eye.lower)
        yu = ((out[:, up] - c[:, None]) * y[:, None]).sum(-1)
        yl = ((out[:, lo] - c[:, None]) * y[:, None]).sum(-1)
        over = (yu - yl).clamp_min(0.0)[..., None] / 2 * y[:, None]
        out[:, up] = out[:, up] - over
        out[:, lo] = out[:, lo] + over
    return out


@lru_cache(maxsize=4)
def _eye_triangles(moved: tuple[int, ...]) -> np.ndarray:
    tris = mesh_triangles()
    return tris[np.isin(tris, list(moved)).any(axis=1)]


def eyelid_grid(config: EyelidConfig, landmarks: torch.Tensor, source_au45: torch.Tensor,
                driving_au45: torch.Tensor, size: int) -> torch.Tensor:
    """The pre-warp that moves the source's lids to the driving AU45.

    Convention:
        landmarks: (B, 478, 2) source crop pixels of a ``size`` x ``size`` crop.
        source_au45, driving_au45: (B,) 0..5.
        returns: (B, size, size, 2) backward grid into the source crop, ``grid_sample``
            convention (-1..1, ``align_corners=False``); the identity away from the eyes
            and inside the eye openings (the eyeball stays where it is, the lid covers it).
    """
    moved = move_lids(config, landmarks, source_au45, driving_au45)
    keys = tuple(sorted(i for m in config.motion for i in m))
    ident = identity_grid(landmarks.shape[0], size, size, landmarks.device, landmarks.dtype)
    if not keys:
        return ident.clone()
    grid, covered = piecewise_affine_grid(landmarks, moved, size, _eye_triangles(keys))
    return torch.where(covered.permute(0, 2, 3, 1) > 0, grid, ident)


def check_landmarks(landmarks: Any, batch: int | None = None) -> None:
    """Raise ValueError (naming ``landmarks``) unless it is a finite floating point
    (B, 478, 2) tensor, with B = ``batch`` when given."""
    want = (batch if batch is not None else "B", NUM_LANDMARKS, 2)
    if (not torch.is_tensor(landmarks) or landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 2)
            or (batch is not None and landmarks.shape[0] != batch)):
        shape = tuple(landmarks.shape) if torch.is_tensor(landmarks) else type(landmarks).__name__
        raise ValueError(f"landmarks: expected a ({', '.join(map(str, want))}) tensor, got {shape}")
    if not landmarks.is_floating_point() or not torch.isfinite(landmarks).all():
        raise ValueError("landmarks: expected finite floating point values (no NaN or infinity)")


def load_for_model(folder: str | Path) -> EyelidConfig | None:
    """The ``eyelids.json`` of a model folder, or None when it has none."""
    path = Path(folder) / EYELIDS_NAME
    return EyelidConfig.load(path) if path.is_file() else None
