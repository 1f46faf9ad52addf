"""Train an ICface generator: ``python -m train.fit --config train/configs/fast.toml [--resume]``.

Also under ``torchrun --nproc_per_node N -m train.fit ...``: DistributedDataParallel
with gloo on CPU and nccl on CUDA; each rank draws its own pairs. Per step: one
generator update, one discriminator update, an EMA update of the generator.

Exact resume: pairs and augmentation of step ``s`` on rank ``r`` come from a generator
seeded with ``(seed, s, r)``, and checkpoints hold the generator, its EMA, the
discriminator and both Adam states, so ``--resume`` continues the step count and the
losses an uninterrupted run would have had.

Outputs under ``run.out_dir``: ``checkpoints/`` (see train/checkpoint.py),
``metrics.jsonl`` (one JSON line per logged step), ``tb/`` (TensorBoard scalars and image
grids: source | target | output | warped-source mask | generated branch).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from icface_video.attributes import convert_scale
from icface_video.errors import InputError
from icface_video.eyelids import EyelidConfig, eyelid_grid
from icface_video.model import EMA_PREFIX, EYELID_AU_SCALE, model_au_scale
from icface_video.networks import Generator, GeneratorConfig
from icface_video.runtime import tune_allocator
from train import losses as L
from train.checkpoint import (CheckpointError, find_latest, init_from_checkpoint, load_checkpoint, read_state,
                              save_checkpoint, state_digest)
from train.config import ConfigError, TrainConfig, config_from_dict, load_config
from train.dataset import AU45, DatasetError, PairDataset
from train.discriminator import Discriminator, DiscriminatorConfig
from train.mesh_flow import mesh_flow_loss, mesh_flow_target


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Dist, torch.device]:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world > 1:
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        d = Dist(rank, world, local)
    else:
        d = Dist()
    device = torch.device(f"cuda:{d.local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return d, device


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def _clip(params, max_norm: float) -> float:
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return 0.0


def _saved_model(state: dict) -> dict:
    """A checkpoint's ``[model]`` section; fields added since it was written take their defaults."""
    saved = state.get("config", {}).get("model") or {}
    return {**GeneratorConfig().to_dict(), "design": None, **saved}


