"""What the storage layer guarantees whatever a user names or a crash leaves behind: names
stay one key segment, a marker never describes data that is not there, a damaged marker or
batch is "not done" (never an error, never an overlap), and the item table keeps every
distinct picture of the source under an id through any sequence of changes."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.checkpoints import resolve, save_checkpoint
from storage.items import Journal, derive_items, item_table
from storage.workspace import Workspace, WorkspaceError, check_key, check_name, mask_spec


@pytest.mark.parametrize(
    "bad", ["x/../../images", "..", ".", "", "a/b", "/etc", ".hidden", "a\\b", "x\x00y", "-rf", "a" * 129, "é", 3]
)
def test_a_name_is_one_safe_segment(bad: object) -> None:
    with pytest.raises(WorkspaceError, match="invalid"):
        check_name(bad, "style name")


def test_good_names_pass_and_array_keys_are_never_normalised(tmp_path: Path) -> None:
    for good in ("toon", "Toon_2", "v1.5-final", "a" * 128):
        assert check_name(good) == good
    assert check_key("corpus/styled/toon") == "corpus/styled/toon"
    for bad in ("corpus/styled/x/../../images", "corpus//images", "corpus/./images", "corpus/images/"):
        with pytest.raises(WorkspaceError, match="invalid array name"):
            check_key(bad)
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    ws.require_array("corpus/images", mask_spec(8), 4, owner="ingest-images")
    with pytest.raises(WorkspaceError, match="invalid array name"):
        ws.write_shard("corpus/styled/x/../../images", 0, np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(WorkspaceError, match="invalid"):
        resolve(ws, "unet", "../../corpus/images")
    with pytest.raises(WorkspaceError, match="invalid"):
        save_checkpoint(ws, "unet", "../x", b"w", {})


def test_a_stage_may_not_write_an_array_another_stage_owns(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    ws.require_array("corpus/styled/a", mask_spec(8), 4, owner="render-style")
    ws.require_array("corpus/styled/a", mask_spec(8), 4, owner="render-style")  # its owner, again: fine
    with pytest.raises(WorkspaceError, match="written by render-style, not by render-lineart"):
        ws.require_array("corpus/styled/a", mask_spec(8), 4, owner="render-lineart")


def one_done_shard(root: Path, array: str, length: int, shard: int, version: str) -> Workspace:
    """A workspace of 4-item shards whose ``array`` (8x8 masks) has one shard of ones, done."""
    ws = Workspace(str(root))
    ws.ensure_config(shard_size=4)
    ws.require_array(array, mask_spec(8), length)
    ws.write_shard(array, shard, np.ones((4, 8, 8), np.uint8))
    ws.write_marker(array, shard, version)
    return ws


def test_a_shard_loses_its_marker_before_its_data_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = one_done_shard(tmp_path, "corpus/masks", 8, 1, "old-model")
    real = ws.loc.write_bytes

    def crash_on_data(key: str, data: bytes) -> None:
        if key.startswith("corpus/masks/c/"):
            raise KeyboardInterrupt  # the run dies while the new model's shard is written
        real(key, data)

    monkeypatch.setattr(ws.loc, "write_bytes", crash_on_data)
    with pytest.raises(KeyboardInterrupt):
        ws.write_shard("corpus/masks", 1, np.full((4, 8, 8), 2, np.uint8))
    assert ws.read_marker("corpus/masks", 1) is None  # never "old-model" over other data
    assert (ws.read_items("corpus/masks", [4, 5]) == 1).all()


def test_dropping_an_array_removes_its_markers_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = one_done_shard(tmp_path, "augmented/images", 4, 0, "v")
    order: list[str] = []
    real = ws.loc.delete
    monkeypatch.setattr(ws.loc, "delete", lambda key: (order.append(key), real(key)))
    ws.drop_array("augmented/images")
    assert order[0].startswith("_meta/markers/") and order[-1] == "augmented/images"


def test_an_unreadable_marker_means_not_done_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    ws.write_marker("corpus/masks", 0, "v")
    ws.write_marker("corpus/masks", 1, "v")
    (tmp_path / "_meta/markers/corpus/masks/000001.json").write_bytes(b"")  # what a power cut can leave
    (tmp_path / "_meta/markers/corpus/masks/000002.json").write_bytes(b'{"version": "v", "shar')
    with caplog.at_level(logging.WARNING):
        assert ws.is_done("corpus/masks", 0, "v")
        assert not ws.is_done("corpus/masks", 1, "v")
        assert not ws.is_done("corpus/masks", 2, "v")
        assert set(ws.markers("corpus/masks")) == {0}
    assert "000001.json" in caplog.text and "000002.json" in caplog.text


def test_a_damaged_batch_never_leads_a_new_batch_onto_stored_slots(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    j = Journal(ws, "corpus")
    j.add("v", {}, [{"fingerprint": str(i)} for i in range(4)])
    second = j.add("v", {}, [{"fingerprint": str(i)} for i in range(4, 8)])
    ws.write_marker("corpus/images", 1, "v", entries=[])
    (tmp_path / "_meta/batches/corpus/000002.json").write_bytes(b"")  # torn
    third = j.add("v", {}, [{"fingerprint": "x"}])
    assert third.number == 3 and third.base >= second.end  # neither its file nor its slots reused


# -- the item table -------------------------------------------------------------------------


def entry(slot: int, item: str, content: str, source: str | None = None) -> dict:
    sha = hashlib.sha256(content.encode()).hexdigest()
    return {"slot": slot, "id": item, "source": source or f"/src/{item}.png", "fp": f"{slot}", "sha256": sha}


def ok(*entries: dict) -> list[dict]:
    return [{**e, "status": "ok"} for e in entries]


def test_a_duplicate_takes_over_when_the_item_it_duplicated_changes() -> None:
    # p.png and q.png identical: q waits as p's duplicate; then p.png is replaced by another picture
    t = derive_items("corpus", ok(entry(0, "p", "A"), entry(1, "q", "A"), entry(4, "p", "B")))
    assert {i: e["slot"] for i, e in t.by_id.items()} == {"p": 4, "q": 1}
    assert not t.duplicates and [r["slot"] for r in t.replaced] == [0]
    # q's own file changes while it waits: its old picture is no one's any more
    t = derive_items("corpus", ok(entry(0, "p", "A"), entry(1, "q", "A"), entry(4, "q", "C"), entry(8, "p", "B")))
    assert {i: e["slot"] for i, e in t.by_id.items()} == {"p": 8, "q": 4}
    # three copies: the first waiting one (by slot) takes over, the other now waits on it
    t = derive_items("corpus", ok(entry(0, "p", "A"), entry(1, "r", "A"), entry(2, "q", "A"), entry(4, "p", "B")))
    assert {i: e["slot"] for i, e in t.by_id.items()} == {"p": 4, "r": 1}
    assert [(d["id"], d["duplicate_of"]) for d in t.duplicates] == [("q", "r")]


# A source folder as a sequence of operations; ingest = plan every file whose (name, content
# version) was not planned before into new slots, as plan_ingest does with fingerprints.
ops = st.lists(
    st.tuples(st.sampled_from(["put", "remove", "ingest"]), st.sampled_from("pqrst"), st.sampled_from("ABCD")),
    max_size=40,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.sampled_from([1, 2, 4]))
def test_every_distinct_picture_of_the_source_stays_stored_under_an_id(program: list, shard: int) -> None:
    files: dict[str, tuple[str, int]] = {}  # name -> (content, version)
    planned: set[tuple[str, int]] = set()
    entries: list[dict] = []
    version = 0
    next_slot = 0

    def ingest() -> None:
        nonlocal next_slot
        new = [(n, c, v) for n, (c, v) in sorted(files.items()) if (n, v) not in planned]
        if not new:
            return
        next_slot = -(-next_slot // shard) * shard  # batches start on shard boundaries
        for n, c, v in new:
            planned.add((n, v))
            entries.append({**entry(next_slot, n, c), "status": "ok"})
            next_slot += 1

    for op, name, content in [*program, ("ingest", "p", "A")]:
        if op == "put":
            version += 1
            files[name] = (content, version)
        elif op == "remove":
            files.pop(name, None)
        else:
            ingest()
        if op != "ingest":
            continue
        t = derive_items("corpus", entries)
        live = {e["sha256"] for e in t.by_id.values()}
        stored = {e["slot"]: e for e in entries}
        for n, (c, _v) in files.items():
            sha = hashlib.sha256(c.encode()).hexdigest()
            assert sha in live, (n, c, program)  # every distinct picture of the source has an id
            if n in t.by_id:  # an id whose file is there holds that file's current picture
                assert t.by_id[n]["sha256"] == sha, (n, program)
        slots = [e["slot"] for e in t.by_id.values()]
        assert len(slots) == len(set(slots))  # one id a slot
        for i, e in t.by_id.items():  # and a live slot holds what its entry says
            assert stored[e["slot"]]["sha256"] == e["sha256"] and stored[e["slot"]]["id"] == i
        assert len(live) == len(t.by_id)  # no picture under two ids


def test_item_table_counts_planned_but_unstored_sources_as_pending(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=2)
    Journal(ws, "corpus").add("v", {}, [{"fingerprint": str(i)} for i in range(5)])
    ws.write_marker("corpus/images", 0, "v", entries=ok(entry(0, "a", "A"), entry(1, "b", "B")))
    t = item_table(ws, "corpus")
    assert (len(t), t.pending, t.length) == (2, 3, 5)
