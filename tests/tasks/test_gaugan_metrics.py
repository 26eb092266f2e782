"""GauGAN's style figures tell a generator that follows its latent from one that ignores it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.gaugan_metrics import (
    attribute_metrics,
    delta_e,
    fidelity_ratios,
    monotone_share,
    region_colours,
    srgb_to_lab,
    style_metrics,
)

CLASSES = ["background", "skin", "face", "eye", "mouth", "hair", "clothes"]
SIDE = 32


def _masks(n: int) -> np.ndarray:
    """Masks of background, a hair band on top, skin in the middle and clothes below."""
    m = np.zeros((n, SIDE, SIDE), np.uint8)
    m[:, :10, 6:26] = CLASSES.index("hair")
    m[:, 10:20, 8:24] = CLASSES.index("skin")
    m[:, 22:, 4:28] = CLASSES.index("clothes")
    return m


def _palette(z: torch.Tensor) -> np.ndarray:
    """A colour per (latent, class) from the latent's first 12 numbers."""
    return (torch.sigmoid(z[:, :12]).reshape(-1, 4, 3).numpy() * 255).astype(np.uint8)


def _paint(masks: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = np.zeros((*masks.shape, 3), np.uint8)
    for n, m in enumerate(masks):
        for k, c in enumerate(("hair", "skin", "clothes", "background")):
            out[n][m == CLASSES.index(c)] = colours[n, k]
    return out


def follows(masks: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """A generator that paints every region with the colour its latent names."""
    return _paint(masks.numpy(), _palette(z))


def ignores(masks: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """A generator that paints every mask alike, whatever its latent."""
    return _paint(masks.numpy(), _palette(torch.zeros_like(z)))


def test_lab_of_known_colours() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], np.uint8))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [0, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)
    assert delta_e(lab[0], lab[1]) == pytest.approx(100, abs=0.01)


def test_region_colours_leave_small_regions_out() -> None:
    masks = _masks(1)
    masks[0, 0, 0] = CLASSES.index("eye")  # one pixel: below the minimum
    images = _paint(masks, np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8))
    got = region_colours(images, masks, [CLASSES.index("hair"), CLASSES.index("eye")])
    np.testing.assert_allclose(got[0, 0], srgb_to_lab(np.array([255, 0, 0])), atol=1e-6)
    assert np.isnan(got[0, 1]).all()


def test_fidelity_ratio_is_zero_for_a_copy_and_one_for_a_constant() -> None:
    refs = srgb_to_lab(np.random.default_rng(0).integers(0, 256, (6, 1, 3)))
    copy = fidelity_ratios(refs[[1, 2, 3, 4, 5, 0]], refs, [1, 2, 3, 4, 5, 0])
    assert copy["ratio"][0] == pytest.approx(0.0)
    constant = fidelity_ratios(np.repeat(refs[:1], 6, 0), refs, list(range(6)))
    assert 0.7 < constant["ratio"][0] < 1.3 and constant["pairs"] == [6]


def _encode(images: np.ndarray, masks: np.ndarray) -> torch.Tensor:
    """The inverse of :func:`_palette` on painted images: the latent that paints them back."""
    z = torch.zeros(len(images), 16)
    for n in range(len(images)):
        cols = []
        for c in ("hair", "skin", "clothes", "background"):
            cols.append(images[n][masks[n] == CLASSES.index(c)].mean(0))
        p = torch.tensor(np.array(cols), dtype=torch.float32).reshape(-1) / 255
        z[n, :12] = torch.logit(p.clamp(0.01, 0.99))
    return z


def test_style_metrics_tell_following_from_ignoring() -> None:
    masks = _masks(8)
    real = _paint(masks, _palette(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)) * 2))
    good = style_metrics(follows, _encode, real, masks, CLASSES, 16)
    bad = style_metrics(ignores, _encode, real, masks, CLASSES, 16)
    assert good["classes"] == ["hair", "skin", "clothes", "background"]
    for c in good["classes"]:
        assert good["style_fidelity"][c] < 0.05, good
        assert bad["style_fidelity"][c] > 0.6, bad
        assert good["latent_spread"][c] > 10 and bad["latent_spread"][c] == 0
        assert good["latent_spread_baseline"][c] == 0, "one latent, mirrored masks: nothing changes"
        assert good["real_spread"][c] > 10


def test_attribute_effect_falls_towards_its_colour() -> None:
    masks = _masks(3)
    target = (235, 205, 90)
    direction = torch.zeros(16)
    # hair is channels 0..2 of the palette: push them towards the target's logits
    direction[:3] = torch.logit(torch.tensor(target, dtype=torch.float32) / 255)
    got = attribute_metrics(follows, masks, torch.zeros(3, 16), direction / 3, CLASSES.index("hair"), target, 3.0)
    assert got["falling_share"] == 1.0 and got["moved"] > 20
    assert got["distance_to_target"][-1] == pytest.approx(0, abs=1.0)
    flat = attribute_metrics(ignores, masks, torch.zeros(3, 16), direction, CLASSES.index("hair"), target, 3.0)
    assert flat["moved"] == 0


def test_monotone_share() -> None:
    assert monotone_share([5, 4, 3, 3]) == 1.0
    assert monotone_share([5, 6, 4]) == 0.5