class Trainer:
    """Holds the networks, optimisers and data of one run (one process)."""

    def __init__(self, cfg: TrainConfig, dist_info: Dist, device: torch.device) -> None:
        self.cfg, self.dist, self.device = cfg, dist_info, device
        if cfg.run.threads > 0 and device.type == "cpu":
            torch.set_num_threads(cfg.run.threads)
        self.data = PairDataset(cfg.data.root, cfg.data.split, cfg.model.resolution,
                                cfg.data.max_clips or None, au_scale=cfg.data.au_scale)
        torch.manual_seed(cfg.run.seed)
        self.G = Generator(cfg.model).to(device)
        self.D = Discriminator(DiscriminatorConfig(cfg.discriminator.base_channels, cfg.discriminator.layers,
                                                   self.data.num_identities)).to(device)
        self.EMA = copy.deepcopy(self.G).requires_grad_(False).eval()
        o = cfg.optim
        self.optG = torch.optim.Adam(self.G.parameters(), lr=o.lr_g, betas=(o.beta1, o.beta2))
        self.optD = torch.optim.Adam(self.D.parameters(), lr=o.lr_d, betas=(o.beta1, o.beta2))
        self.vgg = (L.VGGPerceptual(cfg.loss.vgg_layers, cfg.loss.vgg_resolution, cfg.run.vgg_weights or None)
                    .to(device) if cfg.loss.perceptual > 0 else None)
        self.step = 0
        self.wall = 0.0
        self.use_amp = cfg.run.amp and device.type == "cuda"
        self.eyelids = EyelidConfig.load(cfg.data.eyelids) if cfg.data.eyelids and cfg.model.design == "fast" else None
        if dist_info.world > 1:
            self.G_train: nn.Module = DDP(self.G, device_ids=[device.index] if device.type == "cuda" else None)
            self.D_train: nn.Module = DDP(self.D, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            self.G_train, self.D_train = self.G, self.D

    # -- checkpoints ------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.G, EMA_PREFIX: self.EMA, "D": self.D}

    def optims(self) -> dict[str, torch.optim.Optimizer]:
        return {"optG": self.optG, "optD": self.optD}

    def digest(self) -> str:
        return state_digest(self.G, self.EMA, self.D)

    def save(self) -> Path | None:
        digests = [self.digest()]
        if self.dist.world > 1:
            gathered: list = [None] * self.dist.world
            dist.all_gather_object(gathered, digests[0])
            digests = gathered
        path = None
        if self.dist.main:
            path = save_checkpoint(Path(self.cfg.run.out_dir), self.step, self.cfg.to_dict(), self.modules(),
                                   self.optims(), {"num_identities": self.data.num_identities,
                                                   "digest": digests[0], "rank_digests": digests,
                                                   "wall_s": self.wall}, self.cfg.run.keep_checkpoints)
        if self.dist.world > 1:
            dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path, self.modules(), self.optims(), self.device)
        saved_model = _saved_model(state)
        if saved_model != self.cfg.model.to_dict():
            raise CheckpointError(f"{path}: its [model] section {saved_model} differs from the config's "
                                  f"{self.cfg.model.to_dict()}")
        if model_au_scale(state) != self.cfg.data.au_scale:
            raise CheckpointError(f"{path}: trained on AU scale {model_au_scale(state)!r}, the config's "
                                  f"data.au_scale is {self.cfg.data.au_scale!r}")
        self.step = int(state["step"])
        self.wall = float(state.get("wall_s", 0.0))

    def init_from(self, path: Path) -> None:
        """Start this (new) run from another run's checkpoint (``run.init_from``): its
        weights and Adam state, step and wall time; only additions to ``[model]`` that
        start as a no-op (``fine_flow``) may differ."""
        saved_model = _saved_model(read_state(path))
        ours = self.cfg.model.to_dict()
        changed = sorted(k for k in ours if saved_model.get(k) != ours[k])
        if [k for k in changed if k != "fine_flow"] or (changed and not ours["fine_flow"]):
            raise CheckpointError(f"{path}: run.init_from: its [model] differs from the config's in {changed} "
                                  "(only switching fine_flow on is allowed)")
        state = init_from_checkpoint(path, self.modules(), self.optims(), self.device)
        self.step = int(state["step"])
        self.wall = float(state.get("wall_s", 0.0))

    # -- one step ---------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg, lc = self.cfg, self.cfg.loss
        rng = np.random.default_rng([cfg.run.seed, self.step, self.dist.rank])
        torch.manual_seed(cfg.run.seed * 1_000_003 + self.step * 7919 + self.dist.rank)
        batch = {k: v.to(self.device) for k, v in
                 self.data.sample_batch(rng, cfg.optim.batch_size, cfg.data.augment, cfg.data.hard_pair_prob,
                                                    cfg.data.eye_pair_prob).items()}
        src, tgt = batch["source"], batch["target"]
        warm = min(1.0, (self.step + 1) / max(1, cfg.optim.warmup_steps))
        for opt, base in ((self.optG, cfg.optim.lr_g), (self.optD, cfg.optim.lr_d)):
            for group in opt.param_groups:
                group["lr"] = base * warm
        use_d = self.step >= lc.d_start_step
        want_neutral = use_d and lc.neutral_attribute > 0
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.use_amp else nullcontext()
        logs: dict[str, float] = {}

        # generator update
        self.D.requires_grad_(False)
        pre_grid = None
        if self.eyelids is not None:
            # eyelids.json files are on the v1 AU scale (icface_video.model.EYELID_AU_SCALE)
            lid_src, lid_tgt = (convert_scale(batch[k], self.cfg.data.au_scale, EYELID_AU_SCALE)[:, AU45]
                                for k in ("source_attrs", "target_attrs"))
            pre_grid = eyelid_grid(self.eyelids, batch["source_landmarks"], lid_src, lid_tgt, src.shape[-1])
        with amp:
            out = self.G_train(src, batch["source_attrs"], batch["target_attrs"],
                               lc.neutral_count if want_neutral else 0, pre_grid)
            fake = out["image"].float()
            res = fake.shape[-1]
            mouth, eyes = L.region_masks(batch["source_landmarks"], batch["target_landmarks"], res)
            weight = 1.0 + lc.mouth_weight * mouth + lc.eye_weight * eyes
            terms: dict[str, torch.Tensor] = {"l1": L.weighted_l1(fake, tgt, weight)}
            # The two eye boxes, made once for the terms that use them.
            if lc.eye_l1 > 0 or lc.drawn_eye_l1 > 0 or lc.mesh_flow > 0:
                eye_box = L.eye_masks(batch["source_landmarks"], batch["target_landmarks"], res)
            if lc.eye_l1 > 0:
                terms["eye_l1"] = L.masked_l1(fake, tgt, eye_box)
            if lc.drawn_eye_l1 > 0 and "generated" in out:
                terms["drawn_eye_l1"] = L.masked_l1(out["generated"].float(), tgt, eye_box)
            if self.vgg is not None:
                terms["perceptual"] = self.vgg(fake, tgt)
            if "grid" in out:
                grid = out["grid"].float()
                if lc.landmark > 0:
                    terms["landmark"] = L.landmark_flow_loss(grid, batch["source_landmarks"], batch["target_landmarks"],
                                                             lc.landmark_expression_weight, lc.upper_lid_weight)
                if lc.mesh_flow > 0:
                    target_grid, covered = mesh_flow_target(batch["source_landmarks"], batch["target_landmarks"], res)
                    mesh_weight = 1.0 + lc.mesh_flow_eye_weight * eye_box
                    terms["mesh_flow"] = mesh_flow_loss(grid, target_grid, covered, mesh_weight)
                if lc.flow_smooth > 0:
                    terms["flow_smooth"] = L.flow_smoothness(grid)
                if lc.mask_prior > 0:
                    outside = 1.0 - torch.clamp(mouth + eyes, 0, 1)
                    terms["mask_prior"] = ((1.0 - out["mask"].float()) * outside).mean()
            if use_d:
                patch, attrs_pred, ident = self.D(fake)
                terms["adversarial"] = L.lsgan_g(patch.float())
                terms["attribute"] = L.attribute_loss(attrs_pred.float(), batch["target_attrs"])
                terms["identity"] = L.identity_loss(ident, batch["identity"])
                if want_neutral:
                    _, n_attrs, _ = self.D(out["neutral"].float())
                    terms["neutral_attribute"] = L.attribute_loss(n_attrs.float(), torch.zeros_like(batch["target_attrs"][: n_attrs.shape[0]]))
            weights = dataclasses.asdict(lc)  # term name -> weight
            total_g = sum(weights[k] * v for k, v in terms.items())
        self.optG.zero_grad(set_to_none=True)
        total_g.backward()
        logs["grad_norm_g"] = _clip(self.G.parameters(), cfg.optim.grad_clip)
        self.optG.step()
        self.D.requires_grad_(True)

        # discriminator update (always: its attribute and identity heads learn from step 0)
        with amp:
            real_fake = torch.cat([tgt, fake.detach()], dim=0)
            patch, attrs_pred, ident = self.D_train(real_fake)
            b = tgt.shape[0]
            d_adv = L.lsgan_d(patch[:b].float(), patch[b:].float())
            d_attr = L.attribute_loss(attrs_pred[:b].float(), batch["target_attrs"])
            d_id = L.identity_loss(ident[:b] if ident is not None else None, batch["identity"])
            total_d = d_adv + max(lc.attribute, 1e-3) * d_attr + max(lc.identity, 1e-3) * d_id
        self.optD.zero_grad(set_to_none=True)
        total_d.backward()
        logs["grad_norm_d"] = _clip(self.D.parameters(), cfg.optim.grad_clip)
        self.optD.step()

        decay = min(cfg.optim.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        ema_update(self.EMA, self.G, decay)
        self.step += 1
        logs.update({f"g/{k}": float(v.detach()) for k, v in terms.items()})
        logs.update({"g/total": float(total_g.detach()), "d/adv": float(d_adv.detach()),
                     "d/attribute": float(d_attr.detach()), "d/identity": float(d_id.detach())})
        self._last = (src, tgt, out)
        return logs

    def image_grid(self) -> torch.Tensor:
        """(3, H, W) in 0..1: rows = samples; columns = source, target, output, mask, generated."""
        src, tgt, out = self._last
        n = min(4, src.shape[0])
        cols = [src[:n], tgt[:n], out["image"][:n].detach().float()]
        if "mask" in out:
            cols += [out["mask"][:n].detach().float().expand(-1, 3, -1, -1) * 2 - 1,
                     out["generated"][:n].detach().float()]
        rows = torch.cat([torch.cat(list(c), dim=2) for c in zip(*cols)], dim=1)
        return ((rows.clamp(-1, 1) + 1) / 2).cpu()


def run(cfg: TrainConfig, resume: bool) -> int:
    """Train until ``cfg.optim.steps``; returns the final step."""
    dist_info, device = setup_distributed()
    try:
        trainer = Trainer(cfg, dist_info, device)
        out = Path(cfg.run.out_dir)
        if resume:
            latest = find_latest(out)
            if latest is not None:
                trainer.resume(latest)
        elif find_latest(out) is not None:
            raise CheckpointError(f"{out / 'checkpoints'}: checkpoints exist; pass --resume or choose another run.out_dir")
        if cfg.run.init_from and find_latest(out) is None:
            trainer.init_from(Path(cfg.run.init_from))
        writer = None
        if dist_info.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tb"))
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), disable=not (cfg.run.progress and dist_info.main))
        metrics = open(out / "metrics.jsonl", "a") if dist_info.main else None
        with progress:
            task = progress.add_task("train", total=cfg.optim.steps, completed=trainer.step, info="")
            while trainer.step < cfg.optim.steps:
                t0 = time.perf_counter()
                logs = trainer.train_step()
                trainer.wall += time.perf_counter() - t0
                step = trainer.step
                if metrics is not None and writer is not None and (step % cfg.run.log_every == 0 or step == 1):
                    logs["wall_s"] = trainer.wall
                    metrics.write(json.dumps({"step": step, **logs}) + "\n")
                    metrics.flush()
                    for k, v in logs.items():
                        writer.add_scalar(k, v, step)
                    progress.update(task, info=f"L1 {logs['g/l1']:.4f} total {logs['g/total']:.3f}")
                if writer is not None and step % cfg.run.image_every == 0:
                    writer.add_image("samples", trainer.image_grid(), step)
                out_of_time = 0 < cfg.run.max_wall_s <= trainer.wall
                if cfg.run.max_wall_s > 0 and dist_info.world > 1:
                    flag = torch.tensor([float(out_of_time)], device=device)
                    dist.broadcast(flag, 0)  # rank 0's clock decides, so every rank stops together
                    out_of_time = bool(flag.item())
                if step % cfg.run.checkpoint_every == 0 or step == cfg.optim.steps or out_of_time:
                    trainer.save()
                progress.update(task, completed=step)
                if out_of_time:
                    break
        if writer is not None:
            writer.close()
        if metrics is not None:
            metrics.close()
        return trainer.step
    finally:
        if dist_info.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML config.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in run.out_dir.")
