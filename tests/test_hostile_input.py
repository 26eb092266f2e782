"""Hostile inputs through the real command line (issue 18, items 9-13), on fresh workspaces.

Each case is a file an audit found could hang a run, crash its planning or reach a decoder
it should not: the run must quarantine it with a reason (or refuse the source with a usage
error), ingest its valid neighbours, and never hang. Each CLI run costs seconds, so each
test puts all of its cases in one source.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from storage.workspace import Workspace
from tests.conftest import gradient, jpeg_bytes, png_bytes, png_header_only
from tests.test_cli import MANGAKA

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"
HANG = 120  # seconds: a run that takes longer is hanging on a FIFO


def mangaka(cluster: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MANGAKA, "--dask-address", cluster, *args], cwd=cwd, capture_output=True, text=True, timeout=HANG
    )


def reasons(ws: Path) -> dict[str, str]:
    return {Path(e["source"]).name: e["reason"] for e in Workspace(str(ws)).quarantine_entries()}


def pcx_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(gradient(40, 40, 2)).save(buf, format="PCX")
    return buf.getvalue()


@pytest.mark.timeout(300)
def test_hostile_corpus_files_are_quarantined_and_nothing_hangs(cluster: str, tmp_path: Path) -> None:
    src = tmp_path / "c"
    src.mkdir()
    for i in range(3):
        (src / f"ok{i}.jpg").write_bytes(jpeg_bytes(gradient(40, 48, i)))
    (src / "late.jpg").write_bytes(jpeg_bytes(gradient(40, 48, 9)))
    os.mkfifo(src / "pipe.jpg")  # listing skips what is not a regular file
    (src / "eps.jpg").write_bytes(EPS)  # Ghostscript's, not an image
    (src / "pcx.png").write_bytes(pcx_bytes())  # a format Pillow knows but mangaka does not open
    args = ["--workspace", "ws", "ingest-images", "c", "--size", "32"]

    r = mangaka(cluster, tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert "ingested 4 new images" in r.stdout and "2 quarantined" in r.stdout, r.stdout
    got = reasons(tmp_path / "ws")
    assert set(got) == {"eps.jpg", "pcx.png"}
    assert "not an image" in got["eps.jpg"] and "EPS" in got["eps.jpg"] and "not an allowed format" in got["eps.jpg"]
    assert "not an image" in got["pcx.png"] and "PCX" in got["pcx.png"]

    # A listed file replaced by a FIFO before its shard is read (a run interrupted, a file
    # swapped): the shard is done again and the FIFO is refused at once, not waited on.
    (tmp_path / "ws" / "_meta" / "markers" / "corpus" / "images" / "000000.json").unlink()
    (src / "late.jpg").unlink()
    os.mkfifo(src / "late.jpg")
    r = mangaka(cluster, tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert "3 quarantined" in r.stdout, r.stdout
    got = reasons(tmp_path / "ws")
    assert set(got) == {"eps.jpg", "pcx.png", "late.jpg"}
    assert got["late.jpg"].startswith("refused: not a regular file but a FIFO")

    r = mangaka(cluster, tmp_path, "--workspace", "ws", "status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["stages"]["corpus/images"] == {"done": 3, "total": 3}
    assert len(status["quarantine"]) == 3 and all(e["reason"] for e in status["quarantine"])


@pytest.mark.timeout(300)
def test_tar_member_names_that_are_not_utf8_and_compressed_tars(cluster: str, tmp_path: Path) -> None:
    archive = tmp_path / "c.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name, data in [
            ("a.jpg", jpeg_bytes(gradient(40, 48, 1))),
            (b"caf\xe9.jpg".decode("utf-8", "surrogateescape"), jpeg_bytes(gradient(40, 48, 2))),  # latin-1 name
            ("b.png", png_bytes(Image.fromarray(gradient(40, 48, 3)))),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    args = ["--workspace", "ws", "ingest-images", "c.tar", "--size", "32"]

    r = mangaka(cluster, tmp_path, *args)
    assert r.returncode == 0, r.stderr
    assert "ingested 2 new images" in r.stdout and "1 quarantined" in r.stdout, r.stdout
    (entry,) = Workspace(str(tmp_path / "ws")).quarantine_entries()
    assert entry["source"] == f"{archive}::caf\\udce9.jpg" and "not valid UTF-8" in entry["reason"]

    r = mangaka(cluster, tmp_path, *args)  # the member no longer blocks the tar: nothing new
    assert r.returncode == 0, r.stderr
    assert "ingested 0 new images" in r.stdout and "2 already there" in r.stdout, r.stdout

    (tmp_path / "c.tar.gz").write_bytes(gzip.compress(archive.read_bytes()))
    r = mangaka(cluster, tmp_path, "--workspace", "ws2", "ingest-images", "c.tar.gz", "--size", "32")
    assert r.returncode == 2, (r.stdout, r.stderr)  # a usage error, not "failed:"
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("mangaka ingest-images:")]
    assert line == (
        "mangaka ingest-images: c.tar.gz is a gzip-compressed tar: mangaka reads members in place and needs an "
        "uncompressed .tar; decompress it first (gunzip)"
    )
    assert r.stdout == "" and not (tmp_path / "ws2" / "_meta" / "batches").exists()  # nothing planned


@pytest.mark.timeout(300)
def test_hostile_labelme_files_are_quarantined_and_nothing_hangs(cluster: str, tmp_path: Path) -> None:
    src = tmp_path / "lm"
    src.mkdir()
    Image.fromarray(gradient(40, 60)).save(src / "img.png")
    os.mkfifo(src / "pipe.png")

    def labelme(name: str, image: str, shapes: list[dict]) -> None:
        doc = {"version": "5.5.0", "shapes": shapes, "imagePath": image, "imageData": None}
        (src / name).write_text(json.dumps({**doc, "imageHeight": 40, "imageWidth": 60}))

    def shape(kind: str, points: list[list[float]], **extra: object) -> dict:
        return {"label": "skin", "points": points, "shape_type": kind, "group_id": None, "flags": {}, **extra}

    polygon = shape("polygon", [[0, 0], [30, 0], [30, 20]])
    labelme("good.json", "img.png", [polygon])
    labelme("fifo.json", "pipe.png", [polygon])
    bomb = base64.b64encode(png_header_only(16000, 16000)).decode()  # a few bytes claiming 256 MP
    labelme("bomb.json", "img.png", [shape("mask", [[0, 0], [5, 5]], mask=bomb)])

    r = mangaka(cluster, tmp_path, "--workspace", "ws", "ingest-labelme", "lm", "--size", "32")
    assert r.returncode == 0, r.stderr
    assert "ingested 1 annotations" in r.stdout and "2 quarantined" in r.stdout, r.stdout
    got = reasons(tmp_path / "ws")
    assert set(got) == {"fifo.json", "bomb.json"}
    assert "imagePath 'pipe.png' refused: not a regular file but a FIFO" in got["fifo.json"]
    assert "mask shape's patch must fit in its 60x40 image: decompression bomb refused" in got["bomb.json"]
