"""Ingestion shards when reading fails: a fault of the run is never a verdict on the file.

The shard functions run here in this process, exactly as a Dask worker runs them; the flow
around them is tested in tests/flows/test_ingest.py and through the command line.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from storage.items import item_table
from storage.sources import SourceReader, list_sources
from storage.workspace import Workspace
from tasks.ingest import (
    ARRAY,
    FAMILY,
    STAGE,
    IngestOptions,
    SourceReadError,
    ingest_shard,
    plan_ingest,
    prepare_array,
    shard_specs,
    start_batches,
)
from tests.conftest import gradient, jpeg_bytes


def corpus(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"im{i}.jpg").write_bytes(jpeg_bytes(gradient(40, 40, i)))
    return folder


def run(ws: Workspace, src: Path, opts: IngestOptions) -> None:
    """What the ingest flow does, shard tasks in this process."""
    _, batches = start_batches(ws, list_sources(str(src)), FAMILY, ARRAY, STAGE, opts.version, opts.model_dump())
    for b in batches:
        prepare_array(ws, opts, b.end)
    for b in batches:
        for spec in shard_specs(ws, b):
            ingest_shard(spec)


def test_an_io_error_fails_the_shard_and_quarantines_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = corpus(tmp_path / "src", 4)
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    opts = IngestOptions(size=32)
    real = SourceReader.read

    def flaky_disk(self: SourceReader, ref, limit=None):  # noqa: ANN001
        if ref.relpath == "im2.jpg":
            raise OSError(errno.EIO, "Input/output error")
        return real(self, ref, limit)

    monkeypatch.setattr(SourceReader, "read", flaky_disk)
    with pytest.raises(SourceReadError, match="im2.jpg"):
        run(ws, src, opts)
    assert ws.quarantine_entries() == [] and ws.markers(ARRAY) == {}
    table = item_table(ws, FAMILY)
    assert len(table) == 0 and table.pending == 4  # planned, not stored, not "already there"
    plan = plan_ingest(ws, list_sources(str(src)))
    assert (plan.known, plan.resuming, len(plan.new)) == (0, 4, 0)

    monkeypatch.setattr(SourceReader, "read", real)  # the disk is fine again
    run(ws, src, opts)
    table = item_table(ws, FAMILY)
    assert sorted(table.by_id) == ["im0", "im1", "im2", "im3"] and table.pending == 0
    assert ws.quarantine_entries() == []


def test_a_file_gone_since_listing_is_recorded_and_ingested_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = corpus(tmp_path / "src", 3)
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    opts = IngestOptions(size=32)
    kept = (src / "im1.jpg").read_bytes()
    stat = (src / "im1.jpg").stat()
    real = SourceReader.read

    def deleted_meanwhile(self: SourceReader, ref, limit=None):  # noqa: ANN001
        if ref.relpath == "im1.jpg":
            (src / "im1.jpg").unlink(missing_ok=True)
        return real(self, ref, limit)

    monkeypatch.setattr(SourceReader, "read", deleted_meanwhile)
    run(ws, src, opts)
    monkeypatch.setattr(SourceReader, "read", real)
    table = item_table(ws, FAMILY)
    assert sorted(table.by_id) == ["im0", "im2"] and [e["id"] for e in table.missing] == ["im1"]
    assert ws.quarantine_entries() == []  # a vanished file is not bad content

    (src / "im1.jpg").write_bytes(kept)  # back, even with the same size and time
    import os

    os.utime(src / "im1.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    run(ws, src, opts)
    table = item_table(ws, FAMILY)
    assert sorted(table.by_id) == ["im0", "im1", "im2"]
    got = ws.read_items(ARRAY, [table.by_id["im1"]["slot"]])[0]
    assert got.shape == (32, 32, 3) and np.asarray(got).any()
