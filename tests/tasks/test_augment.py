"""Joint image/mask augmentation: aligned, reproducible, and never leaking into validation."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.augment import AugmentOptions, augment_pair, validation_split, variant_rng
from tasks.report import PALETTE
from tasks.synth import draw_portrait


def test_palette_images_stay_aligned_with_their_masks() -> None:
    """Paint each class a fixed colour, augment, classify pixels by nearest palette colour."""
    palette = PALETTE[:7].astype(np.int32)
    opts = AugmentOptions()
    agree, total = 0, 0
    for i in range(6):
        mask = draw_portrait(1, i, 128).mask
        image = PALETTE[mask]
        for k in range(1, 5):
            out_img, out_mask = augment_pair(image, mask, variant_rng(0, f"p{i}", k), opts)
            keep = out_mask != 255
            dist = ((out_img[..., None, :].astype(np.int32) - palette[None, None]) ** 2).sum(-1)
            nearest = dist.argmin(-1)
            agree += int((nearest[keep] == out_mask[keep]).sum())
            total += int(keep.sum())
    assert agree / total >= 0.95, agree / total


def test_variants_are_reproducible_and_different() -> None:
    p = draw_portrait(0, 0, 96)
    o = AugmentOptions()
    a = augment_pair(p.image, p.mask, variant_rng(3, "x", 1), o)
    b = augment_pair(p.image, p.mask, variant_rng(3, "x", 1), o)
    c = augment_pair(p.image, p.mask, variant_rng(3, "x", 2), o)
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (a[1] == c[1]).all()
    assert set(np.unique(a[1])) <= set(np.unique(p.mask)) | {255}


def test_outside_pixels_are_filled_consistently() -> None:
    p = draw_portrait(0, 1, 96)
    o = AugmentOptions(rotate=45, scale=(0.6, 0.6), elastic=0, brightness=0, contrast=0, saturation=0, hue=0)
    img, mask = augment_pair(p.image, p.mask, variant_rng(0, "y", 1), o)
    outside = mask == 255
    assert outside.any() and (img[outside] == 255).mean() > 0.9
    _, bg = augment_pair(p.image, p.mask, variant_rng(0, "y", 1), o.model_copy(update={"fill": "background"}))
    assert not (bg == 255).any() and (bg[outside] == 0).all()


def test_contract_is_checked() -> None:
    with pytest.raises(ValueError, match="square"):
        augment_pair(
            np.zeros((8, 9, 3), np.uint8), np.zeros((8, 9), np.uint8), variant_rng(0, "z", 1), AugmentOptions()
        )


def test_validation_split_is_by_parent_and_stable() -> None:
    ids = [f"item-{i}" for i in range(200)]
    train, val = validation_split(ids, 0.1, seed=0)
    assert set(train).isdisjoint(val) and sorted(train + val) == sorted(ids)
    assert 8 <= len(val) <= 35
    train2, val2 = validation_split([*ids, "new-1", "new-2"], 0.1, seed=0)
    assert set(val) <= set(val2)  # adding items never moves an old one across the split
    assert validation_split(["only"], 0.1)[1] == ["only"]


def test_every_shard_of_a_parent_is_planned_when_the_multiplier_exceeds_the_shard_size() -> None:
    from tasks.augment import shards_of_parents

    parents = {"a": {"slot": 0, "sha256": "h0"}, "b": {"slot": 2, "sha256": "h2"}}
    plan = shards_of_parents(parents, multiplier=16, shard_size=4)  # a: slots 0-15, b: slots 32-47
    assert sorted(plan) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert plan[1] == [(0, "a", "h0")] and plan[9] == [(2, "b", "h2")]
    plan = shards_of_parents(parents, multiplier=3, shard_size=4)  # a: 0-2, b: 6-8 (spans shards 1 and 2)
    assert plan == {0: [(0, "a", "h0")], 1: [(2, "b", "h2")], 2: [(2, "b", "h2")]}
