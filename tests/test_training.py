"""Training: configs, checkpoints, exact resume, 2-process DDP, overfitting real frames."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import CheckpointError
from train.config import ConfigError, config_from_dict, load_config
from train.synthetic import make_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "train" / "configs" / "tiny.toml"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", resolution=64)


def tiny_config(data_root: Path, out: Path, **sections: dict):
    raw = load_config(TINY).to_dict()
    raw["model"] = {"preset": "fast", **raw["model"]}
    raw["data"]["root"] = str(data_root)
    raw["run"]["out_dir"] = str(out)
    raw["loss"]["perceptual"] = 0.0  # keep tests independent of the VGG cache
    for sec, values in sections.items():
        raw[sec].update(values)
    return config_from_dict(raw, "test")


def metrics(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def test_shipped_configs_load() -> None:
    for name in ("fast", "fast-eyes", "fast-fine", "fast-lids", "fast-mesh", "paper", "tiny"):
        cfg = load_config(REPO / "train" / "configs" / f"{name}.toml")
        assert cfg.model.design == ("paper" if name == "paper" else "fast")
    assert load_config(REPO / "train" / "configs" / "fast-eyes.toml").loss.drawn_eye_l1 > 0
    fine = load_config(REPO / "train" / "configs" / "fast-fine.toml")
    assert fine.model.fine_flow and Path(fine.run.init_from).is_dir()
    lids = load_config(REPO / "train" / "configs" / "fast-lids.toml")
    assert Path(lids.data.eyelids).is_file() and Path(lids.run.init_from).is_dir()
    mesh = load_config(REPO / "train" / "configs" / "fast-mesh.toml")
    assert mesh.model.fine_flow and mesh.loss.mesh_flow > 0 and Path(mesh.run.init_from).is_dir()


@pytest.mark.parametrize("text, match", [
    ("[optim]\nstepz = 3\n", r"unknown key.*stepz"),
    ("[optim]\nsteps = 'many'\n", r"optim\.steps: expected an integer"),
    ("[model]\nresolution = 100\n", r"resolution"),
    ("[model]\npreset = 'huge'\n", r"preset"),
    ("[loss]\nl1 = -1\n", r"loss\.l1"),
    ("[optim\n", r"invalid TOML"),
    ("[run]\nthreads = -1\n", r"threads must be >= 0"),
    ("[data]\neye_pair_prob = 1.5\n", r"eye_pair_prob must be in \[0, 1\]"),
    ("[data]\nhard_pair_prob = 0.6\neye_pair_prob = 0.6\n", r"at most 1"),
])
def test_bad_config_gives_clear_error(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(p)
    assert "bad.toml" in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_resume_continues_steps_and_reproduces_losses(synthetic: Path, tmp_path: Path) -> None:
    from train.fit import run

    full = tmp_path / "full"
    run(tiny_config(synthetic, full, optim={"steps": 4}, run={"checkpoint_every": 2}), resume=False)
    part = tmp_path / "part"
    run(tiny_config(synthetic, part, optim={"steps": 2}, run={"checkpoint_every": 2}), resume=False)
    with pytest.raises(CheckpointError, match="--resume"):
        run(tiny_config(synthetic, part, optim={"steps": 4}, run={"checkpoint_every": 2}), resume=False)
    final = run(tiny_config(synthetic, part, optim={"steps": 4}, run={"checkpoint_every": 2}), resume=True)
    assert final == 4
    a, b = metrics(full), metrics(part)
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert b[step]["g/total"] == pytest.approx(a[step]["g/total"], rel=1e-5, abs=1e-7)
        assert b[step]["d/adv"] == pytest.approx(a[step]["d/adv"], rel=1e-5, abs=1e-7)
    sa = json.loads((full / "checkpoints" / "step_00000004" / "state.json").read_text())
    sb = json.loads((part / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert sa["step"] == sb["step"] == 4


def test_corrupt_checkpoint_gives_clear_error(synthetic: Path, tmp_path: Path) -> None:
    from train.fit import run

    out = tmp_path / "run"
    cfg = tiny_config(synthetic, out, optim={"steps": 2}, run={"checkpoint_every": 2})
    run(cfg, resume=False)
    weights = out / "checkpoints" / "step_00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    more = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=3))
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        run(more, resume=True)
    (out / "checkpoints" / "step_00000002" / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="state.json.*corrupt"):
        run(more, resume=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_gloo_identical_checkpoints(synthetic: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cfg = tmp_path / "ddp.toml"
    cfg.write_text(TINY.read_text().replace('root = "data/prepared-128"', f'root = "{synthetic.as_posix()}"')
                   .replace("perceptual = 0.5", "perceptual = 0.0"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for attempt in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "train.fit", "--config", str(cfg), "--out", str(out), "--steps", "3"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        # torch 2.13's gloo start-up on this CPU aborts a rank before the run begins in about
        # 1 launch of 25 ("terminate called without an active exception", no Python frame;
        # seen with this project's code before and after the allocator change). That one
        # known failure gets a second launch; anything else fails the test.
        known = "terminate called without an active exception" in proc.stderr and not out.exists()
        if proc.returncode == 0 or not known or attempt == 1:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoints" / "step_00000003" / "state.json").read_text())
    assert state["step"] == 3
    assert len(state["rank_digests"]) == 2 and state["rank_digests"][0] == state["rank_digests"][1]


def _tiny_real_dataset(dest: Path, faces_root: Path, frames: int = 6) -> Path:
    """A prepared dataset with a few real frames of one train clip (prepared here from the
    shared data with ``train.prepare.prepare_clip``, so it works on a fresh clone)."""
    from train.prepare import ClipJob, prepare_clip, write_index

    clip = faces_root / "LivePortrait/assets/examples/driving/d1.mp4"  # train split, 16 frames
    (dest / "clips").mkdir(parents=True)
    entry = prepare_clip(ClipJob("c", "p", "train", (str(clip),)), dest, 128, frames)
    write_index(dest, [entry], [], 128)
    return dest


def test_eye_pairs_change_eye_closure_more_than_plain_pairs(tmp_path: Path, faces_root: Path) -> None:
    """On a real clip with blinks, ``eye_pair_prob`` pairs differ more in AU45 than random pairs."""
    from train.dataset import AU45, PairDataset

    data = _tiny_real_dataset(tmp_path / "real", faces_root, frames=16)
    ds = PairDataset(data, "train")
    clip = ds.clips[0]
    assert np.ptp(clip.attrs[clip.valid, AU45]) > 1.0  # the clip blinks

    def mean_change(**probs: float) -> float:
        pairs = ds.sample_pairs(np.random.default_rng(0), 400, **probs)
        return float(np.mean([abs(clip.attrs[s, AU45] - clip.attrs[t, AU45]) for _, s, t in pairs]))

    assert mean_change(eye_pair_prob=1.0) > 1.5 * mean_change()


def test_tiny_config_overfits_a_few_real_frames(tmp_path: Path, faces_root: Path) -> None:
    """The generator's L1 on 6 real frames of one clip falls by at least 1.25x in 150 steps
    (measured on this machine: 0.119 -> 0.088, 1.35x)."""
    from train.fit import run

    data = _tiny_real_dataset(tmp_path / "real", faces_root)
    out = tmp_path / "run"
    no_aug = {"flip": 0.0, "scale": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    cfg = tiny_config(data, out, optim={"steps": 150, "batch_size": 4},
                      data={"augment": no_aug, "hard_pair_prob": 0.0},
                      loss={"adversarial": 0.0, "d_start_step": 10_000},
                      run={"checkpoint_every": 1000, "log_every": 1})
    run(cfg, resume=False)
    m = metrics(out)
    first = np.mean([m[s]["g/l1"] for s in range(1, 11)])
    last = np.mean([m[s]["g/l1"] for s in range(141, 151)])
    assert last < first / 1.25, (first, last)


def test_paper_design_trains_through_the_same_loop(synthetic: Path, tmp_path: Path) -> None:
    from train.config import build_dataclass
    from train.fit import run

    cfg = tiny_config(synthetic, tmp_path / "paper", optim={"steps": 2}, run={"checkpoint_every": 2})
    paper = build_dataclass(type(cfg.model), {"design": "paper", "base_channels": 8, "res_blocks": 1,
                                              "norm": "instance"}, "model", cfg.model)
    assert run(dataclasses.replace(cfg, model=paper), resume=False) == 2
    from icface_video.model import ReenactmentModel

    model = ReenactmentModel.load(tmp_path / "paper" / "checkpoints" / "step_00000002")
    cache = model.prepare_source(torch.zeros(1, 3, 64, 64), torch.zeros(1, 20))
    assert model.render(cache, torch.zeros(2, 20)).shape == (2, 3, 64, 64)


def test_init_from_starts_a_fine_flow_run_where_the_other_stopped(synthetic: Path, tmp_path: Path) -> None:
    """``run.init_from`` + ``fine_flow``: the new run starts with the old run's weights,
    Adam state, step and wall time; its zero-initialised fine head renders exactly what
    the old model rendered; then it trains on from there."""
    from icface_video.model import ReenactmentModel
    from train.checkpoint import read_state
    from train.fit import run

    old = tmp_path / "old"
    run(tiny_config(synthetic, old, optim={"steps": 3}, run={"checkpoint_every": 3}), resume=False)
    ckpt = old / "checkpoints" / "step_00000003"
    new = tmp_path / "new"
    cfg = tiny_config(synthetic, new, model={"fine_flow": True}, optim={"steps": 3},
                      run={"checkpoint_every": 1, "init_from": str(ckpt)})
    assert run(cfg, resume=False) == 3  # nothing left to do: the step count carried over
    assert not (new / "checkpoints").exists()

    # Before any new step, the fine head is zero: same renders as the old model.
    from train.fit import Dist, Trainer

    trainer = Trainer(cfg, Dist(), torch.device("cpu"))
    trainer.init_from(ckpt)
    assert trainer.step == 3 and trainer.wall == pytest.approx(read_state(ckpt)["wall_s"])
    assert len(trainer.optG.state) == len(list(trainer.G.parameters())) - 2  # the fine head's weight, bias: fresh
    ref = ReenactmentModel.load(ckpt)
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    a, b = torch.rand(2, 20, generator=gen) * 3, torch.rand(2, 20, generator=gen) * 3
    from icface_video.attributes import from_scale

    with torch.no_grad():  # the model takes the tool's scale and feeds its own (v1) to the network
        want = ref.render(ref.prepare_source(src, from_scale(a, ref.au_scale)), from_scale(b, ref.au_scale))
        got = trainer.EMA(src, a, b)["image"]
    assert torch.allclose(want, got, atol=5e-5)  # float noise of the thread pool reached 1.1e-5

    more = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, steps=5))
    assert run(more, resume=True) == 5
    trained = ReenactmentModel.load(new / "checkpoints" / "step_00000005")
    assert trained.config.fine_flow and trained.generator.fine_head.weight.abs().sum() > 0

    # Exported, the model card names the recipe and where the run started.
    from click.testing import CliRunner

    from train.export import main as export

    table = tmp_path / "eval.md"
    table.write_text("| method | l1 |\n| --- | --- |\n| x | 0.1 |\n")
    res = CliRunner().invoke(export, ["--checkpoint", str(new / "checkpoints" / "step_00000005"),
                                      "--out", str(tmp_path / "model"), "--hardware", "test", "--eval-markdown",
                                      str(table), "--recipe", str(REPO / "train" / "configs" / "fast-fine.toml")])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert "fast-fine.toml" in card and f"started from `{ckpt}`" in card and "5 steps" in card
    assert ReenactmentModel.load(tmp_path / "model").config.fine_flow

    # Anything but switching fine_flow on is refused, with the key named.
    wider = tiny_config(synthetic, tmp_path / "wider", model={"embed_dim": 64},
                        run={"init_from": str(ckpt)})
    with pytest.raises(CheckpointError, match="embed_dim"):
        run(wider, resume=False)


def test_wall_clock_budget_stops_with_a_checkpoint(synthetic: Path, tmp_path: Path) -> None:
    """``run.max_wall_s`` ends the run early (equal-budget comparisons) and leaves a checkpoint
    of the last step, from which ``--resume`` would continue."""
    from train.checkpoint import read_state
    from train.fit import run

    out = tmp_path / "budget"
    cfg = tiny_config(synthetic, out, optim={"steps": 1000}, run={"checkpoint_every": 1000, "max_wall_s": 1e-6})
    assert run(cfg, resume=False) == 1
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    state = read_state(out / "checkpoints" / latest["path"])
    assert state["step"] == 1 and state["wall_s"] > 0


def test_fit_command_overrides_the_wall_clock_budget(synthetic: Path, tmp_path: Path) -> None:
    """``python -m train.fit --max-wall-s`` replaces ``run.max_wall_s`` (e.g. to give back
    time a run spent paused): a tiny budget stops after one step with a checkpoint."""
    from click.testing import CliRunner

    from train.fit import main

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.read_text().replace("perceptual = 0.5", "perceptual = 0.0"))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["--config", str(cfg), "--data", str(synthetic), "--out", str(out),
                                    "--steps", "1000", "--max-wall-s", "1e-6", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 1
    res = CliRunner().invoke(main, ["--config", str(cfg), "--max-wall-s", "-1"])
    assert res.exit_code == 2 and "max_wall_s" in res.output


def test_eye_loss_covers_the_eyes_only(tmp_path: Path, faces_root: Path) -> None:
    """On real landmarks the eye boxes hold every eye landmark and no lip landmark, and
    the eye L1 is the mean error inside them."""
    from train.dataset import PairDataset
    from train.losses import LEFT_EYE, LIPS, RIGHT_EYE, eye_masks, masked_l1

    ds = PairDataset(_tiny_real_dataset(tmp_path / "real", faces_root), "train")
    batch = ds.collate([(0, 0, 1)])
    lm = batch["target_landmarks"]
    mask = eye_masks(batch["source_landmarks"], lm, 128)
    xy = lm[0].round().long().clamp(0, 127)
    assert all(mask[0, 0, xy[i, 1], xy[i, 0]] == 1 for i in LEFT_EYE + RIGHT_EYE)
    assert all(mask[0, 0, xy[i, 1], xy[i, 0]] == 0 for i in LIPS)
    assert 0.003 < float(mask.mean()) < 0.08
    a = torch.zeros(1, 3, 128, 128)
    b = a + 0.5 * mask  # differs inside the boxes only
    assert float(masked_l1(a, b, mask)) == pytest.approx(0.5)


def test_eyecheck_pairs_open_sources_with_closed_targets(tmp_path: Path, faces_root: Path) -> None:
    from train.dataset import AU45, PairDataset
    from train.eyecheck import closed_eye_pairs

    ds = PairDataset(_tiny_real_dataset(tmp_path / "real", faces_root, frames=16), "train")
    pairs = closed_eye_pairs(ds, closed=2.5, per_clip=6)
    clip = ds.clips[0]
    assert 1 <= len(pairs) <= 6
    for _c, s, t in pairs:
        assert clip.attrs[t, AU45] > 2.5 and clip.attrs[s, AU45] == clip.attrs[clip.valid, AU45].min()


def test_upper_lid_weight_makes_the_flow_fetch_the_upper_lid_of_a_closed_eye(tmp_path: Path, faces_root: Path) -> None:
    """On a real blink (open source, closed target): the upper-lid landmarks are the ones
    that move; with equal weights a flow that fetches the lower lid where the lids meet
    (the eye stays open) scores better than one that fetches the upper lid (the eye
    closes); with ``upper_lid_weight = 3`` it is the other way round."""
    from icface_video.mesh_warp import identity_grid
    from train.dataset import AU45, PairDataset
    from train.eyecheck import closed_eye_pairs
    from train.losses import LEFT_EYE, RIGHT_EYE, UPPER_LIDS, landmark_flow_loss

    ds = PairDataset(_tiny_real_dataset(tmp_path / "real", faces_root, frames=16), "train")
    c, s, t = closed_eye_pairs(ds, closed=2.5, per_clip=1)[0]
    clip = ds.clips[c]
    src, tgt = clip.landmarks[s], clip.landmarks[t]
    assert clip.attrs[t, AU45] > 2.5 > clip.attrs[s, AU45]
    lower = [i for i in LEFT_EYE + RIGHT_EYE if i not in UPPER_LIDS and i not in (33, 133, 263, 362)]
    moved_upper = np.abs(tgt[list(UPPER_LIDS), 1] - src[list(UPPER_LIDS), 1]).mean()
    moved_lower = np.abs(tgt[lower, 1] - src[lower, 1]).mean()
    assert moved_upper > 2 * moved_lower  # the upper lid closes onto the lower one

    # Two flows, identical except over each closed eye's box: fetch the source's upper
    # lid there (a constant vertical offset), or its lower lid.
    size = 128

    def grid_fetching(upper: bool) -> torch.Tensor:
        grid = identity_grid(1, size, size).clone()
        for eye in (LEFT_EYE, RIGHT_EYE):
            rows = [i for i in eye if i in (UPPER_LIDS if upper else lower)]
            x0, y0 = np.floor(tgt[list(eye), :2].min(0)).astype(int) - 2
            x1, y1 = np.ceil(tgt[list(eye), :2].max(0)).astype(int) + 3
            grid[0, y0:y1, x0:x1, 1] += float((src[rows, 1] - tgt[rows, 1]).mean()) * 2.0 / size
        return grid

    pts = lambda lm: torch.from_numpy(np.ascontiguousarray(lm[None, :, :2])).float()  # noqa: E731
    gaps = {}
    for weight in (1.0, 3.0):
        a = float(landmark_flow_loss(grid_fetching(True), pts(src), pts(tgt), 5.0, weight))
        b = float(landmark_flow_loss(grid_fetching(False), pts(src), pts(tgt), 5.0, weight))
        gaps[weight] = b - a  # > 0: fetching the upper lid is preferred
    assert gaps[1.0] < 0 < gaps[3.0]


def test_eyecheck_command_reports_and_draws_a_sheet(tmp_path: Path, faces_root: Path, capsys) -> None:
    """``python -m train.eyecheck --sheet``: the shipped model on a real blink; the sheet has
    one row per clip and source | target | model columns, 256 px each."""
    import cv2

    from train.eyecheck import main

    data = _tiny_real_dataset(tmp_path / "real", faces_root, frames=16)
    sheet = tmp_path / "eyes.png"
    assert main(["--data", str(data), "--split", "train", "--threads", "1", "--sheet", str(sheet),
                 f"shipped={REPO / 'icface_video' / 'weights'}"]) == 0
    out = capsys.readouterr().out
    assert "shipped: output AU45" in out and "no face 0" in out
    assert cv2.imread(str(sheet)).shape == (256, 3 * 256, 3)


def test_mesh_flow_target_is_exact_for_no_motion_and_for_an_affine_motion(tmp_path: Path, faces_root: Path) -> None:
    """On real landmarks: equal landmarks give the identity grid; a target that is an affine
    map of the source gives that map's inverse at every covered pixel (piecewise-affine
    interpolation of an affine map is exact); the face, not the background, is covered."""
    from icface_video.mesh_warp import identity_grid
    from train.dataset import PairDataset
    from train.mesh_flow import mesh_flow_loss, mesh_flow_target

    ds = PairDataset(_tiny_real_dataset(tmp_path / "real", faces_root), "train")
    src = ds.collate([(0, 0, 1)])["source_landmarks"].double()
    size = 128
    grid, covered = mesh_flow_target(src, src, size)
    cov = covered[0, 0].bool()
    assert 0.1 < float(covered.mean()) < 0.6
    nose = src[0, 1].round().long()
    assert cov[nose[1], nose[0]] and not cov[0, 0] and not cov[-1, -1]
    assert torch.allclose(grid[0][cov], identity_grid(1, size, size, dtype=torch.float64)[0][cov], atol=1e-9)

    theta = 0.05
    rot = torch.tensor([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], dtype=torch.float64) * 1.04
    shift = torch.tensor([2.5, -1.5], dtype=torch.float64)
    centre = torch.tensor([64.0, 64.0], dtype=torch.float64)
    tgt = (src - centre) @ rot.T + centre + shift
    grid, covered = mesh_flow_target(src, tgt, size)
    cov = covered[0, 0].bool()
    centres = (identity_grid(1, size, size, dtype=torch.float64)[0] + 1) * size / 2  # crop pixels
    want = (centres[cov] - centre - shift) @ torch.linalg.inv(rot).T + centre
    assert torch.allclose(grid[0][cov], want * 2 / size - 1, atol=1e-9)
    assert float(mesh_flow_loss(grid, grid, covered)) == 0.0
    off = grid.clone()
    off[..., 0] += 0.1
    assert float(mesh_flow_loss(off, grid, covered)) == pytest.approx(0.05)  # per coordinate
    assert float(mesh_flow_loss(off, grid, covered, 1 + 4 * covered)) == pytest.approx(0.05)


def test_mesh_flow_target_folds_the_upper_lid_over_a_real_closed_eye(tmp_path: Path, faces_root: Path) -> None:
    """On a real blink (open source, closed target): across the line where the target's
    lids meet, the mesh target's fetch jumps by most of the source eye's opening (above it
    the upper lid, below it the lower lid), and the source warped by it re-reads as
    closed-eyed (MediaPipe's AU45 rises by more than 1 on the 0..5 scale)."""
    from icface_video.attributes import attributes_from_face, to_scale
    from icface_video.face import FaceAnalyzer
    from icface_video.mesh_warp import identity_grid, warp
    from icface_video.tensors import to_tensor, to_uint8
    from train.dataset import AU45, PairDataset
    from train.remeasure import upscale
    from train.eyecheck import closed_eye_pairs
    from train.mesh_flow import mesh_flow_target

    ds = PairDataset(_tiny_real_dataset(tmp_path / "real", faces_root, frames=16), "train")
    pairs = closed_eye_pairs(ds, closed=2.5, per_clip=6)
    clip = ds.clips[0]
    src_lm = torch.from_numpy(np.stack([clip.landmarks[s] for _, s, _ in pairs])).double()
    tgt_lm = torch.from_numpy(np.stack([clip.landmarks[t] for _, _, t in pairs])).double()
    size = 128
    grid, covered = mesh_flow_target(src_lm, tgt_lm, size)
    fetch_y = (grid[..., 1] + 1) * size / 2  # source row fetched, crop pixels
    jumps = []
    for i in range(len(pairs)):
        for top, bottom in ((159, 145), (386, 374)):  # upper and lower lid centres
            x = int(tgt_lm[i, top, 0])
            line = float(tgt_lm[i, [top, bottom], 1].mean())
            above, below = int(np.floor(line - 2.0)), int(np.floor(line + 1.0))
            assert covered[i, 0, above, x] and covered[i, 0, below, x]
            opening = float(src_lm[i, bottom, 1] - src_lm[i, top, 1])
            assert opening > 2.0
            jumps.append(float(fetch_y[i, below, x] - fetch_y[i, above, x] - (below - above)) / opening)
    assert np.mean(jumps) > 0.5

    source = to_tensor(np.stack([clip.crops[s] for _, s, _ in pairs]))
    full = torch.where(covered.permute(0, 2, 3, 1) > 0, grid.float(), identity_grid(len(pairs), size, size))
    warped = to_uint8(warp(source, full))
    with FaceAnalyzer(mode="image") as fa:
        read = [to_scale(attributes_from_face(f.blendshapes, f.matrix), "v1")[AU45] for f in  # dataset's scale
                (fa.analyze(im) for im in upscale(warped))]
    before = np.mean([clip.attrs[s, AU45] for _, s, _ in pairs])
    assert np.mean(read) > before + 1.0


def test_training_with_the_eyelid_warp(tmp_path: Path, faces_root: Path) -> None:
    """``data.eyelids``: on real blinks the pre-warp brings the generator's output closer
    to the closed-eyed targets inside the eye boxes (L1 falls by more than 10%; measured
    0.098 -> 0.070), a
    training run goes through it, and a missing file is a one-line error naming it."""
    from click.testing import CliRunner

    from icface_video.eyelids import EYELIDS_NAME, EyelidConfig, eyelid_grid
    from icface_video.model import WEIGHTS_DIR, ReenactmentModel
    from train import losses as L
    from train.dataset import AU45, PairDataset
    from train.eyecheck import closed_eye_pairs
    from train.fit import main as fit_main
    from train.fit import run

    data = _tiny_real_dataset(tmp_path / "real", faces_root, frames=16)
    ds = PairDataset(data, "train")
    pairs = closed_eye_pairs(ds, closed=2.5, per_clip=6)
    batch = ds.collate(pairs)
    lids = EyelidConfig.load(WEIGHTS_DIR / EYELIDS_NAME)
    gen = ReenactmentModel.load(eyelids=False).generator
    pre = eyelid_grid(lids, batch["source_landmarks"], batch["source_attrs"][:, AU45],
                      batch["target_attrs"][:, AU45], 128)
    boxes = L.eye_masks(batch["source_landmarks"], batch["target_landmarks"], 128)
    errs = {}
    with torch.no_grad():
        for name, grid in (("plain", None), ("eyelids", pre)):
            out = gen(batch["source"], batch["source_attrs"], batch["target_attrs"], 0, grid)
            errs[name] = float(L.masked_l1(out["image"], batch["target"], boxes))
    assert errs["eyelids"] < 0.9 * errs["plain"], errs

    out_dir = tmp_path / "run"
    cfg = tiny_config(data, out_dir, optim={"steps": 3, "batch_size": 2},
                      data={"eyelids": str(WEIGHTS_DIR / EYELIDS_NAME), "eye_pair_prob": 0.5},
                      run={"checkpoint_every": 3, "log_every": 1})
    run(cfg, resume=False)
    assert np.isfinite(metrics(out_dir)[3]["g/l1"])
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("[data]", f'[data]\neyelids = "{tmp_path / "none.json"}"'))
    res = CliRunner().invoke(fit_main, ["--config", str(bad), "--data", str(data), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "none.json" in res.output and "Traceback" not in res.output


def test_fit_eyelids_on_a_real_blinking_clip(tmp_path: Path, faces_root: Path, capsys) -> None:
    """``python -m train.fit_eyelids`` on 16 real frames of a clip that blinks: the openness
    curve falls with AU45, closing moves the upper lids down, and the written file loads
    (with the gain that won the calibration)."""
    from icface_video.eyelids import EyelidConfig
    from icface_video.mesh_topology import EYES
    from train.fit_eyelids import main

    data = _tiny_real_dataset(tmp_path / "real", faces_root, frames=16)
    out = tmp_path / "eyelids.json"
    assert main(["--data", str(data), "--split", "train", "--out", str(out), "--gains", "1.0,1.6",
                 "--calibration-clips", "1", "--min-bin-frames", "2", "--threads", "1"]) == 0
    cfg = EyelidConfig.load(out)
    assert cfg.openness[-1] < 0.6 * cfg.openness[0]
    for eye, motion in zip(EYES, cfg.motion):
        assert np.mean([motion[i][1] for i in eye.upper]) < 0
    assert cfg.gain in (1.0, 1.6) and len(cfg.provenance["calibration"]["gains"]) == 2
    assert "gain" in capsys.readouterr().out
