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


class Killed(Exception):
    pass


def test_finetune_on_annotations_resumes_exactly_and_reuses_the_pretraining(cluster: str, tmp_path: Path) -> None:
    from safetensors.torch import load

    from flows.labelme import ingest_labelme
    from storage.checkpoints import list_checkpoints, load_checkpoint
    from tasks.annotations import LabelmeOptions

    write_synth_shard(str(tmp_path / "s"), seed=23, size=64, start=0, stop=10, annotated=10)
    opts = LineartTrainOptions(
        size=32, sizes=(32,), epochs=(1,), count=8, val_count=4, batch_size=4, finetune=True, finetune_epochs=2
    )
    runs = {}
    for name in ("whole", "cut"):
        ws = Workspace(str(tmp_path / name))
        ingest_labelme(workspace=ws.url, src=str(tmp_path / "s" / "labelme"), options=LabelmeOptions(size=64))
        runs[name] = ws
    whole = train_lineart(runs["whole"], opts)
    assert whole["finetune"] and whole["pretrained"] == f"{opts.run_key()[:8]}-epoch-0001"
    last = whole["last"]
    assert last["holdout"] == "annotated" and last["family"] == "cel" and last["val_images"] >= 1
    assert {"f1", "xdog_f1", "canny_f1", "family_f1", "family_xdog_f1"} <= set(last)
    assert load_checkpoint(runs["whole"], "artline").config["base"] == whole["pretrained"]

    def kill(done: int, total: int) -> None:  # in the fine-tuning's second epoch (the pre-training has 2 steps)
        if total > 2 and done == total // 2 + 1:
            raise Killed

    with pytest.raises(Killed):
        train_lineart(runs["cut"], opts, on_step=kill)
    again = train_lineart(runs["cut"], opts)
    assert again["resumed_at"] == 1 and len(again["history"]) == 1
    a = load(load_checkpoint(runs["whole"], "artline").weights)
    b = load(load_checkpoint(runs["cut"], "artline").weights)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), "a resumed fine-tuning differs"

    # other fine-tuning options start from the same pre-trained weights, not from scratch
    before = set(list_checkpoints(runs["whole"], "artline"))
    other = train_lineart(runs["whole"], opts.model_copy(update={"finetune_epochs": 1}))
    new = set(list_checkpoints(runs["whole"], "artline")) - before
    assert len(new) == 1 and all("-tune-" in n for n in new) and other["pretrained"] == whole["pretrained"]
    assert train_lineart(runs["whole"], opts.model_copy(update={"finetune_epochs": 1}))["already_done"]
