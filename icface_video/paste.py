"""Paste-back: warp generated face crops into the full frame and blend them in (kornia).

The crop was cut with the 2x3 matrix ``M`` (full frame -> crop, :mod:`icface_video.align`);
its inverse carries the generated crop back. Only the face-oval region is replaced, with
a feathered mask, so pixels far from the face keep their original values exactly.
Warping is limited to the mask's bounding box in the frame (a region of interest).

Two ways in:

* :meth:`PasteBack.paste`: a finished R x R crop is warped back (upsampled to the face's
  size in the frame, so it carries the network's resolution).
* :meth:`PasteBack.paste_parts` (fast design, the default): the network's parts (where
  each crop pixel fetches the source, the mask, the drawn image) are carried to the frame
  instead, and the fetch samples the source *frame* itself: skin, hair and eyes keep the
  frame's own sharpness, and only the drawn part (mouth interior, lids) is upsampled.

Pixel coordinates follow OpenCV (pixel centres at integers, origin top-left), as
:func:`icface_video.align.warp_crop` cuts the crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .align import invert_matrix, transform_points
from .mesh_topology import FACE_OVAL
from .tensors import to_pixels


# Fetch areas above this many pixels are sampled from the uint8 frame with OpenCV instead of
# a float copy of the frame (memory: a 7680x4320 frame's float copy alone is 400 MB).
LARGE_FETCH = 4_000_000


@dataclass(frozen=True)
class PasteConfig:
    """Blending settings.

    Attributes:
        grow: how far the mask extends beyond the face oval, as a fraction of the oval's
            size (covers the hairline and jaw as the head moves).
        feather: Gaussian blur sigma of the mask edge, as a fraction of the crop side.
        color_match: shift the generated face's per-channel mean and spread to the
            source face's inside the mask (corrects colour drift of the generator).
    """

    grow: float = 0.12
    feather: float = 0.03
    color_match: bool = False


def grown_oval(landmarks: np.ndarray, grow: float) -> np.ndarray:
    """(36, 2) float64 the face oval pushed out from its mean by ``grow`` of its size
    (same pixel units as ``landmarks``, (478, 2+))."""
    pts = np.asarray(landmarks, np.float64)[list(FACE_OVAL), :2]
    centre = pts.mean(axis=0)
    return centre + (pts - centre) * (1.0 + grow)


def face_mask(landmarks: np.ndarray, size: int, config: PasteConfig = PasteConfig()) -> np.ndarray:
    """Feathered face-oval mask in crop coordinates.

    Convention:
        landmarks: (478, 2+) crop pixel coordinates (x right, y down, origin top-left).
        size: crop side in pixels.
        returns: (size, size) float32 in 0..1 (1 inside the grown oval).
    """
    grown = grown_oval(landmarks, config.grow)
    mask: np.ndarray = np.zeros((size, size), np.float32)
    cv2.fillPoly(mask, [np.round(grown * 4).astype(np.int32)], 1.0, lineType=cv2.LINE_AA, shift=2)
    sigma = max(config.feather * size, 0.5)
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    # Keep the crop's own border out (generated pixels there are padding).
    border = max(1, int(round(2 * sigma)))
    ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / border, 0, 1).astype(np.float32)
    return mask * ramp[:, None] * ramp[None, :]


def match_colors(generated: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-channel mean/std transfer inside ``mask``.

    Convention:
        generated: (B, 3, S, S) float; reference: (1 or B, 3, S, S) same range;
        mask: (1, 1, S, S) 0..1. returns (B, 3, S, S).
    """
    w = mask / mask.sum().clamp_min(1e-6)
    mu_g = (generated * w).sum((2, 3), keepdim=True)
    mu_r = (reference * w).sum((2, 3), keepdim=True)
    sd_g = (((generated - mu_g) ** 2) * w).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-3)
    sd_r = (((reference - mu_r) ** 2) * w).sum((2, 3), keepdim=True).sqrt()
    return (generated - mu_g) / sd_g * sd_r + mu_r


