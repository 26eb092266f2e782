"""The randomised line-art pairs: deterministic, every family drawn, truth only where lines are."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tasks.artline_options import FAMILY_NAMES, LineartTrainOptions
from tasks.lineart import dataset_f1, xdog
from tasks.linepairs import FAMILIES, SYNTH, draw_pair, draw_pairs


def test_families_are_the_options_choices() -> None:
    assert (SYNTH, *FAMILIES) == FAMILY_NAMES


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_family_draws_a_deterministic_pair(family: str) -> None:
    a, b = draw_pair(3, 5, 64, family), draw_pair(3, 5, 64, family)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    assert a.lines.shape == (64, 64) and a.lines.dtype == np.uint8
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lines, b.lines)
    assert not np.array_equal(a.image, draw_pair(3, 6, 64, family).image), "another index, another picture"
    ink = (a.lines < 128).mean()
    assert 0.005 < ink < 0.5, f"{family}: truth ink covers {ink:.3f} of the pair"
    assert a.image.std() > 5


def test_tone_family_is_grey_and_others_are_coloured() -> None:
    tone = draw_pair(0, 1, 64, "tone").image.astype(int)
    assert np.abs(tone[..., 0] - tone[..., 1]).max() <= 12  # grey up to JPEG's chroma noise
    spread = [np.abs(draw_pair(0, i, 64, "cel").image.astype(int).std(axis=2)).mean() for i in range(4)]
    assert max(spread) > 5


def test_shading_is_not_truth() -> None:
    # XDoG inks every strong edge; on families with tones and shadows it must find more ink
    # than the truth holds, or shading would be line truth
    imgs, lines = draw_pairs(1, 8, 96, ["tone"])
    x = [xdog(i) for i in imgs]
    assert sum(int((p < 128).sum()) for p in x) > sum(int((t < 128).sum()) for t in lines)
    assert dataset_f1(x, list(lines))["precision"] < 0.9


def test_draw_pairs_takes_families_in_turn() -> None:
    imgs, lines = draw_pairs(2, 4, 48, ["cel", "tone"])
    assert imgs.shape == (4, 48, 48, 3) and lines.shape == (4, 48, 48)
    assert np.array_equal(imgs[1], draw_pair(2, 1, 48, "tone").image)
    with pytest.raises(ValueError, match="style family"):
        draw_pair(0, 0, 48, "watercolour")
    with pytest.raises(ValueError, match="at least one"):
        draw_pairs(0, 2, 48, [])


def test_holdout_is_never_a_training_family() -> None:
    opts = LineartTrainOptions()
    assert opts.holdout not in opts.train_families() and len(opts.train_families()) == len(FAMILY_NAMES) - 1
    assert LineartTrainOptions(holdout="tone", families=("cel",)).train_families() == ("cel",)
    with pytest.raises(ValidationError, match="held-out family"):
        LineartTrainOptions(holdout="tone", families=("tone", "cel"))
    with pytest.raises(ValidationError):
        LineartTrainOptions(holdout="watercolour")


def test_drawing_in_threads_gives_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.linepairs as lp

    one = draw_pairs(4, 6, 64, ["cel", "paint", "synth"], workers=1)
    monkeypatch.setattr(lp, "PARALLEL_PIXELS", 0)  # so that six small pairs go to two threads
    two = draw_pairs(4, 6, 64, ["cel", "paint", "synth"], workers=2)
    assert np.array_equal(one[0], two[0]) and np.array_equal(one[1], two[1])
