"""ICface networks: building blocks and the one configurable generator (inference and training).

The discriminator, used in training only, is :mod:`train.discriminator`.

Two named generator configurations (:func:`named_config`):

``paper``
    The released ICface design (Tripathy et al., WACV 2020): 128 px RGB in [-1, 1], the
    20 attributes normalised with :func:`icface_video.attributes.normalize_for_network`
    and tiled as 20 extra input channels; two ResNet generators (7x7 conv, two stride-2
    downsamplings, 6 residual blocks, two upsamplings, tanh, 128 base channels): the
    neutraliser G_N (source + neutral attributes -> neutral face) and G_A (neutral face +
    driving attributes -> reenacted face). Neutral attributes are all zeros.

``fast`` (the default)
    Same blocks, built for 2 CPU cores. The source image and its attributes are encoded
    ONCE (:meth:`Generator.encode`, the "neutraliser" of this design: it factors the
    source attributes out into a cached feature map); per frame only a small
    attribute-driven part runs (:meth:`Generator.render`):

    * a motion network at 1/8 (128 px: 16x16) turns (cached motion features, source and
      driving attributes) into a dense backward flow, an occlusion map and decoder
      features; a direct attributes -> coarse 16x16 flow map (linear + MLP, in the
      aligned crop frame) is added to it; the flow starts as the identity warp and is
      supervised with the 478 landmarks of source and target frames during training;
    * a light decoder turns the warped source features into an RGB image of what warping
      cannot produce (mouth interior, teeth, closed eyelids) plus an attention mask;
    * output = mask * warp(source, flow) + (1 - mask) * generated: identity and background
      are copied by warping, not redrawn.

All tensors are NCHW float32. Images are RGB in [-1, 1]. Attributes are the raw 20-value
vector (AUs 0..5, pitch/yaw/roll in radians); networks normalise internally.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from icface_video.attributes import NUM_ATTRS, normalize_for_network
from icface_video.mesh_warp import identity_grid, warp

Design = Literal["paper", "fast"]
NormKind = Literal["instance", "group", "none"]

_RESOLUTIONS = (64, 128, 256)


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """Generator architecture.

    Attributes:
        design: ``"paper"`` (pixel generators G_N + G_A) or ``"fast"`` (cached encoder +
            per-frame warp/attention renderer).
        resolution: square image side in pixels: 64 (tests), 128 or 256.
        base_channels: channels after the first 7x7 conv (paper: 128).
        res_blocks: residual blocks in each paper generator / the fast encoder.
        motion_channels: fast: channels of the per-frame motion network at 1/8 scale.
        motion_blocks: fast: FiLM residual blocks in the motion network.
        decoder_channels: fast: channels of the per-frame decoder at the feature scale.
        decoder_blocks: fast: FiLM residual blocks in the decoder.
        embed_dim: fast: width of the attribute embedding MLP.
        norm: normalisation layer in the generator blocks.
        mask_init_bias: fast: initial logit of the warp-vs-generated mask (high = copy).
        coarse_flow_gain: fast: output gain of the attributes -> coarse flow map (with Adam
            this is its learning-rate multiplier: that map must move several pixels).
        fine_flow: fast: add a residual flow predicted by the decoder's last layer at the
            full resolution (the main flow is 32x32, 4 px cells at 128 px), for motion with
            sharp edges: a closing eyelid folds the eye opening away, so the fetch offset
            jumps by the opening's height (about 3 px) across the lid line. Zero-initialised,
            so a model trained without it renders identically when it is switched on.
    """

    design: Design = "fast"
    resolution: int = 128
    base_channels: int = 16
    res_blocks: int = 2
    motion_channels: int = 96
    motion_blocks: int = 3
    decoder_channels: int = 64
    decoder_blocks: int = 2
    embed_dim: int = 128
    norm: NormKind = "group"
    mask_init_bias: float = 3.0
    coarse_flow_gain: float = 10.0
    fine_flow: bool = False

    def __post_init__(self) -> None:
        if self.design not in ("paper", "fast"):
            raise ValueError(f"design: expected 'paper' or 'fast', got {self.design!r}")
        if self.resolution not in _RESOLUTIONS:
            raise ValueError(f"resolution: expected one of {_RESOLUTIONS}, got {self.resolution!r}")
        if self.norm not in ("instance", "group", "none"):
            raise ValueError(f"norm: expected 'instance', 'group' or 'none', got {self.norm!r}")
        if not isinstance(self.fine_flow, bool):
            raise ValueError(f"fine_flow: expected true or false, got {self.fine_flow!r}")
        for name in ("base_channels", "motion_channels", "decoder_channels", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ValueError(f"{name}: expected a positive multiple of 8, got {value!r}")
        for name in ("res_blocks", "motion_blocks", "decoder_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"generator config: unknown keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


def named_config(name: str, **overrides: Any) -> GeneratorConfig:
    """The named generator configurations: ``"paper"`` and ``"fast"`` (default).

    ``overrides`` replace single fields, e.g. ``named_config("fast", resolution=256)``.
    """
    if name == "paper":
        base = GeneratorConfig(design="paper", resolution=128, base_channels=128, res_blocks=6,
                               norm="instance")
    elif name == "fast":
        base = GeneratorConfig()
    else:
        raise ValueError(f"name: expected 'paper' or 'fast', got {name!r}")
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """Normalisation layer: instance (affine), group (8 groups or fewer) or identity."""
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Reflect-padded conv -> norm -> ReLU. ``stride=2`` halves the size."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 norm: NormKind = "instance", act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, padding_mode="reflect",
                      bias=norm == "none"),
            make_norm(norm, cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpBlock(nn.Sequential):
    """Nearest x2 upsampling then a 3x3 ConvBlock (no checkerboard artefacts)."""

    def __init__(self, cin: int, cout: int, norm: NormKind = "instance") -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvBlock(cin, cout, 3, 1, norm))


class ResBlock(nn.Module):
    """Residual block: x + conv-norm-relu-conv-norm(x), optionally FiLM-modulated.

    With ``film_dim > 0`` the forward takes an embedding (B, film_dim) that scales and
    shifts the first conv's output per channel. Its init is small but NOT zero: with a
    zero-initialised output head after it (the flow head), a zero FiLM would leave the
    attributes with no path to the output and no gradient to open one (a saddle).
    """

    def __init__(self, channels: int, norm: NormKind = "instance", film_dim: int = 0) -> None:
        super().__init__()
        self.conv1 = ConvBlock(channels, channels, 3, 1, norm, act=False)
        self.conv2 = ConvBlock(channels, channels, 3, 1, norm, act=False)
        self.film: nn.Linear | None = None
        if film_dim > 0:
            self.film = nn.Linear(film_dim, 2 * channels)
            with torch.no_grad():
                self.film.weight.mul_(0.5)
                self.film.bias.zero_()

    def forward(self, x: torch.Tensor, embed: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(x)
        if self.film is not None:
            if embed is None:
                raise ValueError("embed: required by a FiLM ResBlock")
            gamma, beta = self.film(embed)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + gamma) + beta
        h = self.conv2(F.relu(h))
        return x + h


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of ``conv``, a head made with one (torch's default ``bias=True``)."""
    if conv.bias is None:
        raise ValueError(f"{conv}: expected a convolution with a bias")
    return conv.bias