class PasteBack:
    """Blend generated crops into full frames, for one crop transform.

    Args:
        frame_size: (H, W) of the full frame.
        matrix: (2, 3) full frame -> crop (from :func:`icface_video.align.crop_matrix`).
        landmarks: (478, 2+) landmarks of the face in full-frame pixels (for the mask).
        size: crop side in pixels.
        config: :class:`PasteConfig`.
    """

    def __init__(self, frame_size: tuple[int, int], matrix: np.ndarray, landmarks: np.ndarray,
                 size: int, config: PasteConfig = PasteConfig()) -> None:
        h, w = frame_size
        self.config = config
        self.size = size
        crop_lms = transform_points(landmarks, matrix)
        mask = face_mask(crop_lms, size, config)
        self.mask_crop = torch.from_numpy(mask)[None, None]
        inv = invert_matrix(matrix)
        # Region of interest: the mask's support mapped into the frame, clipped.
        ys, xs = np.nonzero(mask > 1e-3)
        if len(xs) == 0:  # the face oval lies outside the crop: nothing to paste
            self.roi = (0, 0, 0, 0)
            self.mask_roi = None
            return
        corners = np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.min()], [xs.min(), ys.max() + 1], [xs.max() + 1, ys.max() + 1]], np.float32)
        fc = transform_points(corners, inv)
        x0, y0 = max(0, int(np.floor(fc[:, 0].min())) - 1), max(0, int(np.floor(fc[:, 1].min())) - 1)
        x1, y1 = min(w, int(np.ceil(fc[:, 0].max())) + 2), min(h, int(np.ceil(fc[:, 1].max())) + 2)
        self.roi = (x0, y0, x1, y1)
        shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
        roi_inv = (shift @ np.vstack([inv, [0, 0, 1]]))[:2]
        self.matrix = torch.from_numpy(roi_inv.astype(np.float32))[None]
        import kornia

        self._warp = kornia.geometry.transform.warp_affine
        self._remap = kornia.geometry.transform.remap
        if not (x1 > x0 and y1 > y0):
            self.mask_roi = None
            return
        # Each ROI pixel's position in the crop, in grid_sample's -1..1 units with
        # align_corners=True (pixel centres at integers, as in OpenCV): one 2x3 affine map.
        m = torch.from_numpy(((np.asarray(matrix, np.float64) * (2.0 / (size - 1)))
                              - np.array([[0, 0, 1.0], [0, 0, 1.0]])).astype(np.float32))
        cols = torch.arange(x0, x1, dtype=torch.float32)
        rows = torch.arange(y0, y1, dtype=torch.float32)[:, None]
        gx_, gy_ = m[0, 0] * cols + m[0, 1] * rows + m[0, 2], m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
        self._roi_grid = (gx_[None], gy_[None])  # each (1, h, w)
        self.mask_roi = self._remap(self.mask_crop, *self._roi_grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True, normalized_coordinates=True)
        # The frame area the fetch may sample: the ROI grown by half its size (flows are far smaller).
        gx, gy = (x1 - x0) // 2, (y1 - y0) // 2
        bx0, by0, bx1, by1 = max(0, x0 - gx), max(0, y0 - gy), min(w, x1 + gx), min(h, y1 + gy)
        self._fetch_box = (bx0, by0, bx1, by1)
        # crop grid_sample coords (align_corners=False) -> crop pixels -> frame pixels -> box coords.
        to_pixels = np.array([[size / 2.0, 0, (size - 1) / 2.0], [0, size / 2.0, (size - 1) / 2.0], [0, 0, 1]])
        to_box = np.array([[2.0 / max(bx1 - bx0 - 1, 1), 0, -1 - 2.0 * bx0 / max(bx1 - bx0 - 1, 1)],
                           [0, 2.0 / max(by1 - by0 - 1, 1), -1 - 2.0 * by0 / max(by1 - by0 - 1, 1)], [0, 0, 1]])
        fetch = to_box @ np.vstack([inv, [0, 0, 1]]) @ to_pixels
        self._fetch_affine = torch.from_numpy(fetch[:2].astype(np.float32))
        self._pictures: tuple[np.ndarray, torch.Tensor] | None = None

    def paste(self, frames: np.ndarray, crops: torch.Tensor, reference: torch.Tensor | None = None) -> np.ndarray:
        """Blend generated crops into frames.

        Convention:
            frames: (B, H, W, 3) uint8 RGB (not modified) or (H, W, 3) shared by all
                (a still source: its masked background is computed once and reused).
            crops: (B, 3, S, S) float RGB in [-1, 1].
            reference: (1, 3, S, S) the source crop in [-1, 1], for colour matching.
            returns: (B, H, W, 3) uint8.
        """
        b = crops.shape[0]
        base = np.broadcast_to(frames, (b,) + frames.shape[-3:]) if frames.ndim == 3 else frames
        out = np.array(base, copy=True)
        if self.mask_roi is None:
            return out
        crops = crops.float()
        if self.config.color_match and reference is not None:
            crops = match_colors(crops, reference.float(), self.mask_crop)
        x0, y0, x1, y1 = self.roi
        rgb = to_pixels(crops)
        warped = self._warp(rgb, self.matrix.expand(b, 2, 3), (y1 - y0, x1 - x0), align_corners=True)
        return self._blend(out, frames, warped)

    def paste_parts(self, frames: np.ndarray, parts: dict[str, torch.Tensor],
                    reference: torch.Tensor | None = None) -> np.ndarray:
        """Blend a fast-design render into frames at the frames' own resolution.

        Convention:
            frames: (B, H, W, 3) uint8 RGB or (H, W, 3) shared by all (a still source);
                these are also the pictures the fetch samples (the source frames).
            parts: from :meth:`icface_video.model.ReenactmentModel.render_parts`: ``grid``
                (B, S, S, 2) -1..1 source-crop coordinates (``align_corners=False``),
                ``mask`` (B, 1, S, S) 0..1, ``generated`` (B, 3, S, S) in [-1, 1].
            reference: (1, 3, S, S) the source crop in [-1, 1], for colour matching of the
                drawn part.
            returns: (B, H, W, 3) uint8.
        """
        grid, mask, generated = parts["grid"].float(), parts["mask"].float(), parts["generated"].float()
        b, size = grid.shape[0], grid.shape[1]
        if size != self.size:
            raise ValueError(f"parts: rendered at {size} px, this paste-back expects {self.size}")
        base = np.broadcast_to(frames, (b,) + frames.shape[-3:]) if frames.ndim == 3 else frames
        out = np.array(base, copy=True)
        if self.mask_roi is None:
            return out
        if self.config.color_match and reference is not None:
            generated = match_colors(generated, reference.float(), self.mask_crop)
        x0, y0, x1, y1 = self.roi
        h, w = y1 - y0, x1 - x0
        # 1. The network's parts at every ROI pixel (at its position in the crop); the
        #    fetch positions are mapped to the fetched frame area first (an affine map).
        a = self._fetch_affine
        fetch = torch.einsum("ij,bjyx->biyx", a[:, :2], grid.permute(0, 3, 1, 2)) + a[:, 2, None, None]
        drawn = to_pixels(generated)
        stacked = torch.cat([fetch, mask.clamp(0, 1), drawn], dim=1)
        roi_x, roi_y = self._roi_grid
        at_roi = self._remap(stacked, roi_x.expand(b, h, w), roi_y.expand(b, h, w), mode="bilinear",
                             padding_mode="border", align_corners=True, normalized_coordinates=True)
        # 2. Fetch from the source frame(s); blend with the drawn part, then with the frame.
        bx0, by0, bx1, by1 = self._fetch_box
        if (bx1 - bx0) * (by1 - by0) > LARGE_FETCH:
            # Large frames: sample the uint8 frame itself with OpenCV (no float copy of it).
            pics = np.broadcast_to(frames, (b,) + frames.shape[-3:]) if frames.ndim == 3 else frames
            px = (at_roi[:, 0] + 1.0) * (0.5 * (bx1 - bx0 - 1)) + bx0
            py = (at_roi[:, 1] + 1.0) * (0.5 * (by1 - by0 - 1)) + by0
            fetched = torch.stack([torch.from_numpy(cv2.remap(
                pics[i], px[i].numpy(), py[i].numpy(), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
                for i in range(b)]).permute(0, 3, 1, 2).float()
        else:
            fetched = self._remap(self._fetch_pictures(frames, b), at_roi[:, 0], at_roi[:, 1], mode="bilinear",
                                  padding_mode="border", align_corners=True, normalized_coordinates=True)
        face = torch.lerp(at_roi[:, 3:6], fetched, at_roi[:, 2:3])
        return self._blend(out, frames, face)

    def _blend(self, out: np.ndarray, frames: np.ndarray, face: torch.Tensor) -> np.ndarray:
        """Write ``face * m + frame * (1 - m)`` into ``out``'s region of interest (m: the feathered mask).

        Convention: out (B, H, W, 3) uint8, a copy of ``frames``; face (B, 3, h, w) float
        0..255 in the region of interest (modified in place); returns ``out``.
        """
        x0, y0, x1, y1 = self.roi
        mask = self.mask_roi
        if mask is None:  # paste and paste_parts return before blending then
            raise RuntimeError("paste-back: no region to blend (the face oval lies outside the crop)")
        # The second term is fixed for a still frame (cached).
        background = self._background(frames, mask) if frames.ndim == 3 else None
        if background is None:
            region = torch.from_numpy(np.ascontiguousarray(out[:, y0:y1, x0:x1])).permute(0, 3, 1, 2).float()
            background = region.mul_(1.0 - mask)
        face.mul_(mask).add_(background).add_(0.5).clamp_(0, 255)  # +0.5 then truncation rounds
        out[:, y0:y1, x0:x1] = face.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return out

    def _fetch_pictures(self, frames: np.ndarray, batch: int) -> torch.Tensor:
        """(B, 3, h, w) float 0..255: the fetched frame area of each frame (cached for a still)."""
        bx0, by0, bx1, by1 = self._fetch_box
        if frames.ndim == 4:
            area = np.ascontiguousarray(frames[:, by0:by1, bx0:bx1])
            return torch.from_numpy(area).permute(0, 3, 1, 2).float()
        if self._pictures is None or self._pictures[0] is not frames:
            area = np.ascontiguousarray(frames[by0:by1, bx0:bx1])
            self._pictures = (frames, torch.from_numpy(area).permute(2, 0, 1)[None].float())
        return self._pictures[1].expand(batch, -1, -1, -1)

    def _background(self, frame: np.ndarray, mask: torch.Tensor) -> torch.Tensor:
        """(1, 3, h, w) float: ``frame``'s region of interest times (1 - ``mask``, the ROI mask), cached per frame."""
        if getattr(self, "_bg_frame", None) is not frame:  # the same array object (kept alive here)
            x0, y0, x1, y1 = self.roi
            region = torch.from_numpy(np.ascontiguousarray(frame[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
            self._bg = region.mul_(1.0 - mask)
            self._bg_frame = frame
        return self._bg
