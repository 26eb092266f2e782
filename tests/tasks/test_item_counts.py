"""``status`` counts items from a small cache keyed by the listing of the markers and journal:
always the counts the markers say, whatever was written, killed or changed since."""

from __future__ import annotations

import json
from pathlib import Path

from flows.shards import live_slots, pending_of, pending_shards
from storage.items import ItemCounts, ItemView, item_counts, item_table
from storage.sources import list_sources
from storage.workspace import Workspace
from tasks.ingest import (
    ARRAY,
    FAMILY,
    STAGE,
    IngestOptions,
    ingest_shard,
    plan_ingest,
    prepare_array,
    shard_specs,
    start_batches,
)
from tasks.status import workspace_status
from tests.conftest import gradient, jpeg_bytes

COUNTS = "_meta/item-counts/corpus.json"


def corpus(folder: Path, start: int, stop: int, same_as: dict[int, int] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        (folder / f"im{i:03d}.jpg").write_bytes(jpeg_bytes(gradient(40, 40, (same_as or {}).get(i, i))))
    return folder


def ingest(ws: Workspace, src: Path, run_shards: int | None = None) -> None:
    """The ingest flow's steps in this process; ``run_shards`` stops after that many shards (a killed run)."""
    opts = IngestOptions(size=32)
    _, batches = start_batches(ws, list_sources(str(src)), FAMILY, ARRAY, STAGE, opts.version, opts.model_dump())
    done = 0
    for b in batches:
        prepare_array(ws, opts, b.end)
        for spec in shard_specs(ws, b):
            if run_shards is not None and done >= run_shards:
                return
            ingest_shard(spec)
            done += 1


def derived(ws: Workspace) -> dict:
    return ItemCounts.of(ws, item_table(ws, "corpus")).to_dict("")


def test_counts_follow_the_markers_through_new_batches_duplicates_and_a_killed_run(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    src = corpus(tmp_path / "src", 0, 10, same_as={7: 2})  # im007 is a copy of im002
    ingest(ws, src)
    first = item_counts(ws, "corpus")
    assert (first.items, first.duplicates, first.pending, first.length) == (9, 1, 0, 10)
    assert first.to_dict("") == derived(ws)
    assert ws.loc.exists(COUNTS)
    assert item_counts(ws, "corpus") == first  # from the cache now

    corpus(src, 10, 19)
    ingest(ws, src, run_shards=1)  # killed after the first shard of the new batch
    after_kill = item_counts(ws, "corpus")
    assert after_kill.to_dict("") == derived(ws)
    assert after_kill.pending == 5 and after_kill.items == 9 + 4

    ingest(ws, src)  # resumed
    resumed = item_counts(ws, "corpus")
    assert resumed.to_dict("") == derived(ws)
    assert (resumed.items, resumed.pending, resumed.duplicates) == (18, 0, 1)

    status = workspace_status(ws)
    assert status["stages"]["corpus/images"] == {"done": 18, "total": 18}
    assert status["duplicates_skipped"] == 1


def test_a_cache_of_other_markers_is_not_believed(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    ingest(ws, corpus(tmp_path / "src", 0, 8))
    truth = item_counts(ws, "corpus").to_dict("")
    body = json.loads((tmp_path / "ws" / COUNTS).read_text())
    body.update(basis="0" * 64, items=1234)
    (tmp_path / "ws" / COUNTS).write_text(json.dumps(body))
    assert item_counts(ws, "corpus").to_dict("") == truth
    # a marker rewritten in place (another stamp) makes the stored counts stale too
    (tmp_path / "ws" / COUNTS).write_text("{not json")
    assert item_counts(ws, "corpus").to_dict("") == truth
    marker = next((tmp_path / "ws" / "_meta" / "markers" / "corpus" / "images").glob("*.json"))
    marker.unlink()
    after = item_counts(ws, "corpus")
    assert after.to_dict("") == derived(ws) and after.items == 4 and after.pending == 4


def plan_of(ws: Workspace, src: Path) -> tuple:
    plan = plan_ingest(ws, list_sources(str(src)))
    return ([b.number for b in plan.open_batches], [r.id for r in plan.new], plan.known, plan.resuming, plan.refused)


def test_planning_from_the_counts_is_planning_from_the_markers(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    src = corpus(tmp_path / "src", 0, 8)
    ingest(ws, src)
    corpus(src, 8, 16)
    ingest(ws, src, run_shards=1)  # a killed run: batch 2 is open
    corpus(src, 16, 18)  # and two files new since
    sub = corpus(src / "sub", 40, 41)
    (sub / "im040.jpg").rename(sub / "im001.jpg")  # the id im001 from another place
    item_counts(ws, "corpus")  # current now
    assert ws.loc.exists(COUNTS)
    from_counts = plan_of(ws, src)
    assert from_counts == (
        [2],
        ["im016", "im017"],
        12,
        4,
        [
            (
                str(sub / "im001.jpg"),
                f"item id 'im001' is already taken by {src / 'im001.jpg'}; ids are file stems and must be unique",
            )
        ],
    )
    (tmp_path / "ws" / COUNTS).unlink()
    assert plan_of(ws, src) == from_counts
    # a marker that cannot be read is a shard not done, with the counts as without them
    marker = tmp_path / "ws" / "_meta" / "markers" / "corpus" / "images" / "000001.json"
    marker.write_bytes(b'{"version": "v", "shar')
    item_counts(ws, "corpus")
    damaged = plan_of(ws, src)
    assert damaged[0] == [1, 2] and damaged[3] == 4 + 4
    (tmp_path / "ws" / COUNTS).unlink()
    assert plan_of(ws, src) == damaged


def test_a_render_decides_from_the_counts_as_from_the_table(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    src = corpus(tmp_path / "src", 0, 8, same_as={5: 1})  # im005 waits as a copy of im001
    ingest(ws, src)
    array, version = "corpus/lineart/xdog", "v1"

    def both(shards: str | None = None) -> list:
        table = item_table(ws, "corpus")
        truth = pending_shards(ws, table.length, live_slots(table), array, version, shards, False)
        assert pending_of(ws, ItemView(ws, "corpus"), array, version, shards, False) == truth
        return truth

    assert both() == [(0, [0, 1, 2, 3]), (1, [4, 6, 7])]
    for shard, slots in both():
        ws.write_marker(array, shard, version, live=slots)
    assert both() == [] and both("1:2") == []
    corpus(src, 1, 2, same_as={1: 40})  # im001 changes: im005 takes over its old picture
    ingest(ws, src)
    assert both() == [(0, [0, 2, 3]), (1, [4, 5, 6, 7]), (2, [8])]  # slot 1 is no one's now
    assert both("0:1") == [(0, [0, 2, 3])]
    ws.write_marker(array, 0, version, live=[0, 2, 3])
    assert both() == [(1, [4, 5, 6, 7]), (2, [8])]
    assert ItemView(ws, "corpus").counts == item_counts(ws, "corpus")
