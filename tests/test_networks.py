"""Networks, the inference API and augmentation geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from icface_video.errors import InputError
from icface_video.model import ReenactmentModel
from icface_video.mesh_warp import identity_grid
from icface_video.networks import Generator, GeneratorConfig, named_config
from train.dataset import AugmentConfig, augment_batch
from train.discriminator import Discriminator, DiscriminatorConfig

torch.set_num_threads(1)


def _tiny_fast(res: int = 64) -> GeneratorConfig:
    return named_config("fast", resolution=res, base_channels=8, motion_channels=16, motion_blocks=1,
                        decoder_channels=16, decoder_blocks=1, embed_dim=16)


def test_named_configs_match_the_paper_and_fast_defaults() -> None:
    paper = named_config("paper")
    assert (paper.design, paper.resolution, paper.base_channels, paper.res_blocks) == ("paper", 128, 128, 6)
    fast = named_config("fast")
    assert fast.design == "fast" and fast.resolution == 128
    assert named_config("fast", resolution=256).resolution == 256


@pytest.mark.parametrize("kwargs, key", [({"resolution": 100}, "resolution"), ({"design": "pix"}, "design"),
                                         ({"base_channels": 12}, "base_channels"), ({"fine_flow": 1}, "fine_flow")])
def test_bad_generator_config_names_the_field(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        GeneratorConfig(**kwargs)
    with pytest.raises(ValueError, match="name"):
        named_config("nope")


@pytest.mark.parametrize("res", [64, 128, 256])
def test_fast_generator_shapes_and_identity_start(res: int) -> None:
    g = Generator(_tiny_fast(res)).eval()
    src = torch.rand(1, 3, res, res) * 2 - 1
    sa = torch.rand(1, 20)
    with torch.no_grad():
        cache = g.encode(src, sa)
        out = g.render(cache, torch.rand(5, 20))
        neutral = g.neutralize(cache)
    assert out["image"].shape == (5, 3, res, res) and neutral.shape == (1, 3, res, res)
    assert out["mask"].shape == (5, 1, res, res) and out["grid"].shape == (5, res, res, 2)
    assert out["image"].abs().max() <= 1.0
    # starts as the identity warp with the warped source dominating
    assert torch.allclose(out["grid"], identity_grid(5, res, res), atol=1e-6)
    assert (out["image"] - src).abs().mean() < 0.1


@pytest.mark.parametrize("res", [64, 128])
def test_fine_flow_head_starts_as_a_no_op_and_moves_the_grid_at_full_resolution(res: int) -> None:
    """``fine_flow`` adds a zero-initialised residual flow at the output resolution: the
    same weights render the same image with it on, and a non-zero head moves the
    sampling grid, pixel by pixel."""
    torch.manual_seed(0)
    plain = Generator(_tiny_fast(res)).eval()
    fine = Generator(GeneratorConfig(**{**_tiny_fast(res).to_dict(), "fine_flow": True})).eval()
    missing = fine.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["fine_head.weight", "fine_head.bias"]
    assert [n for n, _ in fine.named_parameters()][-2:] == missing  # registered last (Adam state order)
    src, sa, ta = torch.rand(2, 3, res, res) * 2 - 1, torch.rand(2, 20) * 3, torch.rand(2, 20) * 3
    with torch.no_grad():
        for m in (plain, fine):  # give the main flow something to do
            m.flow_linear.bias.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))
        a, b = plain(src, sa, ta), fine(src, sa, ta)
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["grid"], b["grid"])
        fine.fine_head.bias.copy_(torch.tensor([0.02, -0.01]))
        c = fine(src, sa, ta)
    shift = (c["grid"] - b["grid"]).mean(dim=(0, 1, 2))
    assert torch.allclose(shift, torch.tensor([0.02, -0.01]), atol=1e-5)
    with torch.no_grad():  # one pixel's offset moves that pixel's fetch only
        fine.fine_head.bias.zero_()
        fine.fine_head.weight.zero_()
        fine.fine_head.weight[1, 0, 1, 1] = 1.0  # dy = the first decoder channel, per pixel
        d = fine(src, sa, ta)
    delta = (d["grid"] - b["grid"])[..., 1]
    assert delta.shape == (2, res, res) and delta.abs().max() > 0
    assert not torch.allclose(delta[:, ::2], delta[:, 1::2])  # varies at full resolution


def test_paper_generator_shapes() -> None:
    g = Generator(named_config("paper", resolution=64, base_channels=8, res_blocks=1)).eval()
    with torch.no_grad():
        out = g(torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 20), torch.rand(2, 20), neutral_count=2)
    assert out["image"].shape == (2, 3, 64, 64) and out["neutral"].shape == (2, 3, 64, 64)


def test_discriminator_heads() -> None:
    d = Discriminator(DiscriminatorConfig(base_channels=8, layers=3, num_identities=7))
    patch, attrs, ident = d(torch.rand(2, 3, 64, 64))
    assert patch.shape == (2, 1, 8, 8) and attrs.shape == (2, 20) and ident.shape == (2, 7)
    assert Discriminator(DiscriminatorConfig(base_channels=8, layers=3))(torch.rand(1, 3, 64, 64))[2] is None


def _export(tmp_path: Path, cfg: GeneratorConfig) -> Path:
    from train.export import export_generator

    g = Generator(cfg)
    out = tmp_path / "model"
    export_generator(g.state_dict(), cfg, out, {"note": "test"})
    return out


def test_inference_api_roundtrip_and_argument_checks(tmp_path: Path) -> None:
    cfg = _tiny_fast(64)
    model = ReenactmentModel.load(_export(tmp_path, cfg))
    assert model.resolution == 64
    crop = torch.rand(1, 3, 64, 64) * 2 - 1
    cache = model.prepare_source(crop, torch.zeros(1, 20))
    frames = model.render(cache, torch.rand(3, 20))
    assert frames.shape == (3, 3, 64, 64) and frames.min() >= -1 and frames.max() <= 1
    assert model.neutralize(cache).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="crop"):
        model.prepare_source(torch.rand(1, 3, 32, 32), torch.zeros(1, 20))
    with pytest.raises(ValueError, match="crop"):
        model.prepare_source(crop * 3, torch.zeros(1, 20))
    with pytest.raises(ValueError, match="source_attrs"):
        model.prepare_source(crop, torch.zeros(1, 17))
    with pytest.raises(ValueError, match="attrs"):
        model.render(cache, torch.zeros(3, 19))
    with pytest.raises(TypeError, match="cache"):
        model.render({"x": 1}, torch.zeros(1, 20))
    # Several source faces at once (a source clip's batch): frame k renders source k.
    crops, src_attrs, drv = torch.rand(3, 3, 64, 64) * 2 - 1, torch.rand(3, 20), torch.rand(3, 20)
    together = model.render(model.prepare_source(crops, src_attrs), drv)
    for k in range(3):
        alone = model.render(model.prepare_source(crops[k:k + 1], src_attrs[k:k + 1]), drv[k:k + 1])
        torch.testing.assert_close(together[k:k + 1], alone, atol=1e-4, rtol=0)
    assert model.neutralize(model.prepare_source(crops, src_attrs)).shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="source_attrs"):
        model.prepare_source(crops, torch.zeros(2, 20))
    with pytest.raises(ValueError, match="attrs"):
        model.render(model.prepare_source(crops, src_attrs), torch.zeros(2, 20))


def test_render_parts_compose_the_image(tmp_path: Path) -> None:
    """render_parts' image is mask * source[grid] + (1 - mask) * generated (what paste_parts relies on)."""
    from icface_video.mesh_warp import warp

    cfg = _tiny_fast(64)
    model = ReenactmentModel.load(_export(tmp_path, cfg))
    crop, src, drv = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 20), torch.rand(3, 20)
    cache = model.prepare_source(crop, src)
    parts = model.render_parts(cache, drv)
    assert parts["grid"].shape == (3, 64, 64, 2) and parts["mask"].shape == (3, 1, 64, 64)
    composed = parts["mask"] * warp(crop.expand(3, -1, -1, -1), parts["grid"]) + (1 - parts["mask"]) * parts["generated"]
    torch.testing.assert_close(parts["image"], composed.clamp(-1, 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(model.render(cache, drv), parts["image"])
    torch.testing.assert_close(model.neutralize_parts(cache)["image"], model.neutralize(cache))


def test_cpu_channels_last_inference_matches_the_plain_generator(tmp_path: Path) -> None:
    """The loaded model runs its convolutions channels-last on CPU (faster); the frames
    equal those of the same weights in the default layout."""
    cfg = _tiny_fast(64)
    model = ReenactmentModel.load(_export(tmp_path, cfg))
    convs = [p for p in model.generator.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    plain = Generator(cfg).eval()
    plain.load_state_dict(model.generator.state_dict())
    crop, src, drv = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 20), torch.rand(4, 20)
    with torch.inference_mode():  # the model converts its inputs to its AU scale first
        expect = plain.render(plain.encode(crop, model.network_attrs(src)), model.network_attrs(drv))["image"].clamp(-1, 1)
    got = model.render(model.prepare_source(crop, src), drv)
    assert got.is_contiguous()
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=0)


def test_corrupt_or_mismatched_model_gives_input_error(tmp_path: Path) -> None:
    folder = _export(tmp_path, _tiny_fast(64))
    weights = folder / "generator.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="generator.safetensors"):
        ReenactmentModel.load(folder)
    weights.write_bytes(data)
    meta = json.loads((folder / "config.json").read_text())
    meta["generator"]["decoder_channels"] = 32
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="do not fit"):
        ReenactmentModel.load(folder)
    with pytest.raises(InputError, match="not found"):
        ReenactmentModel.load(tmp_path / "missing")


