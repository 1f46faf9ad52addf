"""Part drivers in relative mode, keyframes before their first key, face choice.

The part-driver test renders with the shipped model on real clips and re-extracts the
output: what the driver's mouth does must show in the output's mouth.
"""

from __future__ import annotations


import numpy as np
import pytest

from icface_video.attributes import NUM_ATTRS
from icface_video.controls import attr_index
from icface_video.driving import AttributeTrack, compose, load_track, region_columns
from icface_video.errors import InputError
from icface_video.keyframes import load_keyframes
from conftest import frame_png

AU17, AU23, AU25, AU26, AU01, YAW = (attr_index(n) for n in ("AU17", "AU23", "AU25", "AU26", "AU01", "yaw"))
DRIVING = "LivePortrait/assets/examples/driving"


def _track(values: np.ndarray, fps: float = 25.0) -> AttributeTrack:
    n = len(values)
    return AttributeTrack("drv", np.arange(n) / fps, values.astype(np.float32), np.ones(n, bool), fps)




def test_each_part_driver_has_its_own_reference():
    """The mouth driver's reference is its most closed mouth, even where the rest of its face is busier."""
    n = 20
    drv = np.zeros((n, NUM_ATTRS), np.float32)
    drv[: n // 2, AU01] = 4.0                    # raised brows, mouth closed; then relaxed brows, open mouth
    drv[n // 2:, AU25] = 3.0
    drv[:, YAW] = 0.3
    track = _track(drv)
    assert track.reference(region_columns("mouth"))[AU25] == 0.0
    assert track.reference()[AU25] == pytest.approx(3.0)  # whole face: the relaxed-brow, open-mouth frame
    src = np.zeros(NUM_ATTRS, np.float32)
    out = compose(src, track.times, None, {"mouth": track}, relative=True)
    assert np.allclose(out[:, AU25], drv[:, AU25])          # the full change, from a closed mouth
    assert np.allclose(out[:, AU01], 0.0) and np.allclose(out[:, YAW], 0.0)  # other parts untouched


def test_resting_closers_are_released_as_the_lips_part():
    n = 11
    drv = np.zeros((n, NUM_ATTRS), np.float32)
    drv[:, AU25] = np.linspace(0, 4, n)
    src = np.zeros(NUM_ATTRS, np.float32)
    src[AU23], src[AU17] = 1.8, 1.5                  # a face resting with pressed lips
    track = _track(drv)
    out = compose(src, track.times, None, {"mouth": track}, relative=True)
    assert out[0, AU23] == pytest.approx(1.8) and out[0, AU17] == pytest.approx(1.5)  # closed: kept
    assert np.allclose(out[5:, AU23], 0.0) and np.allclose(out[5:, AU17], 0.0)        # 2 AU of opening: released
    assert out[2, AU23] == pytest.approx(1.8 * (1 - 0.8 / 2.0), abs=1e-5)            # in proportion
    # Absolute driving copies the driver's values; a pose driver leaves the mouth alone.
    assert np.allclose(compose(src, track.times, None, {"mouth": track}, relative=False)[:, AU23], 0.0)
    assert np.allclose(compose(src, track.times, None, {"pose": track}, relative=True)[:, AU23], 1.8)


def test_mouth_part_driver_opens_the_output_mouth(run_cli, faces_root, tmp_path):
    """--pose-from one person, --mouth-from another's CSV: the output's AU25/AU26 move by at
    least 60% of the driver's change (the whole-face reference of before gave 5% on a
    source resting with pressed lips)."""
    source = frame_png(faces_root / "dreamtalk/data/style_clip/video/W009_front_neutral_level1_001.mp4", 73,
                        tmp_path / "w009_closed.png")  # a closed mouth (AU25 0.02)
    mouth_csv = tmp_path / "mouth.csv"
    code, _, err = run_cli(["extract", faces_root / DRIVING / "d11.mp4", "--max-frames", "80", "-o", mouth_csv, "-q"])
    assert code == 0, err
    out = tmp_path / "mixed.mp4"
    code, _, err = run_cli(["reenact", "-s", source, "--pose-from", faces_root / DRIVING / "d0.mp4",
                            "--mouth-from", mouth_csv, "-o", out, "--x264-preset", "ultrafast", "-q"])
    assert code == 0, err
    measured = tmp_path / "mixed.csv"
    code, _, err = run_cli(["extract", out, "-o", measured, "--smooth", "none", "-q"])
    assert code == 0, err
    result = load_track(measured)
    driver = load_track(mouth_csv)
    planned = driver.sample(result.times)
    ref = driver.reference(region_columns("mouth"))
    for au in (AU25, AU26):
        change = planned[:, au] - ref[au]
        top, low = change >= np.quantile(change, 0.9), change <= np.quantile(change, 0.1)
        assert change[top].mean() > 1.5  # the driver's mouth really opens
        moved = result.attrs[top, au].mean() - result.attrs[low, au].mean()
        assert moved >= 0.6 * change[top].mean(), (au, moved, change[top].mean())


def test_value_keyed_only_later_starts_from_the_source_and_eases_in(tmp_path):
    f = tmp_path / "k.toml"
    f.write_text('[[key]]\ntime = 0\nAU01 = 1\n[[key]]\ntime = 2.0\nAU12 = 4\n[[key]]\ntime = 3.0\nAU12 = 1\n')
    base = np.zeros(NUM_ATTRS, np.float32)
    au12 = attr_index("AU12")
    base[au12] = 0.5  # the source's own smile
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])
    out = load_keyframes(f).evaluate(base, times)[:, au12]
    assert out[0] == pytest.approx(0.5)             # the source's value at t = 0, not the key's 4
    assert out[2] == pytest.approx(0.5 + 3.5 / 2)   # smoothstep half-way at 1 s
    assert np.all(np.diff(out[:5]) > 0) and out[4] == pytest.approx(4.0)
    assert out[6] == pytest.approx(1.0) and out[7] == pytest.approx(1.0)  # held after the last key


