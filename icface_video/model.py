"""Inference API of the ICface generator: load a model, cache a source face, render frames.

A model folder holds ``config.json`` (the :class:`GeneratorConfig` under ``"generator"``,
plus metadata) and ``generator.safetensors`` (fp16 or fp32 weights); this is what
``python -m train.export`` writes and what ships in ``icface_video/weights/``. A training
checkpoint folder (``state.json`` + ``model.safetensors``) also loads: its EMA generator
is used. Nothing is ever unpickled. An ``eyelids.json`` in the folder (fast design) adds
the eyelid warp of :mod:`icface_video.eyelids`, used when the source's landmarks are given
to :meth:`ReenactmentModel.prepare_source`. A ``motion.json`` + ``motion.safetensors`` pair
adds the motion model of the geometric renderer (:mod:`icface_video.motion`), the default
way frames are rendered (:attr:`ReenactmentModel.motion`).

Typical use::

    model = ReenactmentModel.load()                  # the shipped default model
    cache = model.prepare_source(crop, source_attrs, landmarks)  # once per source face (or batch)
    frames = model.render(cache, driving_attrs)       # (B, 3, R, R) in [-1, 1]
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from icface_video.attributes import AU_NAMES, AU_SCALES, NUM_ATTRS, convert_scale, to_scale
from icface_video.errors import InputError
from icface_video.eyelids import EyelidConfig, check_landmarks, eyelid_grid, load_for_model
from icface_video.motion import MOTION_NAME, MotionModel
from icface_video.networks import Generator, GeneratorConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "generator.safetensors"
#: What :meth:`ReenactmentModel.load` reads of a training checkpoint folder (``--model``
#: takes one): its state file (the training config under ``config.model``), its weights
#: file, and the prefix of the EMA generator's tensors in it. ``train.checkpoint`` writes
#: the folder with these names (and more: the optimiser state, the discriminator).
CHECKPOINT_STATE_NAME = "state.json"
CHECKPOINT_WEIGHTS_NAME = "model.safetensors"
EMA_PREFIX = "EMA"
_AU45 = AU_NAMES.index("AU45")
#: The AU scale of ``eyelids.json`` files (all fitted before the calibration).
EYELID_AU_SCALE = "v1"


def model_au_scale(meta: dict[str, Any]) -> str:
    """The AU scale a model was trained on, from its config.json / state.json.

    ``meta["au_scale"]`` (exported models), else the training config's
    ``data.au_scale`` (``train_config`` of an export, ``config`` of a checkpoint), else
    ``"v1"`` (every model made before the calibration).

    Raises:
        ValueError: an unknown scale name.
    """
    scale = meta.get("au_scale")
    if scale is None:
        for key in ("train_config", "config"):
            data = (meta.get(key) or {}).get("data") if isinstance(meta.get(key), dict) else None
            if isinstance(data, dict) and "au_scale" in data:
                scale = data["au_scale"]
                break
    scale = "v1" if scale is None else scale
    if scale not in AU_SCALES:
        raise ValueError(f"au_scale: expected one of {AU_SCALES}, got {scale!r}")
    return scale


@dataclass
class SourceCache:
    """The once-per-source state: G_N's output / the encoder's features.

    Attributes:
        tensors: network-specific cached tensors (batch 1, or one per source face).
        resolution: side R of the crops this cache renders.
    """

    tensors: dict[str, torch.Tensor]
    resolution: int

    @property
    def batch(self) -> int:
        """How many source faces the cache holds."""
        return int(next(iter(self.tensors.values())).shape[0])


def _check_image(name: str, x: Any, resolution: int, batch: int | None = None) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != resolution or x.shape[3] != resolution:
        raise ValueError(f"{name}: expected shape (B, 3, {resolution}, {resolution}), got {tuple(x.shape)}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name}: expected batch size {batch}, got {x.shape[0]}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating point tensor in [-1, 1], got {x.dtype}")
    if x.numel() and (float(x.min()) < -1.001 or float(x.max()) > 1.001):
        raise ValueError(f"{name}: values must be in [-1, 1], got {float(x.min()):.3f}..{float(x.max()):.3f}")
    return x


def _check_attrs(name: str, a: Any, batch: int | None = None) -> torch.Tensor:
    if not torch.is_tensor(a):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(a).__name__}")
    if a.dim() != 2 or a.shape[1] != NUM_ATTRS or a.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (B, {NUM_ATTRS}) with B >= 1, got {tuple(a.shape)}")
    if batch is not None and a.shape[0] != batch:
        raise ValueError(f"{name}: expected batch size {batch}, got {a.shape[0]}")
    if not torch.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a.float()


class ReenactmentModel:
    """A loaded ICface generator in eval mode (inference only, no gradients).

    Convention:
        crops: (B, 3, R, R) float RGB in [-1, 1], R = :attr:`resolution`, aligned like the
            training crops (whole head, eyes around y = 0.45 R).
        attributes: (B, 20) float: 17 AU intensities 0..5 (``attributes.AU_NAMES``) on the
            tool's scale (v2, ``attributes.AU_SCALE``), then pitch, yaw, roll in radians
            (``attributes.POSE_NAMES``). They are converted to the scale the network was
            trained on (:attr:`au_scale`, ``attributes.to_scale``) on the way in.
        outputs: (B, 3, R, R) float32 RGB in [-1, 1] on the model's device.
    """

    def __init__(self, generator: Generator, meta: dict[str, Any] | None = None,
                 eyelids: EyelidConfig | None = None) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.config: GeneratorConfig = generator.config
        self.meta = meta or {}
        #: the AU scale the network was trained on (inputs are converted to it)
        self.au_scale: str = model_au_scale(self.meta)
        #: the eyelid warp (fast design only); set to None to render without it.
        self.eyelids = eyelids if generator.config.design == "fast" else None
        #: the motion model of the geometric renderer (``motion.json`` in the folder), or None.
        self.motion: MotionModel | None = None
        #: the folder the model was loaded from (:meth:`load`), or None.
        self.folder: Path | None = None
        self._set_layout()

    def _set_layout(self) -> None:
        # On CPU, channels-last convolutions (oneDNN) run about 1.5x faster than NCHW
        # with identical results (bench: train/README.md); CUDA keeps the default layout.
        self._layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        # Module.to takes memory_format (torch docs), but torch's overloads leave it out.
        self.generator.to(memory_format=self._layout)  # type: ignore[call-overload]

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def to(self, device: str | torch.device) -> "ReenactmentModel":
        self.generator.to(device)
        self._set_layout()
        return self

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             eyelids: bool | str | Path = True) -> "ReenactmentModel":
        """Load an exported model folder or a training checkpoint folder.

        Args:
            path: folder; None = the shipped default model (``icface_video/weights``).
            device: torch device for the weights (kept in float32).
            eyelids: True = the folder's ``eyelids.json`` when there is one; False = none;
                a path = that eyelid file (e.g. for a training checkpoint folder).
        Raises:
            InputError: the folder or a file is missing, corrupt or does not fit.
        """
        folder = Path(path) if path is not None else WEIGHTS_DIR
        if not folder.is_dir():
            raise InputError(folder, "model folder not found")
        if (folder / CONFIG_NAME).is_file():
            meta_path, weights_path, prefix = folder / CONFIG_NAME, folder / WEIGHTS_NAME, ""
        elif (folder / CHECKPOINT_STATE_NAME).is_file():
            meta_path, weights_path = folder / CHECKPOINT_STATE_NAME, folder / CHECKPOINT_WEIGHTS_NAME
            prefix = EMA_PREFIX + "."
        else:
            raise InputError(folder, f"neither {CONFIG_NAME} (exported model) nor {CHECKPOINT_STATE_NAME} "
                                     "(checkpoint) found")
        try:
            meta = json.loads(meta_path.read_text())
            gen = meta["generator"] if prefix == "" else meta["config"]["model"]
            config = GeneratorConfig.from_dict(gen)
            model_au_scale(meta)
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InputError(meta_path, f"unusable model config ({exc})") from exc
        if not weights_path.is_file():
            raise InputError(weights_path, "weights file missing")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InputError(weights_path, f"corrupt or truncated safetensors file ({exc})") from exc
        state = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        generator = Generator(config)
        try:
            generator.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError(weights_path, f"weights do not fit the configured generator ({exc})") from exc
        if isinstance(eyelids, bool):
            lids = load_for_model(folder) if eyelids else None
        else:
            lids = EyelidConfig.load(eyelids)
        model = cls(generator.to(device), meta, lids)
        model.folder = folder
        if (folder / MOTION_NAME).is_file():
            model.motion = MotionModel.load(folder)
        return model

    @torch.inference_mode()
    def prepare_source(self, crop: torch.Tensor, source_attrs: torch.Tensor,
                       landmarks: torch.Tensor | None = None) -> SourceCache:
        """Run the once-per-source part (G_N / the encoder) on aligned source crops.

        Args:
            crop: (B, 3, R, R) RGB in [-1, 1]; B = 1 for a photo, B frames of a source clip.
            source_attrs: (B, 20) each crop's own attributes (AUs 0..5, angles in radians).
            landmarks: optional (B, 478, 2) each crop's MediaPipe landmarks in crop pixels
                (x right, y down, origin at the top-left pixel corner). With them, a model
                that has an eyelid warp closes and opens the eyes to the driving AU45.
        Returns:
            A :class:`SourceCache` for :meth:`render` and :meth:`neutralize`.
        """
        crop = _check_image("crop", crop, self.resolution)
        source_attrs = self.network_attrs(_check_attrs("source_attrs", source_attrs, batch=crop.shape[0]))
        dev = self.device
        crop = crop.to(dev, torch.float32).contiguous(memory_format=self._layout)
        tensors = self.generator.encode(crop, source_attrs.to(dev))
        tensors = {k: v.contiguous(memory_format=self._layout) if v.dim() == 4 else v for k, v in tensors.items()}
        if landmarks is not None:
            check_landmarks(landmarks, batch=crop.shape[0])
            tensors["source_landmarks"] = landmarks.to(dev, torch.float32)
        return SourceCache(tensors, self.resolution)

    def network_attrs(self, attrs: torch.Tensor) -> torch.Tensor:
        """(B, 20) attributes on the tool's scale (v2) -> the network's scale (:attr:`au_scale`).

        Exact for v1 models wherever v1 reaches (``attributes.to_scale``); a v2 AU above
        the v1 curve's top (e.g. AU12 above about 2) is fed as v1's 5.
        """
        return to_scale(attrs, self.au_scale)

    def _pre_grid(self, cache: SourceCache, attrs: torch.Tensor) -> torch.Tensor | None:
        """The eyelid pre-warp for these driving attributes (network scale), or None without eyelids/landmarks."""
        lms = cache.tensors.get("source_landmarks")
        if self.eyelids is None or lms is None:
            return None
        b = attrs.shape[0]
        # the eyelid curve is on its own scale (identity for v1 models)
        src_au45 = convert_scale(cache.tensors["source_attrs"], self.au_scale, EYELID_AU_SCALE)[:, _AU45]
        drv_au45 = convert_scale(attrs.float(), self.au_scale, EYELID_AU_SCALE)[:, _AU45]
        if lms.shape[0] != b:
            lms, src_au45 = lms.expand(b, -1, -1), src_au45.expand(b)
        return eyelid_grid(self.eyelids, lms, src_au45, drv_au45, self.resolution)

    def _check_cache(self, cache: Any) -> SourceCache:
        if not isinstance(cache, SourceCache):
            raise TypeError(f"cache: expected a SourceCache from prepare_source, got {type(cache).__name__}")
        if cache.resolution != self.resolution:
            raise ValueError(f"cache: made for resolution {cache.resolution}, model is {self.resolution}")
        return cache

    @torch.inference_mode()
    def render(self, cache: SourceCache, attrs: torch.Tensor) -> torch.Tensor:
        """Render the cached source with driving attributes.

        Args:
            cache: from :meth:`prepare_source`, of one source face (rendered B times) or of B.
            attrs: (B, 20) driving attributes (AUs 0..5 on the tool's scale, pitch/yaw/roll radians).
        Returns:
            (B, 3, R, R) float32 RGB in [-1, 1].
        """
        return self.render_parts(cache, attrs)["image"]

    @torch.inference_mode()
    def render_parts(self, cache: SourceCache, attrs: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`render` with the fast design's parts, for paste-back at full resolution.

        Returns:
            ``image`` (B, 3, R, R) in [-1, 1]; fast design also ``grid`` (B, R, R, 2): where
            each output pixel fetches the source crop (``grid_sample`` coordinates, -1..1,
            ``align_corners=False``), ``mask`` (B, 1, R, R) 0..1 (1 = fetched source, 0 =
            drawn) and ``generated`` (B, 3, R, R) in [-1, 1], the drawn part
            (``image = mask * source[grid] + (1 - mask) * generated``).
        """
        cache = self._check_cache(cache)
        attrs = _check_attrs("attrs", attrs, batch=None if cache.batch == 1 else cache.batch)
        attrs = self.network_attrs(attrs).to(self.device)
        return self._finish(self.generator.render(cache.tensors, attrs, self._pre_grid(cache, attrs)))

    @torch.inference_mode()
    def neutralize(self, cache: SourceCache) -> torch.Tensor:
        """The source's neutral face (zero AUs, zero angles): (B, 3, R, R) RGB in [-1, 1], B = ``cache.batch``."""
        return self.neutralize_parts(cache)["image"]

    @torch.inference_mode()
    def neutralize_parts(self, cache: SourceCache) -> dict[str, torch.Tensor]:
        """:meth:`neutralize` with the parts of :meth:`render_parts` (fast design)."""
        cache = self._check_cache(cache)
        if self.config.design == "paper":
            return {"image": self.generator.neutralize(cache.tensors).clamp(-1, 1).contiguous()}
        # The neutral attributes (zero AUs, zero angles) on the network's scale: zero on
        # every scale, since each AU curve starts at (0, 0).
        zeros = self.network_attrs(torch.zeros_like(cache.tensors["source_attrs"]))
        return self._finish(self.generator.render(cache.tensors, zeros, self._pre_grid(cache, zeros)))

    @staticmethod
    def _finish(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = {"image": out["image"].clamp(-1, 1).contiguous()}
        for key in ("grid", "mask", "generated"):
            if key in out:
                parts[key] = out[key].contiguous()
        return parts
