"""Torch at the pipeline's edges: the compute device, and pictures to and from network tensors.

Convention (every network in this package): images are NCHW float RGB in [-1, 1];
pictures are HWC uint8 RGB (0..255). This module is the one place that converts between
the two, and that picks the device a model runs on.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UsageError

__all__ = ["pick_device", "to_tensor", "to_pixels", "to_uint8"]


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if available, then mps, else cpu; otherwise the named device.

    Raises:
        UsageError: not a device name, or a device this machine does not have.
    """
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    if name == "auto":
        return torch.device(next(k for k in ("cuda", "mps", "cpu") if available[k]))
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: {exc}") from None
    if not available.get(device.type, False):
        raise UsageError(f"--device {name}: no such device on this machine "
                         f"(available: {', '.join(k for k, ok in available.items() if ok)})")
    return device


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Pictures -> network images.

    Convention:
        rgb: (H, W, 3) or (N, H, W, 3) uint8 RGB.
        returns: (1, 3, H, W) or (N, 3, H, W) float32 in [-1, 1] (x / 127.5 - 1) on the CPU.
    """
    t = torch.from_numpy(np.ascontiguousarray(rgb))
    return (t[None] if t.dim() == 3 else t).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """Network images -> float pixel values: clamped to [-1, 1], then (x + 1) * 127.5, in
    0..255 (not rounded; same shape and device)."""
    return (images.clamp(-1, 1) + 1) * 127.5


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Network images -> pictures: (B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8
    (:func:`to_pixels`, rounded), on the CPU."""
    return to_pixels(images.float()).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
