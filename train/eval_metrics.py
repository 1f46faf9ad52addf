"""The evaluation's metrics: per-frame image metrics, pose error, and the tallies pooled over clips."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from icface_video.attributes import AU_NAMES, NUM_AUS
from train.lpips import AlexLPIPS

__all__ = ["CLOSED_EYES", "CROSS_KEYS", "SELF_KEYS", "Tally", "image_metrics", "pose_error_deg"]


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
