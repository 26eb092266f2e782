"""render-style on the real Prefect engine and Dask cluster, every method; stylize and colouriser flows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.ingest import ingest_images
from flows.style import render_style, stylize_flow
from storage.items import item_table
from storage.workspace import Workspace, WorkspaceError
from tasks.colorizer import ColorizerOptions, train_colorizer
from tasks.fast_style import FastStyleOptions
from tasks.ingest import IngestOptions
from tasks.neural_style import StyleOptions
from tasks.npr import npr, palette
from tasks.synth import draw_portrait, write_synth_shard


def test_every_style_method_renders_the_corpus(cluster: str, tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=8)
    write_synth_shard(str(tmp_path / "c"), seed=23, size=32, start=0, stop=10, annotated=0)
    ingest_images(workspace=ws.url, src=str(tmp_path / "c" / "images"), options=IngestOptions(size=32))
    table = item_table(ws, "corpus")
    slot = table.by_id["s23-000004"]["slot"]

    r = render_style(workspace=ws.url, method="npr", name="toon", style="toon")
    assert (r["rendered"], r["shards"]) == (10, 2)
    image = np.asarray(ws.array("corpus/images")[slot])
    styled = ws.array("corpus/styled/toon")[slot]  # stored as JPEG, like the workspace's images
    assert ws.codec_of("corpus/styled/toon") == "jpeg"
    assert np.abs(styled.astype(int) - npr(image, "toon")).mean() < 5  # flat colours and ink: some ringing
    assert render_style(workspace=ws.url, method="npr", name="toon", style="toon")["shards"] == 0
    assert render_style(workspace=ws.url, method="npr", name="toon", style="oil")["shards"] == 2

    style = tmp_path / "style.png"
    Image.fromarray(draw_portrait(8, 8, 48).image).save(style)
    fast = FastStyleOptions(size=32, steps=2, batch_size=2)
    r = render_style(workspace=ws.url, method="fast", name="fast", style_image=str(style), fast_options=fast)
    assert r["rendered"] == 10 and ws.array("corpus/styled/fast")[slot].shape == (32, 32, 3)
    assert len(ws.loc.list("models/fast-style")) == 1, "trained first, once, for this style image"
    again = render_style(workspace=ws.url, method="fast", name="fast", style_image=str(style))
    assert again["shards"] == 0

    gatys = StyleOptions(max_num_epochs=2, save_epochs=0, max_long_edge=32)
    r = render_style(workspace=ws.url, method="gatys", name="gatys", style_image=str(style), gatys_options=gatys,
        shards="0:1",
    )  # fmt: skip
    assert (r["rendered"], r["shards"]) == (8, 1)

    with pytest.raises(WorkspaceError, match="train-colorizer"):
        render_style(workspace=ws.url, method="colorize", name="colour")
    train_colorizer(ws, ColorizerOptions(size=32, epochs=1, batch_size=8))
    r = render_style(workspace=ws.url, method="colorize", name="colour")
    assert r["rendered"] == 10
    colours = set(map(tuple, np.asarray(ws.array("corpus/styled/colour")[slot]).reshape(-1, 3)))
    assert colours <= set(map(tuple, palette(3)))
    # one reference portrait's colours for every drawing: another version, every shard again
    r = render_style(workspace=ws.url, method="colorize", name="like-ref", style_image=str(style))
    assert r["rendered"] == 10
    own = np.asarray(ws.array("corpus/styled/colour")[slot])
    like_ref = np.asarray(ws.array("corpus/styled/like-ref")[slot])
    assert not np.array_equal(own, like_ref), "the reference's colour hint changes the colouring"


def test_stylize_writes_the_image_its_intermediates_and_metadata(cluster: str, tmp_path: Path) -> None:
    content, style = tmp_path / "c.png", tmp_path / "s.jpg"
    Image.fromarray(draw_portrait(2, 0, 64).image).save(content)
    Image.fromarray(draw_portrait(2, 1, 64).image).save(style)
    out = tmp_path / "out" / "styled.png"
    opts = StyleOptions(max_num_epochs=4, save_epochs=2, max_long_edge=48, stop_eps=0)
    meta = stylize_flow(content=str(content), style=str(style), out=str(out), options=opts)
    assert meta["epochs"] == 4 and Image.open(out).size == (48, 48)
    assert (tmp_path / "out" / "styled-epoch-0002.png").is_file() and (tmp_path / "out" / "styled.json").is_file()
    assert "random-init" in Image.open(out).text["mangaka"]
