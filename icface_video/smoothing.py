"""Temporal smoothing of per-frame values (attributes, crop transforms), and gap filling.

Two smoothers, both on real timestamps (variable frame rate safe):

* ``gaussian`` (default): zero-lag, offline; a Gaussian kernel over time with
  sigma = ``strength * 0.04`` s (about one frame at 25 fps for strength 1).
* ``oneeuro``: causal One Euro filter (Casiez et al. 2012) for streaming use; cut-off
  ``1.5 / strength`` Hz at rest, rising with speed (``beta``).
* ``none``: values as measured.

Frames without a face are filled by linear interpolation in time from their neighbours
(held at the ends) before smoothing, never with zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

SmoothMethod = Literal["gaussian", "oneeuro", "none"]
SMOOTH_METHODS: tuple[str, ...] = ("gaussian", "oneeuro", "none")


@dataclass(frozen=True)
class SmoothConfig:
    """How to smooth a per-frame signal.

    Attributes:
        method: ``gaussian`` (zero-lag), ``oneeuro`` (causal) or ``none``.
        strength: > 0; 1 is the default, 2 twice as smooth, 0.5 half.
        beta: One Euro speed coefficient (per unit of the normalised signal).
    """

    method: SmoothMethod = "gaussian"
    strength: float = 1.0
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in SMOOTH_METHODS:
            raise ValueError(f"method: expected one of {SMOOTH_METHODS}, got {self.method!r}")
        if not (self.strength > 0 and math.isfinite(self.strength)):
            raise ValueError(f"strength: expected a positive number, got {self.strength}")


def fill_missing(values: np.ndarray, valid: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Fill rows where ``valid`` is False by linear interpolation over time.

    Convention:
        values: (N, D) float; rows with valid False are ignored.
        valid: (N,) bool.
        times: (N,) seconds, increasing.
        returns: (N, D) float32; before the first / after the last valid row the nearest
            valid row is held.

    Raises:
        ValueError: no valid row at all.
    """
    values = np.asarray(values, np.float64)
    valid = np.asarray(valid, bool)
    if values.ndim != 2 or valid.shape != (values.shape[0],) or np.shape(times) != valid.shape:
        raise ValueError(f"values/valid/times: shapes {values.shape}, {valid.shape}, {np.shape(times)} do not match")
    if not valid.any():
        raise ValueError("valid: no valid frame to fill from")
    if valid.all():
        return values.astype(np.float32)
    t = np.asarray(times, np.float64)
    out = values.copy()
    for d in range(values.shape[1]):
        out[~valid, d] = np.interp(t[~valid], t[valid], values[valid, d])
    return out.astype(np.float32)


def gaussian_smooth(values: np.ndarray, times: np.ndarray, sigma_s: float) -> np.ndarray:
    """Zero-lag Gaussian smoothing over time (normalised weights, so edges are not pulled down).

    Convention:
        values: (N, D) float; times: (N,) seconds increasing; sigma_s: seconds.
        returns: (N, D) float32.
    """
    v = np.asarray(values, np.float64)
    t = np.asarray(times, np.float64)
    n = v.shape[0]
    if n < 2 or sigma_s <= 0:
        return v.astype(np.float32)
    out = np.empty_like(v)
    radius = 3.0 * sigma_s
    lo = np.searchsorted(t, t - radius, side="left")
    hi = np.searchsorted(t, t + radius, side="right")
    for i in range(n):
        w = np.exp(-0.5 * ((t[lo[i]:hi[i]] - t[i]) / sigma_s) ** 2)
        out[i] = w @ v[lo[i]:hi[i]] / w.sum()
    return out.astype(np.float32)


def one_euro(values: np.ndarray, times: np.ndarray, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> np.ndarray:
    """Causal One Euro filter, each column independently.

    Convention:
        values: (N, D) float; times: (N,) seconds increasing; cut-offs in Hz; ``beta`` per
            unit/s of the signal. returns: (N, D) float32.
    """
    v = np.asarray(values, np.float64)
    t = np.asarray(times, np.float64)
    out = np.empty_like(v)
    if len(v) == 0:
        return out.astype(np.float32)

    def alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
        tau = 1.0 / (2 * math.pi * np.asarray(cutoff))
        return 1.0 / (1.0 + tau / dt)

    x_prev = v[0].copy()
    dx_prev = np.zeros_like(x_prev)
    out[0] = x_prev
    for i in range(1, len(v)):
        dt = max(t[i] - t[i - 1], 1e-4)
        dx = (v[i] - x_prev) / dt
        a_d = alpha(d_cutoff, dt)
        dx_hat = a_d * dx + (1 - a_d) * dx_prev
        a = alpha(min_cutoff + beta * np.abs(dx_hat), dt)
        x_prev = a * v[i] + (1 - a) * x_prev
        dx_prev = dx_hat
        out[i] = x_prev
    return out.astype(np.float32)


def smooth(values: np.ndarray, times: np.ndarray, config: SmoothConfig, unit: np.ndarray | float = 1.0) -> np.ndarray:
    """Smooth a (N, D) signal with ``config``.

    ``unit`` (scalar or (D,)) is the size of one "unit" of each column, so that the One
    Euro ``beta`` means the same for AUs (unit 5), angles (unit 1.4 rad) and pixels.
    """
    v = np.asarray(values, np.float32)
    if config.method == "none" or len(v) < 2:
        return v.copy()
    if config.method == "gaussian":
        return gaussian_smooth(v, times, 0.04 * config.strength)
    u = np.broadcast_to(np.asarray(unit, np.float64), (v.shape[1],))
    return (one_euro(v / u, times, min_cutoff=1.5 / config.strength, beta=config.beta) * u).astype(np.float32)