def test_augmentation_keeps_landmarks_on_the_image_and_negates_yaw_roll() -> None:
    res = 64
    img = -torch.ones(1, 3, res, res)
    img[0, :, 20, 12] = 1.0  # bright pixel at x=12, y=20 (centre 12.5, 20.5)
    lm = torch.zeros(1, 478, 2)
    lm[0, 0] = torch.tensor([12.5, 20.5])
    attrs = torch.zeros(1, 20)
    attrs[0, 18], attrs[0, 19], attrs[0, 17] = 0.3, 0.2, 0.1
    data = {"source": img, "target": img.clone(), "source_attrs": attrs, "target_attrs": attrs.clone(),
            "source_landmarks": lm, "target_landmarks": lm.clone(), "identity": torch.zeros(1, dtype=torch.long)}
    for seed in range(6):
        out = augment_batch(data, np.random.default_rng(seed),
                            AugmentConfig(flip=0.5, scale=0.2, brightness=0, contrast=0, saturation=0))
        a = out["source"][0, 0]
        y, x = divmod(int(a.argmax()), res)
        px, py = out["source_landmarks"][0, 0].tolist()
        assert abs(px - (x + 0.5)) <= 1.0 and abs(py - (y + 0.5)) <= 1.0
        flipped = out["source_attrs"][0, 18] < 0
        assert torch.allclose(out["source_attrs"][0, 18:].abs(), torch.tensor([0.3, 0.2]))
        assert out["source_attrs"][0, 17] == pytest.approx(0.1)
        if flipped:
            assert out["source_attrs"][0, 19] < 0 and px > res / 2
