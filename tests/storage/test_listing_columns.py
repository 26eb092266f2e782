"""A listing of 302,652 files is held as columns and a run's journal is written in pieces:
what planning sees must be exactly what whole refs and one journal file gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.items import Journal, item_table
from storage.sources import RefList, SourceRef, list_sources, listing_digest, listing_digests
from storage.workspace import Workspace
from tasks.ingest import ARRAY, FAMILY, STAGE, IngestOptions, plan_ingest, source_record, start_batches
from tests.conftest import gradient, jpeg_bytes


def refs_of_every_shape() -> list[SourceRef]:
    return [
        SourceRef("/data/b.jpg", "file", "/data/b.jpg", "b.jpg", 10, 1.5),
        SourceRef("/data/a/x.png", "file", "/data/a/x.png", "a/x.png", 11, 2.25),
        SourceRef("/in/c.tar::q/1.jpg", "tar", "/in/c.tar", "q/1.jpg", 12, 3.0, 2560),
        SourceRef("s3://bucket/p/k.jpg", "s3", "bucket/p/k.jpg", "k.jpg", 13, 4.0),
        SourceRef("labels/m.json", "file", "/abs/labels/m.json", "m.json", 14, 5.0),  # source as given, path resolved
        SourceRef("odd-source", "file", "/elsewhere/z.jpg", "z.jpg", 15, 6.0),  # neither a prefix: kept whole
        SourceRef("/data/", "file", "/data/", "", 0, 0.0),  # no relpath: kept whole
    ]


def test_a_ref_list_gives_back_exactly_the_refs_it_was_given() -> None:
    refs = refs_of_every_shape()
    got = RefList(refs)
    assert len(got) == len(refs)
    assert list(got) == refs
    assert [got[i] for i in range(len(refs))] == refs
    assert got[-1] == refs[-1] and got[1:4] == refs[1:4]
    with pytest.raises(IndexError):
        got[len(refs)]
    assert list(listing_digests(got)) == [r.listing_digest for r in refs]
    assert list(listing_digests(refs)) == list(listing_digests(got))
    assert [r.fingerprint for r in got] == [r.fingerprint for r in refs]


def test_sorting_and_truncating_keep_every_ref_with_its_own_fields() -> None:
    refs = refs_of_every_shape()
    got = RefList(refs)
    got.sort_from(2)
    assert list(got) == refs[:2] + sorted(refs[2:], key=lambda r: r.relpath)
    got.truncate(4)
    assert list(got) == (refs[:2] + sorted(refs[2:], key=lambda r: r.relpath))[:4]


def test_the_listing_digest_follows_place_size_and_time() -> None:
    d = listing_digest("/a.jpg", 10, 1.5)
    assert d == listing_digest("/a.jpg", 10, 1.5) and len(d) == 20
    assert (
        len(
            {d, listing_digest("/b.jpg", 10, 1.5), listing_digest("/a.jpg", 11, 1.5), listing_digest("/a.jpg", 10, 1.6)}
        )
        == 4
    )
    assert listing_digest("/a.jpg", 10, 2) == listing_digest("/a.jpg", 10, 2.0)  # a time read back from JSON as an int


def test_a_nested_folder_lists_in_order_as_refs_with_their_paths(tmp_path: Path) -> None:
    for rel in ["z.jpg", "b/y.png", "b/c/x.jpg", "a/w.jpg", "m.jpg", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * len(rel))
    listing = list_sources(str(tmp_path))
    assert isinstance(listing.refs, RefList)
    assert [r.relpath for r in listing.refs] == ["m.jpg", "z.jpg", "a/w.jpg", "b/y.png", "b/c/x.jpg"]
    for r in listing.refs:
        assert r.source == r.path == str(tmp_path / r.relpath)
        st = (tmp_path / r.relpath).stat()
        assert (r.size, r.mtime, r.kind, r.offset) == (st.st_size, st.st_mtime, "file", 0)
    assert listing.skipped_names == 1


def corpus(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"im{i:03d}.jpg").write_bytes(jpeg_bytes(gradient(24, 24, i)))
    return folder


def test_a_run_journals_its_files_in_pieces_of_whole_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANGAKA_JOURNAL_PIECE", "8")  # two shards of 4
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    src = corpus(tmp_path / "src", 19)
    opts = IngestOptions(size=24)
    plan, batches = start_batches(ws, list_sources(str(src)), FAMILY, ARRAY, STAGE, opts.version, opts.model_dump())
    assert [(b.number, b.base, len(b.shards), b.n_sources) for b in batches] == [
        (1, 0, 2, 8),
        (2, 8, 2, 8),
        (3, 16, 1, 3),
    ]
    assert Journal(ws, FAMILY).batches() == batches
    assert list(Journal(ws, FAMILY).each(at_once=1)) == batches
    records = [s for b in batches for shard in b.shards for s in shard]
    assert records == [source_record(r) for r in list_sources(str(src)).refs]
    assert item_table(ws, FAMILY).length == 19 and item_table(ws, FAMILY).pending == 19


def test_a_run_killed_between_two_pieces_is_planned_again_as_one_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MANGAKA_JOURNAL_PIECE", "8")
    src = corpus(tmp_path / "src", 19)
    opts = IngestOptions(size=24)

    def journal(ws: Workspace) -> list[dict]:
        return [{k: v for k, v in b.to_dict().items() if k != "created"} for b in Journal(ws, FAMILY).batches()]

    whole = Workspace(str(tmp_path / "whole"))
    whole.ensure_config(shard_size=4)
    start_batches(whole, list_sources(str(src)), FAMILY, ARRAY, STAGE, opts.version, opts.model_dump())

    cut = Workspace(str(tmp_path / "cut"))
    cut.ensure_config(shard_size=4)
    start_batches(cut, list_sources(str(src)), FAMILY, ARRAY, STAGE, opts.version, opts.model_dump())
    cut.loc.delete("_meta/batches/corpus/000003.json")  # the last piece never written
    cut.loc.delete("_meta/batches/corpus/000002.json")
    plan = plan_ingest(cut, list_sources(str(src)))
    assert (plan.known, plan.resuming, len(plan.new)) == (0, 8, 11)
    assert [r.relpath for r in plan.new] == [f"im{i:03d}.jpg" for i in range(8, 19)]
    _, batches = start_batches(cut, list_sources(str(src)), FAMILY, ARRAY, STAGE, opts.version, opts.model_dump())
    assert [b.number for b in batches] == [1, 2, 3]
    assert journal(cut) == journal(whole)


def test_planning_compares_digests_the_way_it_compared_records(tmp_path: Path) -> None:
    """A record that lacks place, size or time (by hand, or an older tool) is matched by fingerprint."""
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    src = corpus(tmp_path / "src", 6)
    refs = list(list_sources(str(src)).refs)
    records = [source_record(r) for r in refs]
    records[1] = {"fingerprint": records[1]["fingerprint"]}  # says no more than its fingerprint
    records[2] = {**records[2], "mtime": records[2]["mtime"] + 1}  # the file changed since: new
    Journal(ws, FAMILY).add("v", {}, records)
    plan = plan_ingest(ws, list_sources(str(src)))
    assert plan.resuming == 5 and [r.relpath for r in plan.new] == ["im002.jpg"]
    assert np.array_equal(listing_digests(refs), listing_digests(list_sources(str(src)).refs))


def test_texts_keep_paths_as_one_buffer_and_sort_them_as_strings() -> None:
    from storage.sources import Texts

    names = ["b/ü.jpg", "a/ひ.png", "a/z.png", "a/é.png", "c.jpg", "a/e.png"]
    t = Texts()
    for n in names:
        t.append(n)
    assert list(t) == names and len(t) == 6 and t[1] == "a/ひ.png"
    order = t.sort_from(1)
    assert list(t) == [names[0], *sorted(names[1:])]  # UTF-8 bytes sort as code points
    assert order is not None and [names[1 + i] for i in order] == sorted(names[1:])
    assert t.sort_from(1) is None  # in order already
    t.truncate(2)
    assert list(t) == [names[0], sorted(names[1:])[0]]
    t.append("d.png")
    assert t[2] == "d.png" and list(t.encoded())[2] == b"d.png"
