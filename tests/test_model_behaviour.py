"""What the trained model does, measured by re-extracting attributes from its outputs.

Uses the shipped default model (``icface_video/weights``); set ``ICFACE_TEST_MODEL`` to a
model or checkpoint folder to test another. Sources are people of the ``test`` split
(never seen in training); drivers may be any clip. Re-extracted AUs are compared on the
raw scale v1 (``to_scale(..., "v1")``), the one the thresholds were measured on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from icface_video.attributes import AU_NAMES, NUM_AUS, to_scale
from icface_video.track import analyze_media
from conftest import frame_png

AU = {name: i for i, name in enumerate(AU_NAMES)}
YAW = NUM_AUS + 1


@pytest.fixture(scope="module")
def model_dir() -> str | None:
    return os.environ.get("ICFACE_TEST_MODEL") or None


@pytest.fixture(scope="module")
def model(model_dir):
    from icface_video.model import ReenactmentModel

    return ReenactmentModel.load(model_dir)




def _model_args(model_dir):
    return ["--model", model_dir] if model_dir else []


@pytest.fixture(scope="module")
def neutral_photo(faces_root, tmp_path_factory) -> Path:
    clip = faces_root / "dreamtalk/data/style_clip/video/W009_front_neutral_level1_001.mp4"
    return frame_png(clip, 0, tmp_path_factory.mktemp("src") / "w009_neutral.png")


def test_shipped_model_renders_and_control_works(model, neutral_photo, tmp_path):
    """G_N then G_A on a real face: right size, and AU12 set high re-extracts higher than AU12 = 0."""
    from icface_video.source import analyze_still
    from icface_video.tensors import to_uint8

    still = analyze_still(neutral_photo, model.resolution)
    cache = model.prepare_source(still.crop, torch.from_numpy(still.attrs)[None])
    neutral = model.neutralize(cache)
    assert neutral.shape == (1, 3, model.resolution, model.resolution)
    low, high = still.attrs.copy(), still.attrs.copy()
    low[AU["AU12"]], high[AU["AU12"]] = 0.0, 5.0
    low[AU["AU06"]], high[AU["AU06"]] = 0.0, 4.0
    out = model.render(cache, torch.from_numpy(np.stack([low, high])))
    assert out.shape == (2, 3, model.resolution, model.resolution)
    import cv2

    measured = []
    for k, img in enumerate(to_uint8(out)):
        p = tmp_path / f"{k}.png"
        cv2.imwrite(str(p), cv2.cvtColor(cv2.resize(img, (256, 256), interpolation=cv2.INTER_CUBIC), cv2.COLOR_RGB2BGR))
        measured.append(to_scale(analyze_media(p).raw_attrs, "v1")[0, AU["AU12"]])
    assert measured[1] > measured[0] + 0.5, measured


def _au(path: Path) -> np.ndarray:
    return to_scale(analyze_media(path).raw_attrs[0], "v1")


def test_smile_preset_raises_au12_neutral_lowers_it(run_cli, model_dir, neutral_photo, faces_root, tmp_path):
    smiled = tmp_path / "smile.png"
    r = run_cli(["edit", "-s", neutral_photo, "--preset", "smile", "-o", smiled, *_model_args(model_dir)])
    assert r.exit_code == 0, r.stderr
    before, after = _au(neutral_photo), _au(smiled)
    assert after[AU["AU12"]] > before[AU["AU12"]] + 0.5, (before[AU["AU12"]], after[AU["AU12"]])
    happy = frame_png(faces_root / "dreamtalk/data/style_clip/video/W009_front_happy_level3_001.mp4", 60,
                       tmp_path / "happy.png")
    relaxed = tmp_path / "relaxed.png"
    r = run_cli(["edit", "-s", happy, "--preset", "neutral", "-o", relaxed, *_model_args(model_dir)])
    assert r.exit_code == 0, r.stderr
    before, after = _au(happy), _au(relaxed)
    assert after[AU["AU12"]] < before[AU["AU12"]] - 0.5, (before[AU["AU12"]], after[AU["AU12"]])


def _track(path: Path) -> np.ndarray:
    return to_scale(analyze_media(path).attributes(), "v1")


def test_mode_pose_follows_yaw_and_keeps_expression(run_cli, model_dir, neutral_photo, faces_root, tmp_path):
    driver = faces_root / "LivePortrait/assets/examples/driving/d12.mp4"  # head turns, about 33 deg of yaw
    out = tmp_path / "pose.mp4"
    r = run_cli(["reenact", "-s", neutral_photo, "-d", driver, "--mode", "pose", "-o", out, "--no-audio",
                 "--x264-preset", "ultrafast", *_model_args(model_dir)])
    assert r.exit_code == 0, r.stderr
    drv, res, src = _track(driver), _track(out), _au(neutral_photo)
    drv_yaw, res_yaw = np.degrees(drv[:, YAW]), np.degrees(res[:, YAW])
    assert np.ptp(res_yaw) > 0.4 * np.ptp(drv_yaw), (np.ptp(res_yaw), np.ptp(drv_yaw))
    assert np.corrcoef(res_yaw, drv_yaw)[0, 1] > 0.7
    # Expression stays the source's: closer to the source's AUs than the driver's AUs are.
    res_dev = np.abs(res[:, :NUM_AUS] - src[:NUM_AUS]).mean()
    drv_dev = np.abs(drv[:, :NUM_AUS] - src[:NUM_AUS]).mean()
    assert res_dev < drv_dev, (res_dev, drv_dev)


def test_mode_expression_follows_aus_and_keeps_pose(run_cli, model_dir, neutral_photo, faces_root, tmp_path):
    driver = faces_root / "LivePortrait/assets/examples/driving/d12.mp4"
    out = tmp_path / "expr.mp4"
    r = run_cli(["reenact", "-s", neutral_photo, "-d", driver, "--mode", "expression", "-o", out, "--no-audio",
                 "--x264-preset", "ultrafast", *_model_args(model_dir)])
    assert r.exit_code == 0, r.stderr
    drv, res, src = _track(driver), _track(out), _au(neutral_photo)
    # Pose stays near the source's while the driver turns its head.
    assert np.ptp(np.degrees(res[:, YAW])) < 0.5 * np.ptp(np.degrees(drv[:, YAW]))
    assert abs(np.degrees(np.median(res[:, YAW]) - src[YAW])) < 5.0
    # Mouth and eyes follow the driver's changes: AU25/AU26/AU45 correlate over time.
    followed = [np.corrcoef(res[:, AU[a]], drv[:, AU[a]])[0, 1] for a in ("AU25", "AU26", "AU45")]
    assert max(followed) > 0.5, followed


def test_detail_paste_is_sharper_and_keeps_the_edit(run_cli, model_dir, faces_root, tmp_path):
    """Network renderer: with paste-back at the frame's resolution (default ``--detail``), a 512x512 photo
    edited with the smile preset has more fine detail in the face than with ``--no-detail``
    (the face pasted from 128 px), the same re-extracted smile, and the same pixels far
    from the face."""
    import cv2

    photo = frame_png(faces_root / "SadTalker/test/examples/source_image/RD_Radio34_000.mp4", 0,
                       tmp_path / "radio.png")  # 512x512, face about 300 px
    outs = {}
    for name, extra in (("sharp", ["--renderer", "network"]), ("plain", ["--renderer", "network", "--no-detail"])):
        outs[name] = tmp_path / f"{name}.png"
        r = run_cli(["edit", "-s", photo, "--preset", "smile", "-o", outs[name], *extra, *_model_args(model_dir)])
        assert r.exit_code == 0, r.stderr
    images = {k: cv2.imread(str(p)) for k, p in outs.items()}
    source = cv2.imread(str(photo))
    assert images["sharp"].shape == images["plain"].shape == source.shape

    lms = analyze_media(photo, keep_landmarks=True).landmarks[0]
    x0, y0 = np.floor(lms[:, :2].min(axis=0)).astype(int)
    x1, y1 = np.ceil(lms[:, :2].max(axis=0)).astype(int)

    def detail(img: np.ndarray) -> float:
        face = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
        return float(cv2.Laplacian(face, cv2.CV_64F).var())

    assert detail(images["sharp"]) > 3 * detail(images["plain"]), (detail(images["sharp"]), detail(images["plain"]))
    au_sharp, au_plain = _au(outs["sharp"]), _au(outs["plain"])
    assert abs(au_sharp[AU["AU12"]] - au_plain[AU["AU12"]]) < 0.5, (au_sharp[AU["AU12"]], au_plain[AU["AU12"]])
    assert au_sharp[AU["AU12"]] > _au(photo)[AU["AU12"]] + 0.5
    # The top band of the frame is background in all three.
    assert np.array_equal(images["sharp"][:8], source[:8]) and np.array_equal(images["plain"][:8], source[:8])


def test_edit_closes_eyes_when_au45_is_set_high(run_cli, model_dir, neutral_photo, tmp_path):
    """``edit --set AU45=4.5`` on an open-eyed photo, pasted back at the photo's resolution:
    the eyelid warp closes the eyes (re-extracted AU45 rises by more than 1.5), the photo
    keeps its size, and with ``--no-eyelids`` the eyes stay (nearly) open."""
    import cv2

    shut = tmp_path / "shut.png"
    r = run_cli(["edit", "-s", neutral_photo, "--set", "AU45=4.5", "-o", shut, *_model_args(model_dir)])
    assert r.exit_code == 0, r.stderr
    assert cv2.imread(str(shut)).shape == cv2.imread(str(neutral_photo)).shape
    before, after = _au(neutral_photo)[AU["AU45"]], _au(shut)[AU["AU45"]]
    assert after > before + 1.5, (before, after)
    plain = tmp_path / "plain.png"  # network renderer, --no-eyelids: the generator alone keeps them open
    r = run_cli(["edit", "-s", neutral_photo, "--set", "AU45=4.5", "--no-eyelids", "--renderer", "network",
                 "-o", plain, *_model_args(model_dir)])
    assert r.exit_code == 0, r.stderr
    assert _au(plain)[AU["AU45"]] < before + 1.0


def test_blinks_follow_the_driver_over_a_video(run_cli, model_dir, neutral_photo, faces_root, tmp_path):
    """``reenact --mode expression`` with a driver that blinks (d3.mp4, 354 frames, 99 of them
    with AU45 > 2.5): the output's re-extracted AU45 follows the driver's over time
    (measured: correlation 0.95, closed frames read 2.1; 0.65 and 0.1 with --no-eyelids)."""
    driver = faces_root / "LivePortrait/assets/examples/driving/d3.mp4"
    out = tmp_path / "blinks.mp4"
    r = run_cli(["reenact", "-s", neutral_photo, "-d", driver, "--mode", "expression", "-o", out, "--no-audio",
                 "--x264-preset", "ultrafast", *_model_args(model_dir)])
    assert r.exit_code == 0, r.stderr
    drv, res = _track(driver)[:, AU["AU45"]], _track(out)[:, AU["AU45"]]
    assert len(drv) == len(res)
    closed = drv > 2.5
    assert closed.sum() > 20
    assert np.corrcoef(res, drv)[0, 1] > 0.8
    assert res[closed].mean() > 1.5 and res[~closed].mean() < 1.0
