"""`python -m train.evaluate`: JSON shape, sane baseline numbers, the offline metric models.

The run prepares 2 test clips of the shared manifest (cached per test session) and
evaluates the no-motion baseline and a tiny random model with 6 frames per clip.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from train import evaluate as ev

SELF_KEYS = {"l1", "psnr", "ssim", "lpips", "identity", "au_mae", "pose_err_deg"}
CROSS_KEYS = {"identity", "au_mae", "pose_err_deg"}


@pytest.fixture(scope="module")
def eval_run(faces_root: Path, plumbing_model: Path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("evaluate")
    args = ["--data", faces_root / "manifest.csv", "--split", "test", "--max-clips", "2",
            "--max-frames", "6", "--method", f"tiny={plumbing_model}", "--cache", out / "prepared",
            "--json", out / "eval.json", "--markdown", out / "eval.md", "--sheet", out / "sheet.png"]
    code = ev.main([str(a) for a in args])
    assert code == 0
    return {"dir": out, "result": json.loads((out / "eval.json").read_text())}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_json_shape(eval_run):
    r = eval_run["result"]
    assert {"au_mae", "pose_err_deg"} <= set(r["noise_floor"])
    assert set(r["methods"]) == {"no-motion", "tiny"}
    for name, m in r["methods"].items():
        assert SELF_KEYS <= set(m["self"]), name
        assert CROSS_KEYS <= set(m["cross"]), name
        for k in SELF_KEYS:
            assert _finite(m["self"][k]), (name, k, m["self"][k])
        for k in CROSS_KEYS:
            assert _finite(m["cross"][k]), (name, k, m["cross"][k])
        assert m["self"]["frames"] == 12 and m["cross"]["frames"] == 12
        closed = m["self"]["closed_eyes"]
        assert set(closed) == {"frames", "reference_au45", "output_au45"} and 0 <= closed["frames"] <= 12
    assert len(r["clips"]) == 2
    a, b = r["clips"]
    assert a["driver"] == b["id"] and b["driver"] == a["id"]  # two people, paired with each other


def test_noise_floor_is_small(eval_run):
    nf = eval_run["result"]["noise_floor"]
    assert 0 <= nf["au_mae"] < 1.0
    assert 0 <= nf["pose_err_deg"] < 5.0
    assert nf["no_face"] == 0
    assert nf["identity_same_clip_real"] > 0.5 > nf["identity_cross_pair_real"]


def test_no_motion_is_sane(eval_run):
    s = eval_run["result"]["methods"]["no-motion"]["self"]
    c = eval_run["result"]["methods"]["no-motion"]["cross"]
    assert 0 < s["l1"] < 0.5
    assert 10 < s["psnr"] < 60
    assert 0 < s["ssim"] < 1
    assert 0 < s["lpips"] < 1
    assert s["identity"] > 0.5  # the output is the same person as the target
    assert c["identity"] > 0.9  # the output IS the source image
    assert s["no_face"] == 0 and c["no_face"] == 0


def test_markdown_and_sheet(eval_run):
    import cv2

    md = (eval_run["dir"] / "eval.md").read_text()
    assert "| no-motion |" in md and "| tiny |" in md and "noise floor" in md
    sheet = cv2.imread(str(eval_run["dir"] / "sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 128 and sheet.shape[1] >= 4 * 128


def test_missing_default_model_evaluates_baseline(eval_run, capsys):
    from icface_video.model import WEIGHTS_DIR

    out = eval_run["dir"]
    code = ev.main(["--data", str(out / "prepared"), "--split", "test", "--max-frames", "2",
                    "--json", str(out / "default.json")])
    assert code == 0
    r = json.loads((out / "default.json").read_text())
    if (WEIGHTS_DIR / "config.json").is_file():
        assert set(r["methods"]) == {"no-motion", "default"}
    else:
        assert set(r["methods"]) == {"no-motion"}
        assert "default model is missing" in capsys.readouterr().err


def test_lpips_alexnet():
    lp = ev.AlexLPIPS()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(2, 3, 64, 64, generator=g)).clamp(-1, 1)
    same, diff = lp(x, x), lp(x, y)
    assert torch.allclose(same, torch.zeros(2))
    assert (diff > 0.01).all() and (lp(x, -x) > diff).all()


def test_five_points_order():
    lm = np.zeros((478, 2), np.float32)
    lm[468], lm[473], lm[1], lm[61], lm[291] = (70, 50), (40, 50), (55, 70), (68, 90), (42, 90)
    pts = ev.five_points(lm)
    assert pts[0, 0] < pts[1, 0] and pts[3, 0] < pts[4, 0]
    assert pts[2].tolist() == [55, 70]


def test_closed_eye_tally_reads_only_closed_reference_frames():
    tally = ev.Tally()
    ref = np.zeros((4, 20), np.float32)
    ref[1, ev._AU45], ref[3, ev._AU45] = 4.0, 3.0
    found = ref.copy()
    found[:, ev._AU45] = [0.0, 1.0, 5.0, np.nan]
    found[3] = np.nan  # no face found in frame 3: not counted
    tally.add_attrs(found, ref)
    closed = tally.summary(())["closed_eyes"]
    assert closed == {"frames": 1, "reference_au45": 4.0, "output_au45": 1.0}


def test_pairing_and_selection():
    def clip(i, who):
        z = np.zeros((2, 4, 4, 3), np.uint8)
        return ev.Clip(f"c{i}", who, 0, np.array([1]), z, np.zeros((2, 20), np.float32),
                       np.zeros((2, 478, 2), np.float32), np.zeros(2))

    clips = [clip(0, "a"), clip(1, "a"), clip(2, "b")]
    assert ev.pair_drivers(clips) == {"c0": "c2", "c1": "c2", "c2": "c0"}
    assert ev.pair_drivers(clips[:2]) == {"c0": None, "c1": None}
    entries = [{"id": "x1", "identity": "p"}, {"id": "x2", "identity": "p"}, {"id": "x3", "identity": "q"}]
    assert [e["id"] for e in ev.select_entries(entries, 2)] == ["x1", "x3"]


def test_method_specs_choose_the_eyelid_warp(plumbing_model: Path):
    """``NAME=CKPT``, ``NAME=CKPT:no-eyelids``, ``NAME=CKPT:eyelids=FILE``; anything else is an
    error naming the spec."""
    from icface_video.eyelids import EYELIDS_NAME, EyelidConfig
    from icface_video.model import WEIGHTS_DIR

    file = WEIGHTS_DIR / EYELIDS_NAME
    methods, _ = ev.load_methods([f"a={plumbing_model}", f"b={plumbing_model}:eyelids={file}",
                                  f"c={WEIGHTS_DIR}", f"d={WEIGHTS_DIR}:no-eyelids"], "cpu", lambda _: None)
    lids = {m.name: m.model.eyelids for m in methods[1:]}
    assert lids["a"] is None and lids["d"] is None  # the plumbing folder has no eyelids.json
    assert lids["b"].gain == lids["c"].gain == EyelidConfig.load(file).gain
    with pytest.raises(ValueError, match="--method e=x:eyelid"):
        ev.load_methods(["e=x:eyelid"], "cpu", lambda _: None)


def test_split_modules_keep_the_train_evaluate_names():
    """The evaluation is split into one module per concern; ``train.evaluate`` still offers
    every name other scripts import from it (``train.eval_frames``, ``train.eyecheck``)."""
    from train import eval_data, eval_methods, eval_metrics, eval_sheet, identity, lpips, remeasure

    homes = {lpips: ["AlexLPIPS"], identity: ["IdentityEmbedder", "five_points"],
             remeasure: ["AttributeReader", "upscale", "scale_points", "ANALYSIS_SIZE"],
             eval_data: ["Clip", "load_clip", "pair_drivers", "resolve_data", "select_entries"],
             eval_methods: ["Method", "load_methods", "parse_model_spec", "resolve_checkpoint", "NO_MOTION"],
             eval_metrics: ["Tally", "image_metrics", "pose_error_deg", "CLOSED_EYES"],
             eval_sheet: ["build_sheet", "pick_sheet_rows"]}
    for module, names in homes.items():
        for name in names:
            assert getattr(ev, name) is getattr(module, name), (module.__name__, name)
            assert name in ev.__all__ and name in module.__all__, (module.__name__, name)
