"""Line art: the pure methods, boundary F1, the ArtLine network, training with exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from models.artline import ArtLineUNet, PixelShuffleBlur, SelfAttention
from storage.checkpoints import list_checkpoints, load_checkpoint
from storage.workspace import Workspace
from tasks import linepairs
from tasks.artline import LineartTrainOptions, draw_lines, load_artline, read_pairs, train_lineart
from tasks.lineart import auto_canny, boundary_f1, dataset_f1, producer_version, xdog
from tasks.synth import draw_portrait, write_synth_shard


def _square(size: int = 64) -> np.ndarray:
    img = np.full((size, size, 3), 230, np.uint8)
    img[16:48, 16:48] = (40, 60, 200)
    return img


@pytest.mark.parametrize("method", [auto_canny, xdog])
def test_methods_draw_ink_on_edges_only(method) -> None:  # noqa: ANN001
    out = method(_square())
    assert out.shape == (64, 64) and out.dtype == np.uint8
    ink = out < 128
    assert ink[14:18, 20:44].any() and ink[30:34, 14:18].any(), "the square's edges are inked"
    assert not ink[24:40, 24:40].any() and not ink[:8, :8].any(), "flat areas stay paper"
    assert (method(np.full((32, 32, 3), 128, np.uint8)) >= 128).all()


def test_boundary_f1_tolerates_small_shifts() -> None:
    truth = np.full((40, 40), 255, np.uint8)
    truth[20, 5:35] = 0
    assert boundary_f1(truth, truth)["f1"] == 1.0
    shifted = np.roll(truth, 2, axis=0)
    assert boundary_f1(shifted, truth, tolerance=2)["f1"] == 1.0
    assert boundary_f1(shifted, truth, tolerance=1)["f1"] == 0.0
    blank = np.full_like(truth, 255)
    assert boundary_f1(blank, truth) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    half = truth.copy()
    half[20, 20:35] = 255
    r = boundary_f1(half, truth)
    assert r["precision"] == 1.0 and 0.4 < r["recall"] < 0.6
    assert dataset_f1([truth, half], [truth, truth])["images"] == 2


def test_xdog_beats_canny_on_synth_portraits() -> None:
    portraits = [draw_portrait(31, i, 128) for i in range(6)]
    truth = [p.lines for p in portraits]
    f_x = dataset_f1([xdog(p.image) for p in portraits], truth)["f1"]
    f_c = dataset_f1([auto_canny(p.image) for p in portraits], truth)["f1"]
    assert f_x > f_c > 0.3
    assert producer_version("xdog") != producer_version("canny")
    assert producer_version("artline", "a") != producer_version("artline", "b")


def test_artline_network_contract() -> None:
    torch.manual_seed(0)
    net = ArtLineUNet(base=4)
    x = torch.rand(2, 3, 48, 64)
    y = net(x)
    assert y.shape == (2, 1, 48, 64) and torch.isfinite(y).all()
    y.mean().backward()
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.rand(1, 3, 40, 64))
    attn = SelfAttention(8)
    assert attn.gamma.item() == 0 and torch.equal(attn(torch.ones(1, 8, 4, 4)), torch.ones(1, 8, 4, 4))
    up = PixelShuffleBlur(4, 2)
    w = up.conv.weight_orig
    assert torch.equal(w[0::4], w[1::4]) and torch.equal(w[0::4], w[3::4]), "ICNR: sub-pixels start equal"


OPTS = LineartTrainOptions(
    size=32, sizes=(32,), epochs=(3,), count=8, val_count=4, batch_size=4, model="artline-unet-small"
)


class Killed(Exception):
    pass


def test_training_checkpoints_resumes_exactly_and_draws(tmp_path: Path) -> None:
    whole = Workspace(str(tmp_path / "whole"))
    r = train_lineart(whole, OPTS)
    assert len(r["history"]) == 3 and 0 <= r["last"]["f1"] <= 1 and r["last"]["size"] == 32
    assert r["vgg"].startswith("off") and load_checkpoint(whole, "artline").config["vgg"] == r["vgg"]
    assert len(list_checkpoints(whole, "artline")) == 3

    def no_drawing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run drew its training pairs again")

    with pytest.MonkeyPatch.context() as mp:  # a finished run, run again, needs none of its pairs
        mp.setattr(linepairs, "draw_pairs", no_drawing)
        assert train_lineart(whole, OPTS)["already_done"]

    cut = Workspace(str(tmp_path / "cut"))

    def kill(done: int, total: int) -> None:
        if done == 5:  # in the middle of epoch 3 (2 steps per epoch), after epoch 2's checkpoint
            raise Killed

    with pytest.raises(Killed):
        train_lineart(cut, OPTS, on_step=kill)
    again = train_lineart(cut, OPTS)
    assert again["resumed_at"] == 2 and len(again["history"]) == 1
    a = load(load_checkpoint(whole, "artline").weights)
    b = load(load_checkpoint(cut, "artline").weights)
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run differs from an uninterrupted one"

    model, name, digest = load_artline(whole)
    out = draw_lines(model, np.stack([draw_portrait(1, 0, 40).image]), torch.device("cpu"))
    assert out.shape == (1, 40, 40) and out.dtype == np.uint8  # any side: padded to 16 inside


def test_progressive_sizes_and_pairs_from_a_folder(tmp_path: Path) -> None:
    write_synth_shard(str(tmp_path / "pairs"), seed=4, size=64, start=0, stop=12, annotated=3)
    (tmp_path / "pairs" / "lines" / "orphan.png").write_bytes(
        (tmp_path / "pairs" / "lines" / "s4-000000.png").read_bytes()
    )
    ids, images, lines, refused = read_pairs(str(tmp_path / "pairs"), 32)
    assert len(ids) == 12 and images.shape == (12, 32, 32, 3) and lines.shape == (12, 32, 32)
    assert [r[0].endswith("orphan.png") for r in refused] == [True]
    ws = Workspace(str(tmp_path / "ws"))
    opts = OPTS.model_copy(update={"pairs": str(tmp_path / "pairs"), "size": 64, "sizes": (32, 64), "epochs": (1, 1)})
    r = train_lineart(ws, opts.model_copy(update={"feature_weight": 1.0}))
    assert [h["size"] for h in r["history"]] == [32, 64] and r["pairs"].startswith("folder:")
    assert r["vgg"].startswith("random-init") and {"loss_feature", "loss_gram"} <= set(r["last"])
    assert any(e["stage"] == "train-lineart" for e in ws.quarantine_entries())
    assert train_lineart(ws, opts)["already_done"] is False  # feature_weight is part of the run
    assert train_lineart(ws, opts)["already_done"]
    # A corrected drawing in the folder is a new run (it neither resumes nor counts as the old one).
    Image.new("L", (64, 64), 255).save(tmp_path / "pairs" / "lines" / "s4-000005.png")
    changed = train_lineart(ws, opts)
    assert not changed["already_done"] and changed["resumed_at"] == 0 and changed["run"] != r["run"]
    assert len(list_checkpoints(ws, "artline")) == 6  # three runs of two epochs, none overwritten
    with pytest.raises(ValueError, match="one count per size"):
        LineartTrainOptions(size=64, epochs=(1, 1, 1))  # 64 px has two stages: 32 and 64
    assert LineartTrainOptions(size=256, epochs=(6, 3)).stage_sizes() == (128, 256)  # the last stages
    assert np.asarray(Image.open(tmp_path / "pairs" / "lines" / "s4-000000.png")).min() == 0


def test_dice_term_is_its_own_part_of_the_loss() -> None:
    from tasks.artline import FeatureLoss

    target = torch.ones(2, 1, 16, 16)
    target[:, :, 8, :] = 0  # one ink row
    plain = FeatureLoss(feature_weight=0, ink_weight=3)
    dice = FeatureLoss(feature_weight=0, ink_weight=3, dice_weight=0.5)
    assert set(plain(target, target)[1]) == {"pixel"}
    loss, parts = dice(target, target)
    assert set(parts) == {"pixel", "dice"} and parts["dice"] < 0.05 and float(loss) < 0.03
    blank = torch.ones_like(target)  # no ink drawn: no overlap at all
    loss, parts = dice(blank, target)
    assert parts["dice"] > 0.9 and float(loss) == pytest.approx(parts["pixel"] + 0.5 * parts["dice"], rel=1e-5)


def test_boundaries_are_truth_only_where_the_picture_has_an_edge() -> None:
    from tasks.lineart_finetune import IGNORE, boundary_lines, finetune_targets

    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1  # a square region, drawn with an outline
    mask[16:48, 48:56] = 2  # a strip beside it, not outlined (the same colour as the paper)
    lines = boundary_lines(mask)
    assert (lines[15:17, 30] == 0).all() and (lines[14, 30], lines[18, 30]) == (255, 255), "2 px, either side"
    ignored = mask.copy()
    ignored[:, 32:] = IGNORE
    assert (boundary_lines(ignored)[:, 33:] == 255).all(), "no boundary into ignored pixels"

    image = np.full((64, 64, 3), 235, np.uint8)
    image[16:48, 16:48] = (200, 120, 90)
    image[16:48, 16:18] = image[16:48, 46:48] = image[16:18, 16:48] = image[46:48, 16:48] = 20
    target, weight = finetune_targets(image, mask, band=3.0, weak_weight=0.3)
    assert target[16, 30] == 0 and weight[16, 30] == 1.0, "an outlined boundary is ink"
    assert weight[16:48, 54:56].max() == 0.0, "a boundary without an edge is no truth"
    assert weight[19, 30] == 0.0, "beside a boundary: no truth"
    assert target[30, 30] == 255 and weight[30, 30] == 0.3, "a flat area far from boundaries: paper, weakly"
