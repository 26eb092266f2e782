"""A hostile or unlucky user at the command line: names that try to reach another array, and
a duplicate whose original changes. Every case through the real ``mangaka`` command."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from storage.items import item_table
from storage.workspace import Workspace
from tests.conftest import gradient
from tests.test_cli import run


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def image_folder(tmp_path: Path, count: int, seed: int) -> Path:
    """``tmp_path/src`` with ``count`` 32x32 PNGs ``im<i>.png`` (gradients from ``seed`` on)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(count):
        Image.fromarray(gradient(32, 32, seed + i)).save(src / f"im{i}.png")
    return src


def test_names_that_would_reach_another_array_are_usage_errors(cluster: str, tmp_path: Path) -> None:
    src = image_folder(tmp_path, 3, 0)
    ws = tmp_path / "ws"
    base = ["--workspace", str(ws)]
    r = run([*base, "ingest-images", str(src), "--size", "32"], tmp_path)
    assert r.returncode == 0, r.stderr
    before = digests(ws / "corpus" / "images") | digests(ws / "_meta" / "markers")
    attempts = [
        ["render-style", "--method", "npr", "--name", "x/../../images"],
        ["render-style", "--method", "npr", "--name", "../images"],
        ["render-style", "--method", "npr", "--name", ".."],
        ["export", "corpus/styled/../images", str(tmp_path / "out")],
        ["render-lineart", "--method", "artline", "--model", "../../corpus"],
        ["pseudolabel", "--model", "../x"],
    ]
    for args in attempts:
        r = run([*base, *args], tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "invalid" in r.stderr and r.stderr.strip().count("\n") == 0, (args, r.stderr)
    assert digests(ws / "corpus" / "images") | digests(ws / "_meta" / "markers") == before
    assert not (tmp_path / "out").exists()


def test_a_duplicate_keeps_its_picture_when_the_original_changes(cluster: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a, b, c = gradient(32, 32, 1), gradient(32, 32, 2), gradient(32, 32, 3)
    Image.fromarray(a).save(src / "p.png")
    shutil.copy(src / "p.png", src / "q.png")  # q is p's twin
    Image.fromarray(b).save(src / "r.png")
    ws = tmp_path / "ws"
    base = ["--workspace", str(ws)]
    # lossless (--codec raw), so that pixels compare exactly
    r = run([*base, "ingest-images", str(src), "--size", "32", "--shard-size", "4", "--codec", "raw"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "ingested 3 new images" in r.stdout and "1 duplicates skipped" in r.stdout
    r = run([*base, "render-lineart", "--method", "xdog"], tmp_path)
    assert r.returncode == 0, r.stderr

    Image.fromarray(c).save(src / "p.png")  # p.png now holds another picture; q.png still holds a
    r = run([*base, "ingest-images", str(src)], tmp_path)
    assert r.returncode == 0, r.stderr
    w = Workspace(str(ws))
    table = item_table(w, "corpus")
    assert sorted(table.by_id) == ["p", "q", "r"]
    pixels = {i: w.read_items("corpus/images", [e["slot"]])[0] for i, e in table.by_id.items()}
    assert np.array_equal(pixels["q"], a) and np.array_equal(pixels["p"], c) and np.array_equal(pixels["r"], b)

    r = run([*base, "ingest-images", str(src)], tmp_path)
    assert r.returncode == 0 and "ingested 0 new images" in r.stdout, r.stdout
    r = run([*base, "status", "--json"], tmp_path)
    status = json.loads(r.stdout)
    assert status["stages"]["corpus/images"] == {"done": 3, "total": 3}
    # q became an item in a shard that was rendered without it: it is rendered now
    assert status["stages"]["corpus/lineart/xdog"]["done"] == 2
    r = run([*base, "render-lineart", "--method", "xdog"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = w.read_items("corpus/lineart/xdog", [table.by_id["q"]["slot"]])[0]
    assert (lines < 255).any()
    r = run([*base, "status", "--json"], tmp_path)
    assert json.loads(r.stdout)["stages"]["corpus/lineart/xdog"]["done"] == 3


def test_a_torn_marker_is_not_done_and_the_next_run_repairs_it(cluster: str, tmp_path: Path) -> None:
    """What a power cut can leave after a rename without fsync: an empty marker file."""
    src = image_folder(tmp_path, 6, 10)
    ws = tmp_path / "ws"
    base = ["--workspace", str(ws)]
    r = run([*base, "ingest-images", str(src), "--size", "32", "--shard-size", "4"], tmp_path)
    assert r.returncode == 0, r.stderr
    before = digests(ws / "corpus" / "images")
    (ws / "_meta/markers/corpus/images/000001.json").write_bytes(b"")
    r = run([*base, "status", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stages"]["corpus/images"] == {"done": 4, "total": 6, "pending": 2}
    r = run([*base, "ingest-images", str(src)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 finished from an interrupted run" in r.stdout
    assert "000001.json" in r.stderr  # said, not silent
    r = run([*base, "status", "--json"], tmp_path)
    assert json.loads(r.stdout)["stages"]["corpus/images"] == {"done": 6, "total": 6}
    assert digests(ws / "corpus" / "images") == before


def test_two_runs_of_one_flow_started_together_never_both_run(cluster: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    src = image_folder(tmp_path, 4, 20)
    ws = tmp_path / "ws"
    args = [sys.executable, "-m", "flows.cli", "--workspace", str(ws), "ingest-images", str(src), "--size", "32"]
    procs = [
        subprocess.Popen(args, cwd=tmp_path, env=os.environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in outs)
    refused = [err for code, _, err in outs if code != 0]
    assert codes == [0, 0] or (codes[0] == 0 and all("another ingest-images run holds" in e for e in refused)), outs
    w = Workspace(str(ws))
    assert len(item_table(w, "corpus")) == 4 and len(w.markers("corpus/images")) == 1
    from storage.items import Journal

    assert len(Journal(w, "corpus").batches()) == 1  # planned once: never by two holders
