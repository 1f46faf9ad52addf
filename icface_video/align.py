"""Face alignment: a scale + translation transform from landmarks to a square crop.

The crop frames the face like VoxCeleb crops (whole head, some hair and neck). It does
not rotate: in-plane head roll stays in the picture, where the generator is asked to
reproduce it. Scale comes from the 3D spread of the 478 landmarks (RMS distance from
their centroid), which does not shrink when the head turns, so crops of a clip keep a
steady size; :func:`smooth_params` removes jitter over time.

A transform is kept as ``params = (cx, cy, side)``: the crop is the square of ``side``
full-frame pixels whose anchor point ``(cx, cy)`` (the landmark centroid) lands at
``(0.5, center_y)`` of the crop. :func:`crop_matrix` turns params into the 2x3 matrix
that maps full-frame pixels to crop pixels; its inverse pastes results back.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .smoothing import SmoothConfig, fill_missing, smooth


@dataclass(frozen=True)
class AlignConfig:
    """Crop framing.

    Attributes:
        size: crop side in pixels (128 and 256 are the trained sizes).
        side_over_radius: crop side / RMS landmark radius (5.5 frames head + hair + neck).
        center_y: where the landmark centroid lands vertically, as a fraction of the side.
        fill: grey level (0-255) for crop pixels outside the frame.
        smooth_strength: temporal smoothing of the crop transform (gaussian, x 0.04 s);
            much stronger than attribute smoothing because crops must not jitter.
    """

    size: int = 128
    side_over_radius: float = 5.5
    center_y: float = 0.58
    fill: int = 127
    smooth_strength: float = 3.0

    def __post_init__(self) -> None:
        if not (16 <= self.size <= 2048):
            raise ValueError(f"size: expected 16..2048 pixels, got {self.size}")
        if self.side_over_radius <= 0:
            raise ValueError(f"side_over_radius: expected > 0, got {self.side_over_radius}")


def landmark_params(landmarks: np.ndarray, config: AlignConfig = AlignConfig()) -> np.ndarray:
    """Crop params ``(cx, cy, side)`` in full-frame pixels from one face's landmarks.

    Convention:
        landmarks: (478, 3) float, pixels (x right, y down; z in the same units).
        returns: (3,) float32.
    """
    pts = np.asarray(landmarks, np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"landmarks: expected (K, 3), got {pts.shape}")
    centre = pts.mean(axis=0)
    radius = float(np.sqrt(((pts - centre) ** 2).sum(axis=1).mean()))
    return np.array([centre[0], centre[1], radius * config.side_over_radius], np.float32)


def smooth_params(params: np.ndarray, valid: np.ndarray, times: np.ndarray, config: AlignConfig = AlignConfig()) -> np.ndarray:
    """Fill and smooth per-frame crop params so crops of a clip do not jitter.

    Convention:
        params: (N, 3) (cx, cy, side) pixels; valid: (N,) bool; times: (N,) seconds.
        returns: (N, 3) float32.
    """
    filled = fill_missing(params, valid, times)
    return smooth(filled, times, SmoothConfig("gaussian", config.smooth_strength))


def crop_matrix(params: np.ndarray, config: AlignConfig = AlignConfig()) -> np.ndarray:
    """2x3 affine matrix mapping full-frame pixel coords to crop pixel coords.

    Convention:
        params: (3,) (cx, cy, side) full-frame pixels.
        returns: (2, 3) float32 M with ``crop_xy = M @ [x, y, 1]``; pixel coordinates
            with the origin at the top-left pixel's centre (OpenCV and kornia convention).
    """
    cx, cy, side = (float(v) for v in np.asarray(params).reshape(3))
    if side <= 0:
        raise ValueError(f"params: side must be > 0, got {side}")
    s = config.size / side
    return np.array(
        [[s, 0.0, config.size * 0.5 - s * cx], [0.0, s, config.size * config.center_y - s * cy]],
        np.float32,
    )


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (crop -> full frame), (2, 3) float32."""
    m = np.vstack([np.asarray(matrix, np.float64).reshape(2, 3), [0, 0, 1]])
    return np.linalg.inv(m)[:2].astype(np.float32)


def warp_crop(rgb: np.ndarray, matrix: np.ndarray, config: AlignConfig = AlignConfig()) -> np.ndarray:
    """Cut the aligned crop out of a frame.

    Convention:
        rgb: (H, W, 3) uint8; matrix: (2, 3) from :func:`crop_matrix`.
        returns: (size, size, 3) uint8; outside the frame filled with ``config.fill``.
        Strong downscales are pre-filtered (area resize) to avoid aliasing.
    """
    m = np.asarray(matrix, np.float64).copy()
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    src = rgb
    if scale < 0.5:
        # Shrink the frame first so the warp samples at about 1:1 (anti-aliasing).
        f = min(1.0, 2.0 * scale)
        h, w = rgb.shape[:2]
        nw, nh = max(1, int(round(w * f))), max(1, int(round(h * f)))
        src = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / w, nh / h
        # old pixel = (new + 0.5) / f - 0.5 (pixel-centre convention of cv2.resize)
        m[:, 2] += m[:, 0] * (0.5 / fx - 0.5) + m[:, 1] * (0.5 / fy - 0.5)
        m[:, 0] /= fx
        m[:, 1] /= fy
    return cv2.warpAffine(
        src, m, (config.size, config.size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(config.fill,) * 3,
    )


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (K, 2+) points' x, y; returns (K, 2) float32."""
    p = np.asarray(points, np.float64)[:, :2]
    m = np.asarray(matrix, np.float64)
    return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)
