"""Workspace bookkeeping on a local directory: config, arrays, markers, quarantine, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from storage.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from storage.items import Journal
from storage.location import Location, safe_key
from storage.workspace import Workspace, WorkspaceError, image_spec


def test_config_is_fixed_at_first_use(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=8, image_size=64)
    ws.ensure_config(shard_size=8, image_size=None)
    with pytest.raises(WorkspaceError, match="--shard-size 8"):
        ws.ensure_config(shard_size=16)
    assert ws.shard_size == 8


def test_arrays_are_item_major_sharded_zstd(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    arr = ws.require_array("corpus/images", image_spec(16), length=6)
    assert arr.shape == (6, 16, 16, 3) and arr.chunks == (1, 16, 16, 3) and arr.shards == (4, 16, 16, 3)
    assert "zstd" in str(arr.metadata.codecs).lower()
    ws.write_shard("corpus/images", 1, np.full((2, 16, 16, 3), 9, np.uint8))
    assert (ws.read_shard("corpus/images", 1) == 9).all() and (ws.read_shard("corpus/images", 0) == 0).all()
    with pytest.raises(WorkspaceError, match="same --size"):
        ws.require_array("corpus/images", image_spec(32))
    # plain zarr, without mangaka, sees the same thing
    plain = zarr.open_array(str(tmp_path / "corpus" / "images"), mode="r")
    assert plain.shape == (6, 16, 16, 3) and int(plain[5, 0, 0, 0]) == 9
    assert ws.list_arrays() == ["corpus/images"]


def test_markers_are_keyed_by_version(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    assert not ws.is_done("corpus/masks", 3, "v1")
    ws.write_marker("corpus/masks", 3, "v1", note="x")
    assert ws.is_done("corpus/masks", 3, "v1") and not ws.is_done("corpus/masks", 3, "v2")
    assert ws.markers("corpus/masks")[3]["note"] == "x"
    ws.clear_markers("corpus/masks", [3])
    assert ws.markers("corpus/masks") == {}


def test_quarantine_is_append_only_and_idempotent(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.quarantine("a.jpg", "ingest-images", "empty file")
    ws.quarantine("a.jpg", "ingest-images", "empty file")
    ws.quarantine("b.jpg", "ingest-images", "truncated")
    entries = ws.quarantine_entries()
    assert [(e["source"], e["reason"]) for e in entries] == [("a.jpg", "empty file"), ("b.jpg", "truncated")]
    assert all({"source", "stage", "reason", "time"} <= set(e) for e in entries)


def test_checkpoints_round_trip_with_tags(tmp_path: Path) -> None:
    from safetensors.numpy import load, save

    ws = Workspace(str(tmp_path))
    w1 = save({"w": np.ones(3, np.float32)})
    save_checkpoint(ws, "unet", "epoch-0001", w1, {"classes": 7}, {"miou": 0.5}, tags=("latest", "best"))
    save_checkpoint(ws, "unet", "epoch-0002", save({"w": np.zeros(3, np.float32)}), {"classes": 7}, {"miou": 0.4})
    assert list_checkpoints(ws, "unet") == ["epoch-0001", "epoch-0002"]
    assert load_checkpoint(ws, "unet").name == "epoch-0002"
    best = load_checkpoint(ws, "unet", "best")
    assert best.metrics == {"miou": 0.5} and (load(best.weights)["w"] == 1).all()
    with pytest.raises(WorkspaceError, match="train it first"):
        load_checkpoint(ws, "gaugan")


def test_journal_batches_start_on_shard_boundaries(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    j = Journal(ws, "corpus")
    b1 = j.add("v", {}, [{"n": i} for i in range(6)])
    b2 = j.add("v", {}, [{"n": i} for i in range(3)])
    assert (b1.base, b1.end, b1.shard_indices()) == (0, 6, [0, 1])
    assert (b2.base, b2.end, b2.shard_indices()) == (8, 11, [2])
    assert [b.number for b in j.batches()] == [1, 2] and j.length() == 11


def test_keys_never_escape_the_root(tmp_path: Path) -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="escapes"):
            safe_key(bad)
    loc = Location(str(tmp_path))
    loc.write_json("a/b.json", {"k": 1})
    assert loc.read_json("a/b.json") == {"k": 1} and loc.list("a") == ["a/b.json"]
    assert loc.read_json_many(["a/b.json", "a/missing.json"]) == {"a/b.json": {"k": 1}}


def test_read_items_by_slot(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    ws.require_array("corpus/images", image_spec(4), length=8)
    data = np.arange(8 * 48, dtype=np.uint8).reshape(8, 4, 4, 3)
    ws.write_shard("corpus/images", 0, data[:4].copy())
    ws.write_shard("corpus/images", 1, data[4:].copy())
    assert (ws.read_items("corpus/images", [2, 3, 4]) == data[2:5]).all()
    assert (ws.read_items("corpus/images", [6, 1]) == data[[6, 1]]).all()
    assert ws.read_items("corpus/images", []).shape == (0, 4, 4, 3)


def _truth(ws: Workspace, array: str) -> dict[int, Any]:
    """The markers as their files say, read one by one (no index)."""
    keys = [k for k in ws.loc.list(f"_meta/markers/{array}") if k.endswith(".json")]
    return {int(k.rsplit("/", 1)[1][:-5]): ws.loc.read_json(k) for k in keys}


@pytest.mark.parametrize("store", ["local", "s3"])
def test_the_marker_index_never_hides_a_change_to_a_marker(store: str, tmp_path: Path, request: Any) -> None:
    url = f"s3://{request.getfixturevalue('bucket')}/ws" if store == "s3" else str(tmp_path / "ws")
    ws = Workspace(url)
    array = "corpus/lineart/xdog"
    for shard in range(20):
        ws.write_marker(array, shard, "v1", entries=[{"slot": shard}])
    assert ws.markers(array) == _truth(ws, array)  # read file by file, then indexed
    assert ws.loc.exists(f"_meta/marker-index/{array}/000000.json")
    ws.write_marker(array, 3, "v2")  # replaced
    ws.clear_markers(array, [7])  # removed
    ws.write_marker(array, 25, "v1")  # added
    got = Workspace(url).markers(array)
    assert got == _truth(ws, array)
    assert got[3]["version"] == "v2" and 7 not in got and 25 in got
    ws.loc.write_bytes(f"_meta/marker-index/{array}/000000.json", b"\x1f\x8b not really gzip")  # damaged: ignored
    assert Workspace(url).markers(array) == _truth(ws, array)
    for shard in range(8, 20):  # many changes at once: the index is rewritten, still the truth
        ws.write_marker(array, shard, "v3")
    assert Workspace(url).markers(array) == _truth(ws, array) == Workspace(url).markers(array)
