"""Styles: posterisation against the seed's loop, npr styles, Gatys, fast style, the colouriser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.registry import create, list_models
from storage.workspace import Workspace
from tasks.colorizer import (
    Colorizer,
    ColorizerOptions,
    boundary_figures,
    colorize_lines,
    colour_edges,
    colour_hint,
    curves_png,
    load_colorizer,
    train_colorizer,
)
from tasks.fast_style import FastStyleOptions, apply_fast_style, has_model, load_fast_style, style_key, train_fast_style
from tasks.neural_style import StyleOptions, png_with_metadata, stylize
from tasks.npr import NPR_STYLES, kuwahara, npr, palette, posterize, posterize_classes, posterize_loop
from tasks.synth import draw_portrait


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_vectorised_posterisation_equals_the_seed_loop(n: int) -> None:
    img = draw_portrait(5, 2, 48).image
    assert np.array_equal(posterize(img, n), posterize_loop(img, n))
    classes = posterize_classes(np.stack([img, img[::-1]]), n)
    assert classes.shape == (2, 48, 48) and classes.max() < n**3
    assert np.array_equal(palette(n)[classes[0]], posterize(img, n))
    assert len(np.unique(palette(n), axis=0)) == n**3


def test_npr_styles() -> None:
    img = draw_portrait(5, 3, 64).image
    for style in NPR_STYLES:
        out = npr(img, style)
        assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    flat = np.full((20, 20, 3), 90, np.uint8)
    assert np.array_equal(kuwahara(flat), flat)
    with pytest.raises(ValueError, match="npr style"):
        npr(img, "watercolour")


def test_gatys_options_and_metadata() -> None:
    content = draw_portrait(6, 0, 64).image
    style = np.asarray(Image.fromarray(draw_portrait(6, 1, 96).image).rotate(45))
    saved: list[int] = []
    opts = StyleOptions(max_num_epochs=4, save_epochs=2, max_long_edge=40, remove_noise=0.1, stop_eps=0)
    out, meta = stylize(content, style, opts, on_save=lambda e, im: saved.append(e))
    assert out.shape == (40, 40, 3) and saved == [2, 4]
    assert meta["epochs"] == 4 and meta["stopped"] == "max_num_epochs" and meta["vgg"].startswith("random-init")
    assert not np.array_equal(out, np.asarray(Image.fromarray(content).resize((40, 40))))
    for optimizer in ("adam", "sgd"):
        _, m = stylize(content, style, opts.model_copy(update={"optimizer": optimizer, "init": "noise"}))
        assert m["epochs"] == 4
    _, m = stylize(content, style, opts.model_copy(update={"stop_eps": 1.0, "max_num_epochs": 50}))
    assert m["stopped"] == "stop_eps" and m["epochs"] == 10  # checked from epoch 10 on
    png = png_with_metadata(out, meta)
    assert json.loads(Image.open(__import__("io").BytesIO(png)).text["mangaka"])["vgg"] == meta["vgg"]


def test_fast_style_trains_per_style_image_and_applies(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    style = draw_portrait(7, 0, 32).image
    key = style_key(b"style-bytes")
    assert not has_model(ws, key)
    r = train_fast_style(ws, style, b"style-bytes", FastStyleOptions(size=32, steps=3, batch_size=2))
    assert has_model(ws, key) and r["style"] == key and r["history"]
    net, digest = load_fast_style(ws, key)
    out = apply_fast_style(net, np.stack([draw_portrait(7, 1, 32).image[:30, :30]]), torch.device("cpu"))
    assert out.shape == (1, 30, 30, 3) and out.dtype == np.uint8
    assert {"johnson", "johnson-small", "johnson-fast"} <= set(list_models("style"))
    for name in list_models("style"):  # every registered transformer, as `train-style --model` offers them
        assert create("style", name)(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_colorizer_trains_with_held_out_accuracy(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    r = train_colorizer(ws, ColorizerOptions(size=32, epochs=2, batch_size=16))
    assert 0 <= r["palette_accuracy"] <= 1 and len(r["history"]) == 2 and r["parameters"] < 5_000_000
    assert 0 < r["commonest_colour_accuracy"] <= 1
    assert ws.loc.exists(f"models/colorizer/{r['checkpoint']}/curves.png")
    assert 0 < r["hint_accuracy"] <= 1 and r["parameters"] == 740_716
    for k in ("boundary_accuracy", "hint_boundary_accuracy", "edges_on_lines", "hint_edges_on_lines"):
        assert r[k] is None or 0 <= r[k] <= 1, k
    model, n, _ = load_colorizer(ws)
    assert model.hint_size == 16
    lines = np.full((2, 40, 40), 255, np.uint8)
    with pytest.raises(ValueError, match="colour hints"):
        colorize_lines(model, lines, n, torch.device("cpu"))
    hints = colour_hint(np.stack([draw_portrait(7, i, 40).image for i in range(2)]), model.hint_size)
    out = colorize_lines(model, lines, n, torch.device("cpu"), hints=hints)
    assert out.shape == (2, 40, 40, 3) and set(map(tuple, out.reshape(-1, 3))) <= set(map(tuple, palette(3)))

    line_only = train_colorizer(ws, ColorizerOptions(size=32, epochs=1, batch_size=16, hint_size=0))
    assert line_only["hint_accuracy"] is None
    model, n, _ = load_colorizer(ws, line_only["checkpoint"])
    assert model.hint_size == 0 and colorize_lines(model, lines, n, torch.device("cpu")).shape == (2, 40, 40, 3)
    assert curves_png([{"loss": 1.0, "palette_accuracy": 0.5}]).startswith(b"\x89PNG")


def test_boundary_figures_see_colours_that_miss_the_lines() -> None:
    truth = torch.zeros(1, 32, 32, dtype=torch.long)
    truth[:, :, 16:] = 1  # a colour edge between columns 15 and 16
    lines = np.full((1, 32, 32), 255, np.uint8)
    lines[:, :, 15:17] = 0  # the drawing's line on it
    lines = torch.from_numpy(lines)
    assert boundary_figures(truth, truth, lines) == {"boundary_accuracy": 1.0, "edges_on_lines": 1.0}
    blocky = torch.zeros_like(truth)
    blocky[:, :, 24:] = 1  # the edge 8 px off, on a hint cell's border
    off = boundary_figures(blocky, truth, lines)
    assert off["boundary_accuracy"] is not None and off["boundary_accuracy"] < 0.75 and off["edges_on_lines"] == 0
    assert boundary_figures(truth[:, :, :1], truth[:, :, :1], lines[:, :, :1])["boundary_accuracy"] is None
    assert colour_edges(truth).sum() == 32


def test_colour_hint_is_the_cell_means_of_the_image() -> None:
    img = np.zeros((1, 64, 64, 3), np.uint8)
    img[0, :, 32:] = (200, 40, 10)  # right half red
    hint = colour_hint(img, 2, kind="mean")
    assert hint.shape == (1, 64, 64, 3)
    assert tuple(hint[0, 10, 2]) == (0, 0, 0) and tuple(hint[0, 10, 61]) == (200, 40, 10)
    assert colour_hint(img, 2, 32, kind="mean").shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match="kind"):
        colour_hint(img, 2, kind="median")


def test_the_mode_hint_paints_each_cell_its_commonest_palette_colour() -> None:
    img = np.full((2, 40, 40, 3), 255, np.uint8)  # white; 4 cells of 20 px per side
    img[0, :20, :12] = (250, 10, 5)  # 12 of the 20 columns of the top-left cell: red wins there
    img[0, 20:, 20:28] = (0, 0, 240)  # 8 of 20 columns of the bottom-right cell: white still wins
    img[1] = (120, 130, 140)  # one grey image
    hint = colour_hint(img, 2, num_values=3)
    assert hint.shape == img.shape and hint.dtype == np.uint8
    assert tuple(hint[0, 5, 5]) == (255, 0, 0) and tuple(hint[0, 5, 19]) == (255, 0, 0)  # the whole cell
    assert tuple(hint[0, 5, 25]) == (255, 255, 255) and tuple(hint[0, 30, 25]) == (255, 255, 255)
    assert set(map(tuple, hint[1].reshape(-1, 3))) == {(128, 128, 128)}
    # cells need not divide the side, and the hint can be drawn at another side
    assert colour_hint(img[:, :39, :37], 3, num_values=3).shape == (2, 39, 37, 3)
    big = colour_hint(img, 2, 64, num_values=3)
    assert big.shape == (2, 64, 64, 3) and tuple(big[0, 31, 31]) == (255, 0, 0)
    assert tuple(big[0, 32, 32]) == (255, 255, 255)


def test_a_colouriser_from_before_hints_still_loads(tmp_path: Path) -> None:
    """Checkpoints written by the line-art-only colouriser (bare segmenter weights, no hint_size)."""
    from safetensors.torch import save

    from storage.checkpoints import save_checkpoint

    ws = Workspace(str(tmp_path / "ws"))
    net = create("segmenter", "unet-mobilenetv2-small", num_classes=8)
    config = {"model": "unet-mobilenetv2-small", "num_classes": 8, "num_values": 2}
    save_checkpoint(ws, "colorizer", "old-epoch-0001", save(net.state_dict()), config, {"palette_accuracy": 0.4})
    model, n, _ = load_colorizer(ws)
    assert (n, model.hint_size) == (2, 0)
    old, new = net.state_dict(), model.net.state_dict()
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)


def test_a_hinted_colouriser_from_before_mode_hints_keeps_its_mean_hints(tmp_path: Path) -> None:
    from safetensors.torch import save

    from storage.checkpoints import save_checkpoint

    ws = Workspace(str(tmp_path / "ws"))
    model = Colorizer(create("segmenter", "unet-mobilenetv2-small", num_classes=8), 8, 4, 2)
    config = {"model": "unet-mobilenetv2-small", "num_classes": 8, "num_values": 2, "hint_size": 4}
    save_checkpoint(ws, "colorizer", "mean-epoch-0001", save(model.state_dict()), config, {"palette_accuracy": 0.7})
    loaded, n, _ = load_colorizer(ws)
    assert (n, loaded.hint_size, loaded.hint_kind) == (2, 4, "mean")
    img = np.stack([draw_portrait(7, 0, 32).image])
    assert np.array_equal(loaded.hint(img), colour_hint(img, 4, kind="mean"))
    save_checkpoint(ws, "colorizer", "bad-epoch-0001", save(model.state_dict()), {**config, "hint": "x"}, {})
    with pytest.raises(ValueError, match="hint kind"):
        load_colorizer(ws, "bad-epoch-0001")