@click.option("--data", default=None, help="Override data.root.")
@click.option("--out", default=None, help="Override run.out_dir.")
@click.option("--steps", type=int, default=None, help="Override optim.steps.")
@click.option("--threads", type=int, default=None,
              help="Override run.threads (torch CPU threads; 2 on an otherwise idle 2-core machine).")
@click.option("--max-wall-s", type=float, default=None,
              help="Override run.max_wall_s (optimiser wall-time budget, s; e.g. to give back time the run was paused).")
@click.option("--no-progress", is_flag=True, help="No progress bar (logs to files only).")
def main(config_path: str, resume: bool, data: str | None, out: str | None, steps: int | None,
         threads: int | None, max_wall_s: float | None, no_progress: bool) -> None:
    """Train an ICface generator from a TOML config."""
    tune_allocator()  # reuse freed large blocks: about 10% less time per step on 2 CPU cores
    try:
        cfg = load_config(config_path)
        raw = cfg.to_dict()
        if data is not None:
            raw["data"]["root"] = data
        if out is not None:
            raw["run"]["out_dir"] = out
        if steps is not None:
            raw["optim"]["steps"] = steps
        if threads is not None:
            raw["run"]["threads"] = threads
        if max_wall_s is not None:
            raw["run"]["max_wall_s"] = max_wall_s
        if no_progress:
            raw["run"]["progress"] = False
        raw["model"] = {"preset": cfg.model.design, **raw["model"]}
        cfg = config_from_dict(raw, config_path)
        run(cfg, resume)
    except (ConfigError, CheckpointError, DatasetError, InputError) as exc:
        click.echo(f"train.fit: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
