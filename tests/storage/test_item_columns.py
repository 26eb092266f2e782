"""The item table as columns, and the marker index in pieces: what a 302,652-item table
keeps, and how its markers are read a piece at a time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from storage import workspace as workspace_mod
from storage.items import Live, derive_items, item_table
from storage.workspace import INDEX_PIECE, Workspace


def sha(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_live_items_read_back_as_they_were_set() -> None:
    live = Live()
    live["a"] = {"id": "a", "slot": 3, "source": "/x/a.png", "sha256": sha(1), "format": "PNG", "fp": "f"}
    live["b"] = {"id": "b", "slot": 7, "source": "/x/b.png", "sha256": "not-hex", "parent": "p"}
    live["c"] = {"id": "c", "slot": 9, "source": "/x/c.png", "sha256": sha(3).upper()}
    assert live["a"] == {"id": "a", "slot": 3, "source": "/x/a.png", "sha256": sha(1)}  # what a table keeps
    assert live["b"] == {"id": "b", "slot": 7, "source": "/x/b.png", "sha256": "not-hex", "parent": "p"}
    assert live["c"]["sha256"] == sha(3).upper()  # kept as given
    del live["a"]
    live["a"] = {"id": "a", "slot": 11, "source": "/y/a.png", "sha256": sha(2)}
    assert list(live) == ["b", "c", "a"]  # set again: last, as in a dict
    assert list(live.slots()) == [7, 9, 11] and live.source_of("a") == "/y/a.png" and live.source_of("z") is None
    assert "a" in live and "z" not in live and len(live) == 3 and live.get("z") is None
    as_dict = {i: e for i, e in live.items()}
    assert live == as_dict and dict(live) == as_dict and list(live.values()) == list(as_dict.values())
    with pytest.raises(KeyError):
        live["z"]


@pytest.mark.parametrize(
    "source",
    ["/x/ü/ひらがな.png", "plain.png", "/ends/with/", "s3://b/p/q.jpg", "/bad/\udcff\udcfe.png", "t.tar::a/b.png"],
)
def test_a_source_reads_back_exactly(source: str) -> None:
    live = Live()
    live["a"] = {"id": "a", "slot": 0, "source": "/x/other.png", "sha256": sha(0)}
    live["b"] = {"id": "b", "slot": 1, "source": source, "sha256": sha(1)}
    assert live["b"]["source"] == source and live.source_of("b") == source
    assert live["a"]["source"] == "/x/other.png"


def test_a_streamed_table_equals_the_table_of_all_entries_at_once(tmp_path: Path) -> None:
    """Markers in many index pieces, with duplicates and replacements across pieces."""
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=2)
    entries = []
    for slot in range(2 * INDEX_PIECE * 3):
        item, content = f"i{slot % 150}", slot % 170  # ids come back (replaced), pictures too (duplicates)
        entries.append({"slot": slot, "id": item, "source": f"/src/{item}.png", "sha256": sha(content), "status": "ok"})
    entries[5]["status"] = "quarantined"
    for shard in range(len(entries) // 2):
        ws.write_marker("corpus/images", shard, "v1", entries=entries[2 * shard : 2 * shard + 2])
    whole = derive_items("corpus", entries)
    streamed = item_table(ws, "corpus")
    assert streamed.by_id == whole.by_id and list(streamed.by_id) == list(whole.by_id)
    assert streamed.duplicates == whole.duplicates and streamed.replaced == whole.replaced
    assert streamed.quarantined == whole.quarantined and streamed.done == frozenset(range(len(entries) // 2))
    pieces = sorted(p.name for p in (tmp_path / "ws" / "_meta" / "marker-index" / "corpus" / "images").iterdir())
    assert pieces == ["000000.json", "000001.json", "000002.json"]
    assert item_table(Workspace(ws.url), "corpus").by_id == whole.by_id  # from the index this time


def test_the_markers_are_held_a_few_pieces_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    for shard in range(INDEX_PIECE * 5):
        ws.write_marker("corpus/images", shard, "v1")
    ws.markers("corpus/images")  # indexed
    reads: list[list[str]] = []
    real = ws.loc.read_json_many

    def counted(keys: list[str], hook: object = None) -> dict[str, object]:
        reads.append(keys)
        return real(keys, hook)  # type: ignore[arg-type]

    monkeypatch.setattr(ws.loc, "read_json_many", counted)
    got = ws.each_marker("corpus/images")
    first = [next(got) for _ in range(3)]
    assert [s for s, _ in first] == [0, 1, 2]
    index = "_meta/marker-index/corpus/images"
    assert reads[0] == [f"{index}/{p:06d}.json" for p in range(workspace_mod.INDEX_AT_ONCE)]
    rest = list(got)
    assert [s for s, _ in first + rest] == list(range(INDEX_PIECE * 5))
    assert all(keys == [] or "marker-index" in keys[0] for keys in reads)  # no marker file read again
    for shard in range(INDEX_PIECE * 5):  # markers that do not list items: one piece for 4,096 shards
        ws.write_marker("corpus/lineart/xdog", shard, "v1")
    assert len(ws.markers("corpus/lineart/xdog")) == INDEX_PIECE * 5
    assert [p.name for p in (tmp_path / "ws" / "_meta" / "marker-index" / "corpus" / "lineart" / "xdog").iterdir()] == [
        "000000.json"
    ]


def test_the_single_file_index_of_older_versions_is_removed_when_pieces_are_written(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.loc.write_json("_meta/marker-index/corpus/lineart/xdog.json", {"stamps": {}, "markers": {}})
    for shard in range(10):
        ws.write_marker("corpus/lineart/xdog", shard, "v1")
    assert sorted(ws.markers("corpus/lineart/xdog")) == list(range(10))
    assert not ws.loc.exists("_meta/marker-index/corpus/lineart/xdog.json")
    assert ws.loc.exists("_meta/marker-index/corpus/lineart/xdog/000000.json")
