"""S3 workspaces and S3 sources on a real S3 server (moto) on loopback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import s3fs

from flows.export import export
from flows.ingest import ingest_images
from storage.items import item_table
from storage.workspace import Workspace
from tasks.ingest import IngestOptions
from tasks.status import workspace_status
from tasks.synth import write_synth_shard
from tests.conftest import write_hostile


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    write_synth_shard(str(tmp_path / "synth"), seed=9, size=80, start=0, stop=12, annotated=0)
    src = tmp_path / "synth" / "images"
    write_hostile(src)
    return src


def test_s3_workspace_exports_exactly_what_a_local_one_does(
    cluster: str, corpus: Path, bucket: str, s3_server: str, tmp_path: Path
) -> None:
    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.put(str(corpus) + "/", f"{bucket}/incoming/", recursive=True)
    opts = IngestOptions(size=48)
    local_ws, s3_ws = str(tmp_path / "ws"), f"s3://{bucket}/ws"
    r_local = ingest_images(workspace=local_ws, src=str(corpus), options=opts, shard_size=4)
    r_s3 = ingest_images(workspace=s3_ws, src=f"s3://{bucket}/incoming", options=opts, shard_size=4)
    for key in ("stored", "quarantined", "not_image_names", "corpus_items"):
        assert r_local[key] == r_s3[key], key
    assert r_s3["stored"] == 12 and r_s3["quarantined"] == 4

    status = workspace_status(Workspace(s3_ws))
    assert status["stages"]["corpus/images"] == {"done": 12, "total": 12}
    assert {Path(e["source"]).name for e in status["quarantine"]} == {
        "empty.jpg",
        "truncated.jpg",
        "notanimage.png",
        "bomb.png",
    }
    assert item_table(Workspace(s3_ws), "corpus").by_id.keys() == item_table(Workspace(local_ws), "corpus").by_id.keys()

    export(workspace=local_ws, array="corpus/images", out=str(tmp_path / "from-local"))
    export(workspace=s3_ws, array="corpus/images", out=str(tmp_path / "from-s3"))
    local, remote = digests(tmp_path / "from-local"), digests(tmp_path / "from-s3")
    assert len(local) == 12 and local == remote

    # an S3 destination for export works too
    export(workspace=s3_ws, array="corpus/images", out=f"s3://{bucket}/export")
    assert len(fs.ls(f"{bucket}/export")) == 12

    again = ingest_images(workspace=s3_ws, src=f"s3://{bucket}/incoming", options=opts, shard_size=4)
    assert (again["stored"], again["already_ingested"]) == (0, 16)

    # the same shard files on S3 as on local disk: JPEG chunks, encoded the same way
    local_shards = [p for p in sorted((Path(local_ws) / "corpus" / "images").rglob("*")) if p.is_file()]
    assert local_shards and Workspace(s3_ws).codec_of("corpus/images") == "jpeg"
    for p in local_shards:
        rel = p.relative_to(local_ws).as_posix()
        assert fs.cat(f"{bucket}/ws/{rel}") == p.read_bytes(), rel
    # JPEGs of the workspace's size are stored on S3 byte for byte, as on local disk
    write_synth_shard(str(tmp_path / "exact"), seed=3, size=48, start=0, stop=3, annotated=0)
    fs.put(str(tmp_path / "exact" / "images") + "/", f"{bucket}/exact/", recursive=True)
    r = ingest_images(workspace=s3_ws, src=f"s3://{bucket}/exact", options=opts, shard_size=4)
    assert (r["stored"], r["stored_as_is"]) == (3, 3)
    ws = Workspace(s3_ws)
    table = item_table(ws, "corpus")
    for name in sorted(p.name for p in (tmp_path / "exact" / "images").iterdir()):
        (chunk,) = ws.read_chunks("corpus/images", [table.by_id[Path(name).stem]["slot"]])
        assert chunk == (tmp_path / "exact" / "images" / name).read_bytes()