def tile_attributes(attrs: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 20) raw attributes -> (B, 20, size, size) normalised and tiled over the image."""
    return normalize_for_network(attrs)[:, :, None, None].expand(-1, -1, size, size)


class ResnetGenerator(nn.Module):
    """The paper's generator: image (3) + tiled attributes (20) -> image (3), tanh.

    7x7 conv, two stride-2 downsamplings, ``res_blocks`` residual blocks, two upsamplings,
    7x7 conv, tanh. Width ``base_channels`` (x2, x4 after the downsamplings).
    """

    def __init__(self, base: int, res_blocks: int, norm: NormKind) -> None:
        super().__init__()
        self.stem = ConvBlock(3 + NUM_ATTRS, base, 7, 1, norm)
        self.down = nn.Sequential(ConvBlock(base, 2 * base, 3, 2, norm), ConvBlock(2 * base, 4 * base, 3, 2, norm))
        self.blocks = nn.Sequential(*[ResBlock(4 * base, norm) for _ in range(res_blocks)])
        self.up = nn.Sequential(UpBlock(4 * base, 2 * base, norm), UpBlock(2 * base, base, norm))
        self.head = nn.Conv2d(base, 3, 7, 1, 3, padding_mode="reflect")

    def forward(self, image: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, tile_attributes(attrs, image.shape[-1])], dim=1)
        return torch.tanh(self.head(self.up(self.blocks(self.down(self.stem(x))))))


# ---------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------


class Generator(nn.Module):
    """ICface generator, ``paper`` or ``fast`` design (see the module docstring).

    Use :meth:`encode` once per source and :meth:`render` per frame; :meth:`forward`
    does both (training). The cache is a dict of tensors, batch size of the source.

    Convention:
        source: (B, 3, R, R) RGB in [-1, 1], R = ``config.resolution``.
        attrs: (B, 20) raw attributes: AUs 0..5, then pitch/yaw/roll in radians.
        output ``"image"``: (B, 3, R, R) in [-1, 1]. The fast design also returns
        ``"grid"`` (B, R, R, 2) backward sampling grid into the source (grid_sample
        convention), ``"mask"`` (B, 1, R, R) in 0..1 (1 = warped source) and
        ``"generated"`` (B, 3, R, R) the decoder's image.
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.design == "paper":
            self.g_n = ResnetGenerator(c.base_channels, c.res_blocks, c.norm)
            self.g_a = ResnetGenerator(c.base_channels, c.res_blocks, c.norm)
            return
        # fast: features at 32x32, motion at 16x16, whatever the resolution.
        self.n_down = int(round(math.log2(c.resolution // 32)))
        chans = [min(c.base_channels * 2**i, 256) for i in range(self.n_down + 1)]
        self.stem = ConvBlock(3 + NUM_ATTRS, chans[0], 7, 1, c.norm)
        self.down = nn.Sequential(*[ConvBlock(chans[i], chans[i + 1], 3, 2, c.norm) for i in range(self.n_down)])
        self.enc_blocks = nn.Sequential(*[ResBlock(chans[-1], c.norm) for _ in range(c.res_blocks)])
        self.to_motion = ConvBlock(chans[-1], c.motion_channels, 3, 2, c.norm)
        self.embed = nn.Sequential(nn.Linear(3 * NUM_ATTRS, c.embed_dim), nn.ReLU(inplace=True),
                                   nn.Linear(c.embed_dim, c.embed_dim), nn.ReLU(inplace=True))
        self.motion_blocks = nn.ModuleList(ResBlock(c.motion_channels, c.norm, c.embed_dim)
                                           for _ in range(c.motion_blocks))
        self.motion_up = UpBlock(c.motion_channels, c.decoder_channels, c.norm)
        # Direct attribute -> coarse flow map (16x16, crop-aligned): the learnable "attribute
        # change -> landmark offset" map; linear in the attributes plus an MLP correction.
        self.flow_linear = nn.Linear(3 * NUM_ATTRS, 2 * 16 * 16)
        self.flow_mlp = nn.Linear(c.embed_dim, 2 * 16 * 16)
        for layer in (self.flow_linear, self.flow_mlp):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.flow_head = nn.Conv2d(c.decoder_channels, 3, 3, 1, 1)  # dx, dy, occlusion logit
        nn.init.zeros_(self.flow_head.weight)
        with torch.no_grad():
            _bias(self.flow_head).copy_(torch.tensor([0.0, 0.0, 4.0]))
        self.dec_in = ConvBlock(chans[-1] + c.decoder_channels, c.decoder_channels, 1, 1, c.norm)
        self.dec_blocks = nn.ModuleList(ResBlock(c.decoder_channels, c.norm, c.embed_dim)
                                        for _ in range(c.decoder_blocks))
        up_ch = [max(c.decoder_channels // 2**(i + 1), 16) for i in range(self.n_down)]
        ups = []
        cin = c.decoder_channels
        for cout in up_ch:
            ups.append(UpBlock(cin, cout, c.norm))
            cin = cout
        self.dec_up = nn.Sequential(*ups)
        self.out_head = nn.Conv2d(cin, 4, 3, 1, 1)  # rgb + mask logit
        with torch.no_grad():
            _bias(self.out_head)[3] = c.mask_init_bias
        # Registered last, so the parameter order (and Adam state indices) of a model
        # trained without it stay the same: see train.fit's init_from.
        self.fine_head: nn.Conv2d | None = None
        if c.fine_flow:
            self.fine_head = nn.Conv2d(cin, 2, 3, 1, 1)
            nn.init.zeros_(self.fine_head.weight)
            nn.init.zeros_(_bias(self.fine_head))

    # -- encode ---------------------------------------------------------------------------
    def encode(self, source: torch.Tensor, source_attrs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the once-per-source part. Returns the cache for :meth:`render`."""
        if self.config.design == "paper":
            neutral_attrs = torch.zeros_like(source_attrs)
            neutral = self.g_n(source, neutral_attrs)
            return {"neutral": neutral}
        x = torch.cat([source, tile_attributes(source_attrs, source.shape[-1])], dim=1)
        feats = self.enc_blocks(self.down(self.stem(x)))
        return {
            "source": source,
            "source_attrs": source_attrs,
            "features": feats,
            "motion": self.to_motion(feats),
        }

    # -- render ---------------------------------------------------------------------------
    def render(self, cache: dict[str, torch.Tensor], attrs: torch.Tensor,
               pre_grid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Render driving attributes (B, 20) from a cache of batch 1 or B.

        ``pre_grid`` (fast design): an optional (B, R, R, 2) backward grid over the source
        crop applied *before* the generator's own flow (the eyelid warp,
        ``icface_video.eyelids``); the returned ``grid`` is the composition, so a pixel
        fetches ``source[pre_grid[grid_net]]``. Ignored by the paper design (it draws).
        """
        if self.config.design == "paper":
            neutral = cache["neutral"]
            if neutral.shape[0] != attrs.shape[0]:
                neutral = neutral.expand(attrs.shape[0], -1, -1, -1)
            return {"image": self.g_a(neutral, attrs)}
        b = attrs.shape[0]

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.expand(b, *t.shape[1:]) if t.shape[0] != b else t

        source, feats, motion = rep(cache["source"]), rep(cache["features"]), rep(cache["motion"])
        n_src = normalize_for_network(rep(cache["source_attrs"]))
        n_tgt = normalize_for_network(attrs)
        a = torch.cat([n_src, n_tgt, n_tgt - n_src], dim=1)
        e = self.embed(a)
        coarse = self.config.coarse_flow_gain * (self.flow_linear(a) + self.flow_mlp(e)).view(b, 2, 16, 16)
        h = motion
        for blk in self.motion_blocks:
            h = blk(h, e)
        h = self.motion_up(h)
        fo = self.flow_head(h)
        fh, fw = feats.shape[-2:]
        coarse = F.interpolate(coarse, size=(fh, fw), mode="bilinear", align_corners=False)
        flow, occl = fo[:, :2] + coarse, torch.sigmoid(fo[:, 2:3])
        grid_lo = identity_grid(b, fh, fw, feats.device, feats.dtype) + flow.permute(0, 2, 3, 1)
        d = self.dec_in(torch.cat([warp(feats, grid_lo) * occl, h], dim=1))
        for blk in self.dec_blocks:
            d = blk(d, e)
        d = self.dec_up(d)
        out = self.out_head(d)
        generated = torch.tanh(out[:, :3])
        mask = torch.sigmoid(out[:, 3:4])
        res = source.shape[-1]
        flow_hi = F.interpolate(flow, size=(res, res), mode="bilinear", align_corners=False)
        if self.fine_head is not None:
            flow_hi = flow_hi + self.fine_head(d)
        ident = identity_grid(b, res, res, source.device, source.dtype)
        grid = ident + flow_hi.permute(0, 2, 3, 1)
        if pre_grid is not None:
            # Compose as offsets: the pre-warp's displacement, fetched where the generator's
            # grid points (zero outside the crop, so fetches beyond it are left as they are).
            offset = (pre_grid.to(grid.dtype) - ident).permute(0, 3, 1, 2)
            grid = grid + F.grid_sample(offset, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False).permute(0, 2, 3, 1)
        image = mask * warp(source, grid) + (1 - mask) * generated
        return {"image": image, "grid": grid, "mask": mask, "generated": generated}

    def neutralize(self, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """The neutral face (zero AUs, zero angles) of a cached source: (B, 3, R, R) in [-1, 1]."""
        if self.config.design == "paper":
            return cache["neutral"]
        src = cache["source_attrs"]
        return self.render(cache, torch.zeros_like(src))["image"]

    def forward(self, source: torch.Tensor, source_attrs: torch.Tensor,
                target_attrs: torch.Tensor, neutral_count: int = 0,
                pre_grid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training pass: encode + render (``pre_grid`` as in :meth:`render`); with
        ``neutral_count`` > 0 also the neutral faces of the first ``neutral_count`` sources
        as ``"neutral"`` (n, 3, R, R)."""
        cache = self.encode(source, source_attrs)
        out = self.render(cache, target_attrs, pre_grid)
        if neutral_count > 0:
            n = min(neutral_count, source.shape[0])
            out["neutral"] = self.neutralize({k: v[:n] for k, v in cache.items()})
        return out


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
