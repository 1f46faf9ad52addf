"""The three-head discriminator of ICface training (patch realism, attributes, identity).

Training only: inference needs the generator alone (:mod:`icface_video.networks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icface_video.attributes import NUM_ATTRS

__all__ = ["DiscriminatorConfig", "Discriminator"]


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Three-head discriminator: patch realism, 20-attribute regression, identity classes.

    Attributes:
        base_channels: channels of the first 4x4 stride-2 conv.
        layers: stride-2 convs; the patch map is resolution / 2**layers on a side.
        num_identities: identity classes (training people); 0 disables the identity head.
    """

    base_channels: int = 32
    layers: int = 4
    num_identities: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.base_channels, int) or self.base_channels < 8:
            raise ValueError(f"base_channels: expected an integer >= 8, got {self.base_channels!r}")
        if not isinstance(self.layers, int) or not 2 <= self.layers <= 6:
            raise ValueError(f"layers: expected an integer in 2..6, got {self.layers!r}")
        if not isinstance(self.num_identities, int) or self.num_identities < 0:
            raise ValueError(f"num_identities: expected an integer >= 0, got {self.num_identities!r}")


class Discriminator(nn.Module):
    """PatchGAN trunk with three heads.

    Convention:
        input: (B, 3, R, R) RGB in [-1, 1].
        returns ``(patch, attrs, identity)``: patch (B, 1, R/2**layers, R/2**layers)
        realism scores; attrs (B, 20) the *normalised* attributes
        (:func:`icface_video.attributes.normalize_for_network`, roughly 0..1); identity (B, num_identities)
        logits, or None when ``num_identities == 0``.
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        cin, ch = 3, config.base_channels
        for _i in range(config.layers):
            layers += [nn.Conv2d(cin, ch, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            cin, ch = ch, min(ch * 2, 512)
        self.trunk = nn.Sequential(*layers)
        self.patch = nn.Conv2d(cin, 1, 3, 1, 1)
        self.attrs = nn.Linear(cin, NUM_ATTRS)
        self.identity = nn.Linear(cin, config.num_identities) if config.num_identities > 0 else None

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        h = self.trunk(image)
        pooled = h.mean(dim=(2, 3))
        ident = self.identity(pooled) if self.identity is not None else None
        return self.patch(h), self.attrs(pooled), ident
