"""render-lineart on the real Prefect engine and Dask cluster: every method, markers by version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.ingest import ingest_images
from flows.lineart import render_lineart
from storage.items import item_table
from storage.location import json_text
from storage.workspace import Workspace, WorkspaceError
from tasks.artline import LineartTrainOptions, train_lineart
from tasks.ingest import IngestOptions
from tasks.lineart import lineart_against, xdog
from tasks.synth import write_synth_shard


def test_every_method_renders_the_corpus(cluster: str, tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=8)
    write_synth_shard(str(tmp_path / "c"), seed=21, size=64, start=0, stop=12, annotated=0)
    ingest_images(workspace=ws.url, src=str(tmp_path / "c" / "images"), options=IngestOptions(size=64))
    truth = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / "c" / "lines").glob("*.png")}
    table = item_table(ws, "corpus")
    for method in ("canny", "xdog"):
        r = render_lineart(workspace=ws.url, method=method)
        assert (r["rendered"], r["shards"]) == (12, 2)
        assert render_lineart(workspace=ws.url, method=method)["shards"] == 0  # done: skipped
        f1 = lineart_against(ws, method, truth)
        assert f1["images"] == 12 and 0.3 < f1["f1"] <= 1
    e = table.by_id["s21-000003"]
    image = ws.array("corpus/images")[e["slot"]]
    assert np.array_equal(ws.array("corpus/lineart/xdog")[e["slot"]], xdog(np.asarray(image)))
    assert render_lineart(workspace=ws.url, method="xdog", shards="1:2", force=True)["shards"] == 1

    with pytest.raises(WorkspaceError, match="no checkpoint"):
        render_lineart(workspace=ws.url, method="artline")
    train_lineart(ws, LineartTrainOptions(size=32, sizes=(32,), epochs=(1,), count=8, val_count=4, batch_size=4))
    r = render_lineart(workspace=ws.url, method="artline")
    assert r["rendered"] == 12 and r["checkpoint"].endswith("-epoch-0001")
    assert ws.array("corpus/lineart/artline")[e["slot"]].shape == (64, 64)
    train_lineart(ws, LineartTrainOptions(size=32, sizes=(32,), epochs=(2,), count=8, val_count=4, batch_size=4))
    assert render_lineart(workspace=ws.url, method="artline")["shards"] == 2, "a new model redoes them"


def test_a_render_leaves_the_marker_index_current(cluster: str, tmp_path: Path) -> None:
    """The next run reads one index file, not a marker file per shard rendered now."""
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=2)
    write_synth_shard(str(tmp_path / "c"), seed=22, size=32, start=0, stop=20, annotated=0)
    ingest_images(workspace=ws.url, src=str(tmp_path / "c" / "images"), options=IngestOptions(size=32))
    assert render_lineart(workspace=ws.url, method="canny")["shards"] == 10
    index = ws.loc.read_bytes("_meta/marker-index/corpus/lineart/canny/000000.json")
    assert json.loads(json_text(index))["stamps"] == ws.marker_stamps("corpus/lineart/canny")
