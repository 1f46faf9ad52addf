"""The eyelid warp (``icface_video/eyelids.py``): fitted geometry, exactness, and real faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from icface_video.attributes import AU_NAMES, to_scale
from icface_video.errors import InputError
from icface_video.eyelids import EYELIDS_NAME, EyelidConfig, eye_frames, eye_opening, eyelid_grid, move_lids
from icface_video.mesh_topology import EYES
from icface_video.mesh_warp import identity_grid
from icface_video.model import WEIGHTS_DIR, ReenactmentModel

AU45 = AU_NAMES.index("AU45")


@pytest.fixture(scope="module")
def shipped() -> EyelidConfig:
    return EyelidConfig.load(WEIGHTS_DIR / EYELIDS_NAME)


@pytest.fixture(scope="module")
def open_face(faces_root):
    """A real open-eyed test-split face: (SourceFrame, crop landmarks (1, 478, 2))."""
    from icface_video.source import analyze_still

    photo = faces_root / "dreamtalk/data/style_clip/video/W009_front_neutral_level1_001.mp4"
    still = analyze_still(photo, 128)
    return still, torch.from_numpy(still.crop_landmarks)[None]


def test_shipped_eyelids_are_fitted_on_train_and_monotone(shipped: EyelidConfig) -> None:
    assert shipped.provenance["split"] == "train"
    assert shipped.openness[0] > 0.9 and shipped.openness[-1] < 0.2
    assert all(b <= a for a, b in zip(shipped.openness, shipped.openness[1:]))
    assert shipped.gain >= 1.0
    assert all(r2 > 0.8 for r2 in shipped.provenance["contour_r2"])  # the lids' motion is well explained
    for eye, motion in zip(EYES, shipped.motion):
        # Closing moves every upper-lid point down the eye frame and the lower lid up less.
        assert all(motion[i][1] < 0 for i in eye.upper) and np.mean([motion[i][1] for i in eye.lower]) > 0


def test_same_au45_is_the_identity_warp(shipped: EyelidConfig, open_face) -> None:
    _, lms = open_face
    au = torch.tensor([0.7])
    assert torch.equal(move_lids(shipped, lms, au, au), lms)
    grid = eyelid_grid(shipped, lms, au, au, 128)
    assert torch.allclose(grid, identity_grid(1, 128, 128), atol=1e-6)


def test_closing_shuts_the_lids_only_around_the_eyes(shipped: EyelidConfig, open_face) -> None:
    still, lms = open_face
    src_au = torch.tensor([float(to_scale(still.attrs, "v1")[AU45])])  # the lids' scale (v1)
    shut = move_lids(shipped, lms, src_au, torch.tensor([4.5]))
    wide = move_lids(shipped, lms, src_au, torch.tensor([0.0]))
    for eye in EYES:
        before = float(eye_opening(lms, eye))
        assert before > 0.15  # the source's eyes are open
        assert float(eye_opening(shut, eye)) < 0.15 * before
        assert float(eye_opening(wide, eye)) <= shipped.max_ratio * before + 1e-5
        # No upper-lid point passes the lower-lid point facing it (along the eye frame's y).
        c, _, y, _ = eye_frames(lms, eye)
        across = ((shut[:, list(eye.lower)] - shut[:, list(eye.upper)]) * y[:, None]).sum(-1)
        assert bool((across >= -1e-4).all())
    moved = set(i for m in shipped.motion for i in m)
    still_points = [i for i in range(478) if i not in moved]
    assert torch.equal(shut[0, still_points], lms[0, still_points])
    grid = eyelid_grid(shipped, lms, src_au, torch.tensor([4.5]), 128)
    changed = (grid - identity_grid(1, 128, 128)).abs().amax(-1)[0] > 1e-6
    ys, xs = np.nonzero(changed.numpy())
    eye_pts = lms[0, [i for eye in EYES for i in eye.moved + eye.corners]].numpy()
    lo, hi = eye_pts.min(0) - 3, eye_pts.max(0) + 3
    assert len(xs) > 50
    assert xs.min() >= lo[0] and xs.max() <= hi[0] and ys.min() >= lo[1] and ys.max() <= hi[1]


def test_shipped_model_closes_eyes_with_the_warp(open_face) -> None:
    """A real open-eyed face driven with AU45 = 4.5: re-extracted AU45 rises by more than 1.5
    with the eyelid warp, and the model alone (no landmarks given) does not close them."""
    import cv2

    from icface_video.attributes import attributes_from_face, from_scale
    from icface_video.face import FaceAnalyzer
    from icface_video.source import encode_sources
    from icface_video.tensors import to_uint8

    still, _ = open_face
    model = ReenactmentModel.load()
    assert model.eyelids is not None
    drive = torch.from_numpy(to_scale(still.attrs, "v1"))[None]  # on the raw scale v1 of the thresholds
    drive[0, AU45] = 4.5
    drive = from_scale(drive, "v1")
    with_lids = model.render_parts(encode_sources(model, [still]), drive)
    without = model.render_parts(model.prepare_source(still.crop, torch.from_numpy(still.attrs)[None]), drive)
    with FaceAnalyzer(mode="image") as fa:
        def read(img: torch.Tensor) -> float:
            face = fa.analyze(cv2.resize(to_uint8(img)[0], (256, 256), interpolation=cv2.INTER_CUBIC))
            return float(to_scale(attributes_from_face(face.blendshapes, face.matrix), "v1")[AU45])

        base = float(to_scale(still.attrs, "v1")[AU45])
        assert read(with_lids["image"]) > base + 1.5, (base, read(with_lids["image"]))
        assert read(without["image"]) < base + 1.0
    # The warp is part of the returned grid (used by the full-resolution paste-back) and
    # changes nothing far from the eyes.
    diff = (with_lids["grid"] - without["grid"]).abs().amax(-1)[0]
    assert float(diff.max()) > 0.02 and float(diff[100:].max()) == 0.0


def test_bad_eyelid_files_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(WEIGHTS_DIR, folder)
    (folder / EYELIDS_NAME).write_text("{not json")
    with pytest.raises(InputError, match=EYELIDS_NAME):
        ReenactmentModel.load(folder)
    doc = json.loads((WEIGHTS_DIR / EYELIDS_NAME).read_text())
    doc["openness"] = list(reversed(doc["openness"]))
    (folder / EYELIDS_NAME).write_text(json.dumps(doc))
    with pytest.raises(InputError, match="openness must not increase"):
        ReenactmentModel.load(folder)
    assert ReenactmentModel.load(folder, eyelids=False).eyelids is None
    (folder / EYELIDS_NAME).unlink()
    assert ReenactmentModel.load(folder).eyelids is None  # a model without the file renders as before


def test_prepare_source_checks_landmarks() -> None:
    model = ReenactmentModel.load()
    crop = torch.zeros(1, 3, 128, 128)
    with pytest.raises(ValueError, match="landmarks"):
        model.prepare_source(crop, torch.zeros(1, 20), torch.zeros(1, 68, 2))
    bad = torch.zeros(1, 478, 2)
    bad[0, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="landmarks"):
        model.prepare_source(crop, torch.zeros(1, 20), bad)


def test_eye_contours_are_the_lid_topology_in_polygon_order():
    """mesh_topology derives each eye opening (the geometric renderer's polygon) from the
    eyelid topology: outer corner, upper lid outer -> inner, inner corner, lower lid back."""
    from icface_video.mesh_topology import EYE_CONTOURS

    assert EYE_CONTOURS[0] == (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
    for eye, contour in zip(EYES, EYE_CONTOURS):
        assert len(contour) == len(set(contour)) == 2 + len(eye.upper) + len(eye.lower)
        assert contour[0] == eye.corners[0] and contour[len(eye.upper) + 1] == eye.corners[1]
