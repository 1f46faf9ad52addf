"""Presets, --set parsing, attribute composition and keyframes (no model, no video)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icface_video import presets
from icface_video.attributes import ATTR_NAMES, NUM_ATTRS, to_scale
from icface_video.controls import Op, apply_ops, attr_index, parse_set
from icface_video.driving import AttributeTrack, compose
from icface_video.errors import InputError, UsageError
from icface_video.keyframes import load_keyframes

AU12, AU45, YAW, PITCH = (attr_index(n) for n in ("AU12", "AU45", "yaw", "pitch"))

REQUIRED = ["neutral", "smile", "big-smile", "surprise", "sad", "angry", "disgust", "fear", "blink",
            "eyes-closed", "mouth-open", "look-left", "look-right", "look-up", "look-down", "nod", "shake", "tilt"]


def test_every_required_preset_ships_and_validates():
    names = presets.builtin_names()
    for name in REQUIRED:
        assert name in names
        p = presets.load(name)
        assert p.ops and p.description


@pytest.mark.parametrize("text, kind, index, value", [
    ("AU12=3.5", "set", AU12, 3.5),
    ("au12 += 1", "add", AU12, 1.0),
    ("AU12-=1", "add", AU12, -1.0),
    ("12*=1.5", "scale", AU12, 1.5),
    ("yaw=10deg", "set", YAW, math.radians(10)),
    ("yaw=+10deg", "set", YAW, math.radians(10)),
    ("pitch+=-0.1", "add", PITCH, -0.1),
])
def test_parse_set(text, kind, index, value):
    op = parse_set(text)
    assert (op.kind, op.index) == (kind, index)
    assert op.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["AU12", "AU99=1", "AU12=7", "AU12=abc", "yaw=120deg", "AU12=3deg", "yaw=2"])
def test_parse_set_rejects(text):
    with pytest.raises(UsageError) as err:
        parse_set(text)
    assert text.split("=")[0].strip() in str(err.value) or text in str(err.value)


def test_apply_ops_set_add_scale_and_clip():
    attrs = np.zeros((3, NUM_ATTRS), np.float32)
    attrs[:, AU12] = [1.0, 2.0, 4.0]
    out = apply_ops(attrs, [Op("set", AU12, 3.0)])
    assert np.allclose(out[:, AU12], 3.0)
    out = apply_ops(attrs, [Op("add", AU12, 2.0)])
    assert np.allclose(out[:, AU12], [3.0, 4.0, 5.0])  # clipped at 5
    out = apply_ops(attrs, [Op("scale", AU12, 0.5)], weight=np.array([0.0, 1.0, 1.0]))
    assert np.allclose(out[:, AU12], [1.0, 1.0, 2.0])
    assert np.array_equal(attrs[:, AU12], [1.0, 2.0, 4.0])  # input untouched


def test_preset_smile_raises_au12_neutral_lowers_it():
    attrs = np.full((2, NUM_ATTRS), 1.0, np.float32)
    attrs[:, NUM_ATTRS - 3:] = 0.0
    smiled = presets.load("smile").apply(attrs, np.zeros(2))
    assert (smiled[:, AU12] > attrs[:, AU12]).all()
    assert to_scale(smiled, "v1")[:, AU12] == pytest.approx(3.2, abs=0.01)  # what the v1 network gets
    relaxed = presets.load("neutral").apply(smiled, np.zeros(2))
    assert np.allclose(relaxed[:, :17], 0.0)


def test_blink_timeline_and_nod_loop():
    times = np.arange(0, 2.4, 0.02)
    attrs = np.zeros((len(times), NUM_ATTRS), np.float32)
    blink = presets.load("blink").apply(attrs, times)
    assert to_scale(blink, "v1")[:, AU45].max() == pytest.approx(5.0, abs=0.05)  # fully shut on the network's scale
    assert blink[times > 0.3, AU45].max() == 0.0  # one blink at the start only
    nod = presets.load("nod").apply(attrs, times)
    peaks = np.sum((nod[1:-1, PITCH] > nod[:-2, PITCH]) & (nod[1:-1, PITCH] >= nod[2:, PITCH]) & (nod[1:-1, PITCH] > 0.1))
    assert peaks >= 2  # repeats


@pytest.mark.parametrize("body, needle", [
    ('region = "mouth"\n[set]\nAU12 = 3\nAU01 = 2\n', ":4: AU01"),
    ("[set]\nAU99 = 3\n", ":2: AU99"),
    ("[sett]\nAU12 = 3\n", ":1: sett"),
    ('[set]\nAU12 = "x"\n', ":2: AU12"),
    ("[set]\nAU12 = 7\n", ":2: AU12"),
    ("[set]\nAU12 = true\n", ":2: AU12"),
    ("intensity = 5\n[set]\nAU12 = 1\n", ":1: intensity"),
    ("[set]\nAU12 = [1\n", "TOML syntax error"),
    ('description = "nothing"\n', "no operation"),
    ("[add]\nyaw = 1\n[[timeline]]\ntime = 1\nweight = 0\n[[timeline]]\ntime = 0.5\nweight = 1\n", "times must increase"),
])
def test_bad_preset_names_file_line_key(tmp_path, body, needle):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises(InputError) as err:
        presets.load(str(f))
    assert str(f) in str(err.value) and needle in str(err.value)


def test_unknown_preset_name():
    with pytest.raises(InputError, match="unknown preset"):
        presets.load("no-such-preset")


def _track(values: np.ndarray, fps: float = 25.0) -> AttributeTrack:
    n = len(values)
    return AttributeTrack("drv", np.arange(n) / fps, values.astype(np.float32), np.ones(n, bool), fps)


def test_compose_modes_and_relative():
    n = 10
    drv = np.zeros((n, NUM_ATTRS), np.float32)
    drv[:, AU12] = np.linspace(0, 4, n)
    drv[:, YAW] = np.linspace(0, 0.5, n)
    src = np.zeros(NUM_ATTRS, np.float32)
    src[AU12] = 1.0
    src[YAW] = 0.1
    times = np.arange(n) / 25.0
    full_rel = compose(src, times, _track(drv), {}, "full", relative=True)
    assert np.allclose(full_rel[:, AU12], np.clip(1.0 + drv[:, AU12], 0, 5))
    assert np.allclose(full_rel[:, YAW], 0.1 + drv[:, YAW])
    full_abs = compose(src, times, _track(drv), {}, "full", relative=False)
    assert np.allclose(full_abs[:, AU12], drv[:, AU12])
    pose = compose(src, times, _track(drv), {}, "pose", relative=False)
    assert np.allclose(pose[:, AU12], 1.0) and np.allclose(pose[:, YAW], drv[:, YAW])
    expr = compose(src, times, _track(drv), {}, "expression", relative=False)
    assert np.allclose(expr[:, YAW], 0.1) and np.allclose(expr[:, AU12], drv[:, AU12])
    # A mouth driver overrides the mouth only.
    mouth = np.zeros((n, NUM_ATTRS), np.float32)
    mouth[:, AU12] = 5.0
    mouth[:, YAW] = -0.4
    mixed = compose(src, times, _track(drv), {"mouth": _track(mouth)}, "full", relative=False)
    assert np.allclose(mixed[:, AU12], 5.0) and np.allclose(mixed[:, YAW], drv[:, YAW])


def test_shorter_part_driver_holds_its_last_value():
    long = np.zeros((50, NUM_ATTRS), np.float32)
    short = np.zeros((10, NUM_ATTRS), np.float32)
    short[:, AU12] = np.linspace(0, 3, 10)
    times = np.arange(50) / 25.0
    out = compose(np.zeros(NUM_ATTRS, np.float32), times, _track(long), {"mouth": _track(short)}, "full", relative=False)
    assert np.allclose(out[10:, AU12], 3.0)


def test_keyframes_toml_and_csv(tmp_path):
    f = tmp_path / "k.toml"
    f.write_text('[[key]]\ntime = 0\nAU12 = 0\n[[key]]\ntime = 1.0\nAU12 = 4\nyaw = "10deg"\n')
    keys = load_keyframes(f)
    assert keys.duration == 1.0
    base = np.zeros(NUM_ATTRS, np.float32)
    base[attr_index("AU01")] = 2.0
    out = keys.evaluate(base, np.array([0.0, 0.5, 1.0, 2.0]))
    assert np.allclose(out[:, AU12], [0, 2, 4, 4])
    assert np.allclose(out[:, YAW], [0, math.radians(5), math.radians(10), math.radians(10)])  # eased in from the source, then held
    assert np.allclose(out[:, attr_index("AU01")], 2.0)  # untouched attribute keeps the source's
    c = tmp_path / "k.csv"
    c.write_text("time, AU12, yaw\n0, 0, 0\n2, 5, 0.2\n")
    out = load_keyframes(c).evaluate(np.zeros(NUM_ATTRS), np.array([0.0, 1.0, 2.0]))
    assert np.allclose(out[:, AU12], [0, 2.5, 5])


@pytest.mark.parametrize("body, needle", [
    ("[[key]]\nAU12 = 1\n", "missing time"),
    ("[[key]]\ntime = 0\nAU77 = 1\n", "AU77"),
    ("[[key]]\ntime = 0\nAU12 = 9\n", "0..5"),
    ("[[key]]\ntime = 0\nAU12 = 1\n[[key]]\ntime = 0\nAU12 = 2\n", "same time"),
    ("keys = 1\n", "unknown key"),
])
def test_bad_keyframes(tmp_path, body, needle):
    f = tmp_path / "k.toml"
    f.write_text(body)
    with pytest.raises(InputError, match=needle):
        load_keyframes(f)


def test_attr_names_order():
    assert ATTR_NAMES[:2] == ("AU01", "AU02") and ATTR_NAMES[-3:] == ("pitch", "yaw", "roll")