@pytest.mark.parametrize("body", ["[[key]]\ntime = 1e9\nAU12 = 1\n", "[[key]]\ntime = 7200\nAU12 = 1\n",
                                  "[[key]]\ntime = nan\nAU12 = 1\n"])
def test_keyframe_times_are_capped(tmp_path, body):
    f = tmp_path / "k.toml"
    f.write_text(body)
    with pytest.raises(InputError, match=r"0\.\.3600 s"):
        load_keyframes(f)


def test_preset_timeline_times_are_capped(tmp_path):
    from icface_video.presets import PresetError, parse

    f = tmp_path / "long.toml"
    f.write_text('[set]\nAU12 = 3\n[[timeline]]\ntime = 0\nweight = 0\n[[timeline]]\ntime = 7200\nweight = 1\n')
    with pytest.raises(PresetError, match=r"0\.\.3600 s"):
        parse(f)


def test_far_keyframe_is_one_line_error_before_any_work(run_cli, faces_root, tmp_path):
    keys = tmp_path / "far.toml"
    keys.write_text("[[key]]\ntime = 1e9\nAU12 = 4\n")
    out = tmp_path / "far.mp4"
    code, _, err = run_cli(["animate", "-s", faces_root / "LIA/data/vox/macron.png", "--keyframes", keys, "-o", out])
    assert code == 3 and len([x for x in err.splitlines() if x.strip()]) == 1, err
    assert err.startswith(f"icface-video: error: {keys}: key 1: time") and not out.exists()


def test_animate_smile_keyed_later_starts_from_the_source(run_cli, faces_root, tmp_path):
    """A real photo, a smile (AU12, AU06) named only in a key at 1 s: the first frame keeps the source's
    own mouth (re-extracted AU12 close to the photo's), the last one smiles."""
    from icface_video.csvio import read_attributes_csv

    photo = frame_png(faces_root / "dreamtalk/data/style_clip/video/W009_front_neutral_level1_001.mp4", 73,
                       tmp_path / "w009.png")
    keys = tmp_path / "k.toml"
    keys.write_text('[[key]]\ntime = 0\nyaw = 0\n[[key]]\ntime = 1.0\nAU12 = 5\nAU06 = 3\n')
    out, measured, own = tmp_path / "smile.mp4", tmp_path / "smile.csv", tmp_path / "own.csv"
    code, _, err = run_cli(["animate", "-s", photo, "--keyframes", keys, "--duration", "1.2", "--fps", "10",
                            "-o", out, "--x264-preset", "ultrafast", "-q"])
    assert code == 0, err
    assert run_cli(["extract", out, "-o", measured, "--smooth", "none", "-q"]).exit_code == 0
    assert run_cli(["extract", photo, "-o", own, "-q"]).exit_code == 0
    au12 = attr_index("AU12")
    smile = read_attributes_csv(measured).attrs[:, au12]
    source = read_attributes_csv(own).attrs[0, au12]
    assert abs(smile[0] - source) < 0.5, (smile[0], source)
    assert smile[-1] > source + 1.2, (smile[-1], source)  # the model smiles with AU06 (measured 2.5)


TWO_PEOPLE = "ghost/examples/videos/2person.mp4"


def test_second_face_of_a_group_photo_driven_by_a_one_face_clip(run_cli, plumbing_model, faces_root, tmp_path):
    """--source-face 1 --driver-face 0: the second person is reenacted and the first left alone;
    --face-index 1 (both sides) says the one-face driver has only 1 face."""
    import cv2

    from icface_video.face import FaceAnalyzer

    photo = frame_png(faces_root / TWO_PEOPLE, 0, tmp_path / "group.png")
    driver = faces_root / DRIVING / "d1.mp4"
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    boxes = []
    for index in (0, 1):
        with FaceAnalyzer(mode="image", face_index=index) as fa:
            boxes.append(fa.analyze(rgb).bbox)
    out = tmp_path / "second.mp4"
    fast = ["--model", plumbing_model, "--x264-preset", "ultrafast", "-q"]
    code, _, err = run_cli(["reenact", "-s", photo, "-d", driver, "--source-face", "1", "--driver-face", "0",
                            "--set", "AU25=5", "--set", "AU26=4", "--set", "AU45=5", "-o", out,
                            "--x264-preset", "ultrafast", "-q"])  # the shipped model: an open mouth, closed eyes
    assert code == 0, err
    import av

    with av.open(str(out)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24")
    h, w = frame.shape[:2]
    diff = np.abs(frame.astype(np.float32) - rgb[:h, :w].astype(np.float32)).mean(axis=2)

    def changed(box):
        x0, y0, x1, y1 = (int(v) for v in box)
        return diff[max(y0, 0):y1, max(x0, 0):x1].mean()

    # Away from the pasted face the frame is the source's, up to H.264 noise.
    assert changed(boxes[1]) > 3 * changed(boxes[0]), (changed(boxes[0]), changed(boxes[1]))

    code, _, err = run_cli(["reenact", "-s", photo, "-d", driver, "--face-index", "1", "-o", tmp_path / "x.mp4", *fast])
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert f"{driver}: face index 1 asked for, but only 1 face found" in err
    code, _, err = run_cli(["edit", "-s", photo, "--source-face", "4", "--set", "AU12=3", "-o", tmp_path / "x.png",
                            "--model", plumbing_model, "-q"])
    assert code == 3 and "only 2 faces found in the source image (indices 0..1)" in err, err
