"""Durable writes: fsync before the rename and of every directory after it; unreadable JSON
read as absent (with a warning); zarr's writes through the same path; atomic creates."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from storage.location import Location
from storage.sweep import sweep_stale_tmp
from storage.workspace import Workspace
from storage.zarrstore import is_temporary_name


@pytest.fixture()
def synced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, bool]]:
    """Every os.fsync and os.replace/os.link in order: (what, inode, is a directory)."""
    events: list[tuple[str, int, bool]] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode)))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        events.append(("rename", os.stat(src).st_ino, False))
        real_replace(src, dst, **kw)

    def link(src: Any, dst: Any, **kw: Any) -> None:
        events.append(("link", os.stat(src).st_ino, False))
        real_link(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    return events


def test_a_write_syncs_the_file_before_its_rename_and_every_new_directory_after(
    tmp_path: Path, synced: list[tuple[str, int, bool]]
) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    loc = Location(str(root))
    loc.write_json("_meta/markers/corpus/images/000003.json", {"shard": 3})
    target = root / "_meta" / "markers" / "corpus" / "images" / "000003.json"
    ino = target.stat().st_ino
    file_sync = synced.index(("fsync", ino, False))
    assert synced.index(("rename", ino, False)) > file_sync  # the data is on disk before its name
    dirs = [root, *[root.joinpath(*("_meta", "markers", "corpus", "images")[:n]) for n in range(1, 5)]]
    for d in dirs:  # the target's directory, and the parent of each directory the write created
        assert ("fsync", d.stat().st_ino, True) in synced[file_sync:], d
    assert not [p for p in target.parent.iterdir() if p.name != target.name]  # no temporary left
    # an existing directory: the file and its one directory
    synced.clear()
    loc.write_json("_meta/markers/corpus/images/000004.json", {"shard": 4})
    assert [e[0] for e in synced] == ["fsync", "rename", "fsync"] and synced[-1][2]


def test_files_are_written_with_the_umask_not_0600(tmp_path: Path) -> None:
    loc = Location(str(tmp_path))
    old = os.umask(0o022)
    try:
        loc.write_bytes("a/b", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o644


def test_create_bytes_is_exclusive_and_durable(tmp_path: Path, synced: list[tuple[str, int, bool]]) -> None:
    loc = Location(str(tmp_path))
    assert loc.create_bytes("_meta/leases/x/000000000001.json", b"first")
    ino = (tmp_path / "_meta" / "leases" / "x" / "000000000001.json").stat().st_ino
    assert synced.index(("fsync", ino, False)) < synced.index(("link", ino, False))
    assert not loc.create_bytes("_meta/leases/x/000000000001.json", b"second")
    assert loc.read_bytes("_meta/leases/x/000000000001.json") == b"first"
    assert os.listdir(tmp_path / "_meta" / "leases" / "x") == ["000000000001.json"]


def test_create_bytes_on_s3(bucket: str) -> None:
    loc = Location(f"s3://{bucket}/ws")
    assert loc.create_bytes("_meta/leases/x/000000000001.json", b"first")
    assert not loc.create_bytes("_meta/leases/x/000000000001.json", b"second")  # 412 -> False
    assert loc.read_bytes("_meta/leases/x/000000000001.json") == b"first"


def test_unreadable_json_is_read_as_absent_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = Workspace(str(tmp_path))
    ws.write_marker("corpus/masks", 0, "v1")
    ws.write_marker("corpus/masks", 1, "v1")
    markers = tmp_path / "_meta" / "markers" / "corpus" / "masks"
    (markers / "000002.json").write_bytes(b"")  # what a power cut left before durable writes
    (markers / "000003.json").write_bytes(b'{"array": "corpus/ma')
    (markers / "000004.json").write_bytes(b"\xff\xfe not text")
    with caplog.at_level(logging.WARNING, logger="storage.location"):
        assert sorted(ws.markers("corpus/masks")) == [0, 1]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for n in (2, 3, 4):
        assert f"_meta/markers/corpus/masks/00000{n}.json" in warned
    # read_json still raises (callers decide); read_json_or_none says None
    with pytest.raises(ValueError):
        ws.loc.read_json("_meta/markers/corpus/masks/000003.json")
    assert ws.loc.read_json_or_none("_meta/markers/corpus/masks/000003.json") is None
    assert ws.loc.read_json_or_none("_meta/markers/corpus/masks/000009.json") is None
    assert ws.loc.read_json_or_none("_meta/markers/corpus/masks/000001.json")["shard"] == 1


def test_unreadable_json_on_s3_is_read_as_absent(bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    loc = Location(f"s3://{bucket}/ws")
    loc.write_json("_meta/runs/a.json", {"id": "a"})
    loc.write_bytes("_meta/runs/b.json", b"")
    loc.write_bytes("_meta/runs/c.json", b"not json")
    with caplog.at_level(logging.WARNING, logger="storage.location"):
        got = loc.read_json_many(["_meta/runs/a.json", "_meta/runs/b.json", "_meta/runs/c.json", "_meta/runs/d.json"])
    assert got == {"_meta/runs/a.json": {"id": "a"}}
    assert "_meta/runs/b.json" in caplog.text and "_meta/runs/c.json" in caplog.text


def _points(folder: Path) -> list[tuple[str, str]]:
    lines = (folder / "log").read_text().splitlines() if (folder / "log").exists() else []
    return [(op, key) for _n, op, key in (line.split(" ", 2) for line in lines)]


def test_zarr_writes_go_through_durable_named_and_announced_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: list[tuple[str, int, bool]]
) -> None:
    points = tmp_path / "points"
    monkeypatch.setenv("MANGAKA_WRITE_POINTS", str(points))
    loc = Location(str(tmp_path / "ws"))
    store = loc.zarr_store()
    group = zarr.open_group(store, mode="a", zarr_format=3)
    arr = group.create_array("corpus/x", shape=(4, 3), chunks=(1, 3), shards=(2, 3), dtype="uint8", fill_value=0)
    arr[:] = np.arange(12, dtype=np.uint8).reshape(4, 3)
    arr.resize((6, 3))
    arr[4:] = 7
    assert any(e[0] == "fsync" for e in synced)
    files = [p for p in (tmp_path / "ws").rglob("*") if p.is_file()]
    assert files and not [p for p in files if is_temporary_name(p.name)]
    # zarr, without mangaka's store, reads it all back
    plain = zarr.open_array(str(tmp_path / "ws" / "corpus" / "x"), mode="r")
    assert plain.shape == (6, 3) and int(plain[1, 2]) == 5 and int(plain[5, 0]) == 7
    arr.resize((2, 3))  # shrinking deletes the shards beyond the end
    group.require_group("corpus/empty")
    del group["corpus/empty"]
    written = _points(points)
    assert ("write", "corpus/x/zarr.json") in written and ("write", "corpus/x/c/0/0") in written
    assert ("delete", "corpus/x/c/2/0") in written and ("delete", "corpus/empty") in written
    # a read-only view refuses to write, as zarr's own does
    with pytest.raises(ValueError):
        zarr.open_array(loc.zarr_store(read_only=True), path="corpus/x", mode="r")[0] = 1
    # through the workspace, as every stage uses it
    ws = Workspace(loc.url)
    assert ws.list_arrays() == ["corpus/x"]
    assert int(ws.array("corpus/x")[1, 1]) == 4


def test_zarr_writes_on_s3_are_announced(bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    points = tmp_path / "points"
    monkeypatch.setenv("MANGAKA_WRITE_POINTS", str(points))
    loc = Location(f"s3://{bucket}/ws")
    group = zarr.open_group(loc.zarr_store(), mode="a", zarr_format=3)
    arr = group.create_array("corpus/x", shape=(4,), chunks=(2,), dtype="uint8", fill_value=0)
    arr[:] = 3
    arr.resize((2,))
    assert int(zarr.open_array(loc.zarr_store(read_only=True), path="corpus/x", mode="r")[1]) == 3
    written = _points(points)
    assert ("write", "corpus/x/zarr.json") in written and ("write", "corpus/x/c/1") in written
    assert ("delete", "corpus/x/c/1") in written


def test_location_writes_and_deletes_are_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    points = tmp_path / "points"
    monkeypatch.setenv("MANGAKA_WRITE_POINTS", str(points))
    loc = Location(str(tmp_path / "ws"))
    loc.write_json("_meta/a.json", {})
    loc.create_bytes("_meta/b.json", b"{}")
    loc.delete("_meta/a.json")
    loc.delete("_meta/missing.json")  # nothing to delete: no mutation
    assert _points(points) == [("write", "_meta/a.json"), ("create", "_meta/b.json"), ("delete", "_meta/a.json")]


def test_zarr_partials_of_killed_writers_are_swept(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    ws = Workspace(str(root))
    group = zarr.open_group(ws.loc.zarr_store(), mode="a", zarr_format=3)
    group.create_array("corpus/x", shape=(2,), chunks=(1,), dtype="uint8")[:] = 1
    # what zarr's own LocalStore leaves when its writer is killed between write and rename
    old = root / "corpus" / "x" / f"zarr.{'c' * 32}.partial"
    fresh = root / "corpus" / "x" / "c" / f"0.{'d' * 32}.partial"
    for p in (old, fresh):
        p.write_bytes(b"{")
    st = old.stat()
    os.utime(old, (st.st_atime - 300, st.st_mtime - 300))
    assert ws.list_arrays() == ["corpus/x"]  # partial files are not members
    assert sweep_stale_tmp(ws.loc, ttl=120) == 1
    assert not old.exists() and fresh.exists()
    assert int(ws.array("corpus/x")[1]) == 1
