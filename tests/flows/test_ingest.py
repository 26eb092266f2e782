"""ingest-images on the real Prefect engine and a real Dask LocalCluster, local workspaces."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from flows.export import export
from flows.ingest import ingest_images
from storage.items import Journal, item_table
from storage.sources import list_sources
from storage.workspace import Workspace
from tasks.ingest import (
    IngestOptions,
    ingest_shard,
    plan_ingest,
    prepare_array,
    resolve_codec,
    shard_specs,
    source_record,
)
from tasks.synth import write_synth_shard
from tests.conftest import jpeg_bytes, make_tar, write_hostile

SIZE = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 synthetic portraits (96 px) plus one file of each hostile kind."""
    root = tmp_path_factory.mktemp("corpus")
    write_synth_shard(str(root / "synth"), seed=4, size=96, start=0, stop=22, annotated=0)
    src = root / "synth" / "images"
    write_hostile(src / "bad")
    return src


def ingest(ws: Path, src: Path | str, **kw: object) -> dict:
    return ingest_images(workspace=str(ws), src=str(src), options=IngestOptions(size=SIZE), shard_size=8, **kw)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_meta" not in p.parts
    }


def test_ingest_quarantines_hostile_files_and_stores_the_rest(cluster: str, corpus: Path, tmp_path: Path) -> None:
    ws_path = tmp_path / "ws"
    r = ingest(ws_path, corpus)
    assert (r["stored"], r["quarantined"], r["not_image_names"]) == (22, 4, 1)
    ws = Workspace(str(ws_path))
    reasons = {Path(e["source"]).name: e["reason"] for e in ws.quarantine_entries()}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notanimage.png", "bomb.png"}
    assert "empty" in reasons["empty.jpg"] and "bomb" in reasons["bomb.png"]
    assert "truncated" in reasons["truncated.jpg"] and "not an image" in reasons["notanimage.png"]
    table = item_table(ws, "corpus")
    assert len(table) == 22 and all(i.startswith("s4-") for i in table.by_id)
    images = ws.array("corpus/images")
    assert images.shape[1:] == (SIZE, SIZE, 3) and str(images.dtype) == "uint8"
    for slot in table.by_slot:
        assert images[slot].std() > 5  # real pixels, not a hole

    # plain zarr and xarray read it without mangaka: ids are the item coordinate
    ds = xr.open_zarr(str(ws_path / "corpus"), consolidated=False)
    ids = ds["item"].values
    assert sorted(i for i in ids if i) == sorted(table.by_id)
    assert ds["images"].shape == (len(ids), SIZE, SIZE, 3)
    assert zarr.open_array(str(ws_path / "corpus" / "item"), mode="r").shape == (len(ids),)

    again = ingest(ws_path, corpus)
    assert (again["stored"], again["already_ingested"], again["shards"]) == (0, 26, 0)


