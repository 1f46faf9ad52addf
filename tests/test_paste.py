"""Paste-back geometry on a real photo: the crop path and the full-resolution parts path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icface_video.mesh_warp import identity_grid
from icface_video.paste import PasteBack
from icface_video.source import analyze_still


@pytest.fixture(scope="module")
def still(faces_root):
    # 512x512 portrait; the face covers about 300 px, so the crop is a 4x downscale.
    return analyze_still(faces_root / "SadTalker/test/examples/source_image/RD_Radio34_000.mp4", 128)


def _paster(still) -> PasteBack:
    return PasteBack(still.rgb.shape[:2], still.matrix, still.landmarks, 128)


def test_parts_of_the_identity_warp_give_the_frame_back(still):
    """Fetch = identity, mask = 1: every pixel is fetched from where it already is."""
    parts = {"grid": identity_grid(2, 128, 128), "mask": torch.ones(2, 1, 128, 128),
             "generated": torch.zeros(2, 3, 128, 128)}
    out = _paster(still).paste_parts(still.rgb, parts)
    assert out.shape == (2,) + still.rgb.shape
    assert np.abs(out.astype(int) - still.rgb.astype(int)).max() <= 1


def test_drawn_part_pastes_like_the_crop_path(still):
    """Mask = 0: the drawn image lands where paste() puts the same crop."""
    crop = still.crop
    parts = {"grid": identity_grid(1, 128, 128), "mask": torch.zeros(1, 1, 128, 128), "generated": crop}
    paster = _paster(still)
    via_parts = paster.paste_parts(still.rgb, parts)[0].astype(float)
    via_crop = paster.paste(still.rgb, crop)[0].astype(float)
    assert np.abs(via_parts - via_crop).mean() < 0.5 and np.abs(via_parts - via_crop).max() <= 2


def test_a_fetch_shift_moves_the_face_by_the_same_frame_distance(still):
    """Fetching 4 crop pixels to the right shows the frame 4 / scale pixels to the right."""
    scale = float(still.matrix[0, 0])  # crop pixels per frame pixel
    grid = identity_grid(1, 128, 128).clone()
    grid[..., 0] += 2 * 4 / 128
    parts = {"grid": grid, "mask": torch.ones(1, 1, 128, 128), "generated": torch.zeros(1, 3, 128, 128)}
    paster = _paster(still)
    out = paster.paste_parts(still.rgb, parts)[0].astype(float)
    x0, y0, x1, y1 = paster.roi
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    shift = int(round(4 / scale))
    inner = np.s_[cy - 20:cy + 20, cx - 20:cx + 20]
    moved = np.s_[cy - 20:cy + 20, cx - 20 + shift:cx + 20 + shift]
    assert np.abs(out[inner] - still.rgb[moved].astype(float)).mean() < 3
    assert np.abs(out[inner] - still.rgb[inner].astype(float)).mean() > 3 * np.abs(out[inner] - still.rgb[moved].astype(float)).mean()


def test_wrong_parts_size_is_named():
    frame = np.zeros((64, 64, 3), np.uint8)
    lms = np.stack(np.meshgrid(np.linspace(20, 44, 22), np.linspace(20, 44, 22)), -1).reshape(-1, 2)[:478]
    lms = np.concatenate([lms, np.full((478 - len(lms), 2), 32.0)]) if len(lms) < 478 else lms
    paster = PasteBack((64, 64), np.array([[2.0, 0, 0], [0, 2.0, 0]]), lms, 128)
    with pytest.raises(ValueError, match="parts"):
        paster.paste_parts(frame, {"grid": identity_grid(1, 64, 64), "mask": torch.ones(1, 1, 64, 64),
                                   "generated": torch.zeros(1, 3, 64, 64)})
