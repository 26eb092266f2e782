"""Faults in the middle of bulk work: a SIGKILLed run resumes to the bytes of an uninterrupted
one, and a Dask worker killed mid-shard loses nothing and duplicates nothing."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flows.ingest import ingest_images
from flows.lineart import render_lineart
from storage.workspace import Workspace
from tasks.ingest import IngestOptions
from tasks.synth import write_synth_shard
from tests.faults import start_cli
from tests.test_cli import MANGAKA


def data_digest(ws: Path, prefix: str) -> dict[str, str]:
    """Every data file of the arrays under ``prefix`` (what a reader sees), by path."""
    root = ws / prefix
    return {
        str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def marker_versions(ws: Workspace, array: str) -> dict[int, str]:
    return {k: v["version"] for k, v in ws.markers(array).items()}


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The command's environment: the session's Prefect server (a killed command's own
    temporary server would die with it anyway; the state that matters is the workspace)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MANGAKA_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]  # set by the cluster fixture
    return env


def kill_after_markers(args: list[str], cwd: Path, env: dict[str, str], markers: Path, at: int) -> int:
    """Run the CLI; SIGKILL its whole process group (server, cluster and all) once ``at`` markers exist."""
    proc = start_cli(args, cwd, env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if markers.exists() and len([p for p in markers.iterdir() if p.suffix == ".json"]) >= at:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len([p for p in markers.iterdir() if p.suffix == ".json"]) if markers.exists() else 0


@pytest.fixture()
def corpus_ws(cluster: str, tmp_path: Path) -> Path:
    """A workspace with 64 ingested synth portraits at 128 px, shards of 4 (16 shards)."""
    write_synth_shard(str(tmp_path / "c"), seed=31, size=128, start=0, stop=64, annotated=0)
    ws = tmp_path / "base"
    ingest_images(workspace=str(ws), src=str(tmp_path / "c" / "images"), options=IngestOptions(size=128), shard_size=4)
    return ws


def test_killed_render_lineart_resumes_to_the_bytes_of_an_uninterrupted_run(corpus_ws: Path, tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    shutil.copytree(corpus_ws, killed)
    shutil.copytree(corpus_ws, whole)
    args = ["render-lineart", "--method", "xdog"]
    markers = killed / "_meta" / "markers" / "corpus" / "lineart" / "xdog"
    done = kill_after_markers(["--workspace", str(killed), *args], tmp_path, env, markers, at=3)
    assert 0 < done < 16, done  # killed mid-run, shards in flight
    for ws in (killed, whole):
        r = subprocess.run(
            [*MANGAKA, "--workspace", str(ws), *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    assert data_digest(killed, "corpus/lineart") == data_digest(whole, "corpus/lineart")
    a, b = Workspace(str(killed)), Workspace(str(whole))
    assert marker_versions(a, "corpus/lineart/xdog") == marker_versions(b, "corpus/lineart/xdog")
    assert len(marker_versions(a, "corpus/lineart/xdog")) == 16
    assert not [p for p in killed.rglob(".tmp-*")]


def test_a_worker_killed_mid_shard_loses_and_duplicates_nothing(
    corpus_ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client

    from flows.runtime import DASK_ADDRESS_ENV, local_cluster

    reference = tmp_path / "reference"
    shutil.copytree(corpus_ws, reference)
    render_lineart(workspace=str(reference), method="canny")  # on the session's cluster, undisturbed

    killed: list[str] = []
    with local_cluster(n_workers=2) as two, Client(two.scheduler_address) as client:
        pids = client.run(os.getpid)
        monkeypatch.setenv(DASK_ADDRESS_ENV, two.scheduler_address)
        stop = threading.Event()

        def assassin() -> None:
            while not stop.is_set():
                processing = client.processing().items()
                busy = {w: ts for w, ts in processing if any("lineart_shard" in str(t) for t in ts)}
                if busy:
                    victim = sorted(busy)[0]
                    os.kill(pids[victim], signal.SIGKILL)
                    killed.append(victim)
                    return
                time.sleep(0.005)

        watcher = threading.Thread(target=assassin, daemon=True)
        watcher.start()
        try:
            r = render_lineart(workspace=str(corpus_ws), method="canny")
        finally:
            stop.set()
            watcher.join(timeout=10)
    assert killed, "no shard was caught in flight"
    assert r["rendered"] == 64 and r["shards"] == 16
    a, b = Workspace(str(corpus_ws)), Workspace(str(reference))
    assert marker_versions(a, "corpus/lineart/canny") == marker_versions(b, "corpus/lineart/canny")
    assert np.array_equal(a.array("corpus/lineart/canny")[:], b.array("corpus/lineart/canny")[:])
    assert data_digest(corpus_ws, "corpus/lineart") == data_digest(reference, "corpus/lineart")


@pytest.mark.slow
@pytest.mark.parametrize("at", [1, 5])
def test_killed_pseudolabel_resumes_to_the_bytes_of_an_uninterrupted_run(
    corpus_ws: Path, tmp_path: Path, at: int
) -> None:
    from tasks.segment import TrainOptions, train_unet
    from tests.tasks.test_segment import tiny_workspace

    trained = tiny_workspace(tmp_path / "trained", n=8)
    train_unet(trained, TrainOptions(epochs=1, batch_size=4, val_fraction=0.3))
    env = cli_env(tmp_path)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    for ws in (killed, whole):
        shutil.copytree(corpus_ws, ws)
        shutil.copytree(Path(trained.url) / "models", ws / "models")
        cfg: dict[str, Any] = Workspace(str(ws)).config()
        Workspace(str(ws)).update_config(classes=Workspace(trained.url).classes or cfg.get("classes"))
    markers = killed / "_meta" / "markers" / "corpus" / "masks"
    done = kill_after_markers(["--workspace", str(killed), "pseudolabel"], tmp_path, env, markers, at=at)
    assert done < 16, done
    for ws in (killed, whole):
        r = subprocess.run(
            [*MANGAKA, "--workspace", str(ws), "pseudolabel"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    for prefix in ("corpus/masks", "corpus/confidence"):
        assert data_digest(killed, prefix) == data_digest(whole, prefix), prefix