def test_new_files_go_to_new_shards_and_duplicates_are_skipped(cluster: str, corpus: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(corpus, src, ignore=shutil.ignore_patterns("bad"))
    ws_path = tmp_path / "ws"
    ingest(ws_path, src)
    before = tree_digest(ws_path / "corpus" / "images")
    shard_files = {k for k in before if k.startswith("c/")}
    (src / "late.jpg").write_bytes(jpeg_bytes(np.full((80, 80, 3), 120, np.uint8)))
    shutil.copy(src / "s4-000003.jpg", src / "copy-of-3.jpg")  # same content, other name
    r = ingest(ws_path, src)
    assert (r["stored"], r["duplicates_skipped"], r["already_ingested"]) == (2, 1, 22)
    after = tree_digest(ws_path / "corpus" / "images")
    assert all(after[k] == before[k] for k in shard_files)  # no existing shard was rewritten
    table = item_table(Workspace(str(ws_path)), "corpus")
    assert "late" in table.by_id and "copy-of-3" not in table.by_id and len(table) == 23
    assert table.by_id["late"]["slot"] >= 24  # a new shard, past the first batch's three

    # a file changed in place replaces its item (same id, new slot)
    (src / "late.jpg").write_bytes(jpeg_bytes(np.full((80, 80, 3), 30, np.uint8)))
    ingest(ws_path, src)
    table = item_table(Workspace(str(ws_path)), "corpus")
    late = Workspace(str(ws_path)).array("corpus/images")[table.by_id["late"]["slot"]]
    assert len(table) == 23 and abs(int(late.mean()) - 30) <= 2


def test_an_interrupted_run_resumes_to_the_same_bytes(cluster: str, corpus: Path, tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    ingest(whole, corpus)
    # "kill" a run after planning and one finished shard: replay the flow's first steps by hand
    ws = Workspace(str(broken))
    ws.ensure_config(shard_size=8)
    opts = resolve_codec(ws, IngestOptions(size=SIZE))
    plan = plan_ingest(ws, list_sources(str(corpus)))
    batch = Journal(ws, "corpus").add(opts.version, opts.model_dump(), [source_record(r) for r in plan.new])
    prepare_array(ws, opts, batch.end)
    ingest_shard(shard_specs(ws, batch)[1])
    r = ingest(broken, corpus)
    # sorted listing: bad/* (4 hostile) then 22 portraits -> shards of 8: 4+4 | 8 | 8 | 2
    assert (r["shards"], r["stored"], r["quarantined"]) == (3, 14, 4)
    assert tree_digest(whole / "corpus") == tree_digest(broken / "corpus")
    assert item_table(Workspace(str(whole)), "corpus").by_id == item_table(ws, "corpus").by_id


def test_tar_archives_ingest_like_folders(cluster: str, corpus: Path, tmp_path: Path) -> None:
    archive = make_tar(corpus, tmp_path / "corpus.tar")
    r = ingest(tmp_path / "ws", archive)
    assert (r["stored"], r["quarantined"]) == (22, 4)
    out = tmp_path / "out"
    export(workspace=str(tmp_path / "ws"), array="corpus/images", out=str(out))
    assert sorted(p.stem for p in out.iterdir()) == sorted(f"s4-{i:06d}" for i in range(22))


def test_symlinks_leaving_the_folder_and_undecodable_names_are_refused(cluster: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"bad-\xff-name.jpg"), "wb") as f:
        f.write(jpeg_bytes(np.zeros((40, 40, 3), np.uint8)))
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(jpeg_bytes(np.zeros((40, 40, 3), np.uint8)))
    (src / "link.jpg").symlink_to(outside)
    (src / "ok.jpg").write_bytes(jpeg_bytes(np.full((40, 40, 3), 90, np.uint8)))
    r = ingest(tmp_path / "ws", src)
    assert (r["stored"], r["quarantined"]) == (1, 2)
    reasons = sorted(e["reason"] for e in Workspace(str(tmp_path / "ws")).quarantine_entries())
    assert "UTF-8" in reasons[0] and "outside" in reasons[1]


def test_an_item_index_left_half_written_is_written_again_by_a_no_op_run(
    cluster: str, corpus: Path, tmp_path: Path
) -> None:
    """A run killed after the index's zarr.json but before its chunk: the next run, with
    nothing to ingest, sees the column is not whole and writes it again."""
    ws_path = tmp_path / "ws"
    ingest(ws_path, corpus)
    ws = Workspace(str(ws_path))
    ids = ws.array("corpus/item")[:].tolist()
    assert ws.array("corpus/item").attrs["complete"] is True and any(ids)
    ws.array("corpus/item", mode="r+").update_attributes({"complete": False})  # as write_item_index leaves it
    (ws_path / "corpus" / "item" / "c" / "0").unlink()
    assert not any(Workspace(str(ws_path)).array("corpus/item")[:].tolist())  # the ids read as empty
    r = ingest(ws_path, corpus)
    assert r["stored"] == 0
    again = Workspace(str(ws_path)).array("corpus/item")
    assert again[:].tolist() == ids and again.attrs["complete"] is True
