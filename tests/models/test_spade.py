"""GauGAN's pieces, each on its own: SPADE, residual blocks, generator, discriminator, encoder, losses, VGG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.registry import create, list_models
from models.spade import (
    SPADE,
    ConvEncoder,
    MultiscaleDiscriminator,
    RegionDecoder,
    RegionEncoder,
    SPADEGenerator,
    SPADEResBlock,
    VAEDecoder,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    one_hot,
    region_statistics,
)
from models.vgg import VGGFeatures, VGGLoss


def test_one_hot_zeroes_ignored_pixels() -> None:
    mask = torch.tensor([[[0, 2], [255, 1]]])
    oh = one_hot(mask, 3)
    assert oh.shape == (1, 3, 2, 2)
    assert oh[0, :, 1, 0].sum() == 0 and oh[0, 2, 0, 1] == 1 and oh.sum() == 3


def test_spade_modulates_a_normalised_input_by_the_mask() -> None:
    torch.manual_seed(0)
    layer = SPADE(norm_nc=8, label_nc=3, hidden=128)
    assert layer.mlp_shared[0].out_channels == 128
    x = torch.randn(2, 8, 16, 16) * 5 + 3
    seg = one_hot(torch.randint(0, 3, (2, 64, 64)), 3)  # any mask size: resized (nearest) inside
    for conv in (layer.mlp_gamma, layer.mlp_beta):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    out = layer(x, seg)  # gamma = beta = 0: just the parameter-free norm
    assert torch.allclose(out.mean((2, 3)), torch.zeros(2, 8), atol=1e-5)
    torch.nn.init.constant_(layer.mlp_beta.bias, 2.0)
    assert torch.allclose(layer(x, seg).mean((2, 3)), torch.full((2, 8), 2.0), atol=1e-4)
    assert not any(p.requires_grad for p in layer.param_free_norm.parameters())


def test_residual_blocks_learn_a_shortcut_only_when_the_width_changes() -> None:
    same = SPADEResBlock(16, 16, label_nc=4, hidden=8)
    wider = SPADEResBlock(16, 8, label_nc=4, hidden=8)
    assert not same.learned_shortcut and not hasattr(same, "conv_s")
    assert wider.learned_shortcut and wider.conv_s.weight.shape[:2] == (8, 16)
    seg = one_hot(torch.randint(0, 4, (3, 32, 32)), 4)
    assert wider(torch.randn(3, 16, 8, 8), seg).shape == (3, 8, 8, 8)
    assert hasattr(same.conv_0, "weight_orig"), "spectral norm on the convolutions"


@pytest.mark.parametrize(("mode", "sw"), [("normal", 2), ("more", 2), ("most", 2)])
def test_generator_upsampling_modes(mode: str, sw: int) -> None:
    size = {"normal": 64, "more": 128, "most": 256}[mode]
    g = SPADEGenerator(label_nc=5, size=size, ngf=2, z_dim=8, num_upsampling=mode, spade_hidden=4)  # type: ignore[arg-type]
    assert g.sw == sw
    seg = one_hot(torch.randint(0, 5, (1, size, size)), 5)
    out = g(seg, torch.randn(1, 8))
    assert out.shape == (1, 3, size, size) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="z must be"):
        g(seg, torch.randn(1, 9))
    with pytest.raises(ValueError, match="multiple of"):
        SPADEGenerator(5, size=80, num_upsampling="normal")


def test_generator_any_batch_size_and_gradients() -> None:
    torch.manual_seed(0)
    g = SPADEGenerator(label_nc=4, size=64, ngf=4, z_dim=16, spade_hidden=8)
    for n in (1, 3):
        out = g(one_hot(torch.randint(0, 4, (n, 64, 64)), 4), torch.randn(n, 16))
        assert out.shape == (n, 3, 64, 64)
    out.mean().backward()
    assert all(p.grad is not None for p in g.parameters() if p.requires_grad)


def test_multiscale_discriminator_returns_features_per_scale() -> None:
    d = MultiscaleDiscriminator(label_nc=4, ndf=8, n_layers=4, num_d=2)
    img, seg = torch.randn(2, 3, 64, 64), one_hot(torch.randint(0, 4, (2, 64, 64)), 4)
    out = d(img, seg)
    assert len(out) == 2 and all(len(feats) == 5 for feats in out)
    assert out[0][-1].shape[1] == 1 and out[1][-1].shape[-1] < out[0][-1].shape[-1]
    inner = d.discriminators[0].layers
    assert isinstance(inner[1][1], torch.nn.InstanceNorm2d) and hasattr(inner[1][0], "weight_orig")


def test_encoder_and_vae_decoder() -> None:
    enc, dec = ConvEncoder(size=64, nef=4, z_dim=16), VAEDecoder(size=64, ndf=4, z_dim=16)
    mu, logvar = enc(torch.rand(3, 3, 80, 80) * 2 - 1)  # any input size: resized inside
    assert mu.shape == logvar.shape == (3, 16)
    assert dec(mu).shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="power of two"):
        ConvEncoder(size=96)


def test_region_codes_come_from_their_own_region() -> None:
    enc = RegionEncoder(label_nc=3, nef=4, code_dim=5)
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[:, :, 16:] = 1  # class 2 absent
    image = torch.zeros(2, 3, 64, 64)
    image[1, :, :, 48:] = 1.0  # the second image differs in class 1's region only, beyond class 0's receptive field
    mu, logvar = enc(image, one_hot(mask, 3))
    assert mu.shape == logvar.shape == (2, 15)
    codes = mu.view(2, 3, 5)
    assert torch.allclose(codes[0, 0], codes[1, 0], atol=1e-5), "class 0's region is the same in both"
    assert not torch.allclose(codes[0, 1], codes[1, 1]), "class 1's region differs"
    assert torch.equal(codes[:, 2], torch.zeros(2, 5)) and torch.equal(logvar.view(2, 3, 5)[:, 2], torch.zeros(2, 5))
    with pytest.raises(ValueError, match="mask"):
        enc(image)
    stats, present = region_statistics(image, one_hot(mask, 3))
    assert stats.shape == (2, 3, 6) and present.tolist() == [[True, True, False]] * 2
    assert torch.allclose(stats[1, 1, :3], torch.full((3,), 1 / 3)) and torch.allclose(
        stats[1, 0], torch.zeros(6), atol=1e-2
    )
    assert RegionDecoder(3, 5)(mu).shape == (2, 3, 6)


def test_region_generator_paints_codes_and_samples_a_fitted_prior() -> None:
    g = SPADEGenerator(3, size=64, ngf=2, z_dim=3 * 4, spade_hidden=4, code_dim=4)
    seg = one_hot(torch.randint(0, 3, (2, 64, 64)), 3)
    z = torch.randn(2, 12)
    assert g(seg, z).shape == (2, 3, 64, 64)
    assert not torch.allclose(g(seg, z), g(seg, z + 1)), "the codes reach the image"
    eps = torch.randn(4000, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g.latent_from_noise(eps), eps), "before fitting: the standard normal"
    target = torch.randn(12, 12, generator=torch.Generator().manual_seed(1))
    latents = 3 + eps @ target.T
    g.fit_prior(latents)
    drawn = g.latent_from_noise(torch.randn(4000, 12, generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(drawn.mean(0), latents.mean(0), atol=0.4)
    assert torch.allclose(torch.cov(drawn.T), torch.cov(latents.T), atol=1.5)
    assert {"latent_mean", "latent_factor"} <= set(g.state_dict()), "saved with the weights"
    with pytest.raises(ValueError, match="z_dim"):
        SPADEGenerator(3, size=64, ngf=2, z_dim=10, code_dim=4)


def test_losses() -> None:
    mu, logvar = torch.zeros(4, 8), torch.zeros(4, 8)
    assert kl_divergence(mu, logvar) == 0
    assert kl_divergence(torch.ones(4, 8), logvar) == pytest.approx(4.0)  # 0.5 * 8 per sample
    real = [[torch.ones(1, 2), torch.full((1, 1), 2.0)]]
    fake = [[torch.zeros(1, 2), torch.full((1, 1), -2.0)]]
    assert hinge_d_loss(real, fake) == 0  # real > 1 and fake < -1: no loss
    assert hinge_g_loss(fake) == pytest.approx(2.0)
    assert feature_matching_loss(real, fake) == pytest.approx(1.0)  # L1 of the intermediate features only


def test_registry_builds_the_gaugan_networks() -> None:
    assert "spade" in list_models("generator") and "multiscale-patchgan" in list_models("discriminator")
    g = create("generator", "spade", num_classes=3, size=64, ngf=2, spade_hidden=4)
    d = create("discriminator", "multiscale-patchgan", num_classes=3, ndf=4)
    e = create("encoder", "conv-vae", size=64, nef=4)
    seg = one_hot(torch.randint(0, 3, (1, 64, 64)), 3)
    mu, _ = e(torch.rand(1, 3, 64, 64))
    assert d(g(seg, mu), seg)[0][-1].ndim == 4


def test_vgg_weights_load_from_a_local_file_or_fall_back_to_a_fixed_seed(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torchvision.models import vgg19

    a, b = VGGFeatures("vgg19", ("relu1_1",)), VGGFeatures("vgg19", ("relu1_1",))
    assert a.source == "random-init:seed-0" and torch.equal(a.body[0].weight, b.body[0].weight)
    reference = vgg19(weights=None)
    torch.nn.init.constant_(reference.features[0].weight, 0.25)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "vgg19.safetensors"))
    loaded = VGGLoss(str(tmp_path / "vgg19.safetensors"))
    assert loaded.source.startswith("imagenet:vgg19.safetensors:")
    assert torch.equal(loaded.vgg.body[0].weight, reference.features[0].weight)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loaded(x, x) == 0 and loaded(x, -x) > 0
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(ValueError, match="unknown VGG layers"):
        VGGFeatures("vgg16", ("relu9_9",))
