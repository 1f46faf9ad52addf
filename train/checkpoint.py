"""Training checkpoints: safetensors + JSON only (never pickle), written atomically.

Layout of ``<out_dir>/checkpoints/step_<NNNNNNNN>/``::

    model.safetensors   G.* (generator), EMA.* (EMA generator), D.* (discriminator)
    optim.safetensors   optG.<i>.<name>, optD.<i>.<name>  Adam state per parameter index
    state.json          {"format": 1, "step", "config", "optim": {param_groups},
                         "num_identities", "digest", "wall_s"}

``<out_dir>/checkpoints/latest.json`` names the newest complete checkpoint. The EMA
generator in a checkpoint loads directly into :class:`icface_video.model.ReenactmentModel`,
which owns the names it reads (``CHECKPOINT_STATE_NAME``, ``CHECKPOINT_WEIGHTS_NAME``,
``EMA_PREFIX``); this module writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from icface_video.model import CHECKPOINT_STATE_NAME, CHECKPOINT_WEIGHTS_NAME

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or corrupt; the message names the file."""


def state_digest(*modules: nn.Module) -> str:
    """SHA-256 over the parameters and buffers of ``modules`` (identical on DDP ranks)."""
    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _optim_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"{prefix}.{idx}.{k}"] = t.detach().cpu().contiguous()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _load_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str,
                groups: list[dict], device: torch.device) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        p, idx, name = key.split(".", 2)
        if p != prefix:
            continue
        state.setdefault(int(idx), {})[name] = t.to(device) if name != "step" else t
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(out_dir: Path, step: int, config: dict[str, Any], modules: dict[str, nn.Module],
                    optims: dict[str, torch.optim.Optimizer], extra: dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>`` atomically, update ``latest.json``, drop old checkpoints."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model = {}
    for prefix, m in modules.items():
        for k, v in m.state_dict().items():
            model[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    save_file(model, str(tmp / CHECKPOINT_WEIGHTS_NAME))
    opt_tensors, opt_groups = {}, {}
    for prefix, opt in optims.items():
        t, g = _optim_tensors(opt, prefix)
        opt_tensors.update(t)
        opt_groups[prefix] = g
    save_file(opt_tensors, str(tmp / "optim.safetensors"))
    state = {"format": FORMAT, "step": step, "config": config, "optim": opt_groups, **extra}
    (tmp / CHECKPOINT_STATE_NAME).write_text(json.dumps(state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = root / "latest.json"
    (root / "latest.json.tmp").write_text(json.dumps({"step": step, "path": final.name}))
    os.replace(root / "latest.json.tmp", latest)
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_latest(out_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None when there is none."""
    root = Path(out_dir) / "checkpoints"
    latest = root / "latest.json"
    if latest.is_file():
        try:
            path = root / json.loads(latest.read_text())["path"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{latest}: corrupt ({exc})") from exc
        return path
    return None


def read_state(path: Path) -> dict[str, Any]:
    """Read and check ``state.json`` of a checkpoint folder."""
    path = Path(path)
    sj = path / CHECKPOINT_STATE_NAME
    if not sj.is_file():
        raise CheckpointError(f"{sj}: missing (not a checkpoint folder?)")
    try:
        state = json.loads(sj.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{sj}: corrupt JSON ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT or "step" not in state:
        raise CheckpointError(f"{sj}: not a format-{FORMAT} training checkpoint")
    return state


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning any failure into a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from exc


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The ``prefix.*`` entries of a checkpoint's tensors, with the prefix taken off."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_module(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: Path) -> None:
    """Load ``prefix.*`` tensors into ``module`` strictly."""
    sd = _prefixed(tensors, prefix)
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: {prefix} weights do not fit the configured network ({exc})") from exc


def load_checkpoint(path: Path, modules: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer],
                    device: torch.device) -> dict[str, Any]:
    """Restore modules and optimisers from a checkpoint folder; returns its state.json."""
    path = Path(path)
    state = read_state(path)
    model = read_tensors(path / CHECKPOINT_WEIGHTS_NAME)
    for prefix, m in modules.items():
        load_module(m, model, prefix, path / CHECKPOINT_WEIGHTS_NAME)
    opt = read_tensors(path / "optim.safetensors")
    for prefix, o in optims.items():
        try:
            _load_optim(o, opt, prefix, state["optim"][prefix], device)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path / 'optim.safetensors'}: optimiser {prefix} does not fit ({exc})") from exc
    return state


def init_from_checkpoint(path: Path, modules: dict[str, nn.Module], optims: dict[str, torch.optim.Optimizer],
                         device: torch.device) -> dict[str, Any]:
    """Start a new run from another run's checkpoint; returns its state.json.

    Like :func:`load_checkpoint`, but parameters the modules have and the checkpoint lacks
    keep their initialisation, provided they come last in each module's parameter order
    (so the saved Adam state, indexed by parameter order, still fits the others). Any
    other difference (unexpected, reshaped or reordered weights) is a
    :class:`CheckpointError`.
    """
    path = Path(path)
    state = read_state(path)
    model = read_tensors(path / CHECKPOINT_WEIGHTS_NAME)
    counts: dict[str, int] = {}
    for prefix, m in modules.items():
        try:
            result = m.load_state_dict(_prefixed(model, prefix), strict=False)
        except RuntimeError as exc:
            raise CheckpointError(f"{path / CHECKPOINT_WEIGHTS_NAME}: {prefix} weights do not fit ({exc})") from exc
        if result.unexpected_keys:
            raise CheckpointError(f"{path / CHECKPOINT_WEIGHTS_NAME}: {prefix} has weights the network lacks: "
                                  f"{result.unexpected_keys[:5]}")
        names = [n for n, _ in m.named_parameters()]
        missing = set(result.missing_keys)
        if any(k not in names for k in missing):
            raise CheckpointError(f"{path / CHECKPOINT_WEIGHTS_NAME}: {prefix} lacks buffers {sorted(missing - set(names))}")
        kept = len(names) - len(missing)
        if any(n in missing for n in names[:kept]):
            raise CheckpointError(f"{path / CHECKPOINT_WEIGHTS_NAME}: {prefix}: the new parameters "
                                  f"{sorted(missing)} must come last in the network")
        counts[prefix] = kept
    opt = read_tensors(path / "optim.safetensors")
    for prefix, o in optims.items():
        params = o.param_groups[0]["params"]
        # The module whose parameters this optimiser steps, in the same order.
        owner = next((name for name, m in modules.items()
                      if [id(p) for p in m.parameters()] == [id(p) for p in params]), None)
        n_old = counts.get(owner) if owner is not None else None
        if len(o.param_groups) != 1 or n_old is None:
            raise CheckpointError(f"{path}: cannot map optimiser {prefix} onto the new network")
        saved = state["optim"].get(prefix)
        if not saved or len(saved[0]["params"]) != n_old:
            raise CheckpointError(f"{path / 'optim.safetensors'}: optimiser {prefix} does not fit the network")
        groups = [{**saved[0], "params": list(range(len(params)))}]
        try:
            _load_optim(o, {k: v for k, v in opt.items() if int(k.split(".", 2)[1]) < n_old}, prefix, groups, device)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path / 'optim.safetensors'}: optimiser {prefix} does not fit ({exc})") from exc
        for i, p in enumerate(params[:n_old]):
            st = o.state.get(p, {})
            if "exp_avg" in st and st["exp_avg"].shape != p.shape:
                raise CheckpointError(f"{path / 'optim.safetensors'}: optimiser {prefix} state {i} has shape "
                                      f"{tuple(st['exp_avg'].shape)}, parameter {tuple(p.shape)}")
    return state
