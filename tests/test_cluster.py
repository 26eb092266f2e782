"""A real cluster, started the way deploy/README.md says: ``prefect server start``, ``dask
scheduler`` and ``dask worker`` processes. ingest-images and render-lineart run on it with
``--dask-address`` while one worker is SIGKILLed mid-run and another joins; the workspace
ends equal to a run on the command's own LocalCluster. A worker started without
``PREFECT_API_URL`` is refused with a message that says what it needs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage.workspace import Workspace
from tests.conftest import _free_port
from tests.test_cli import MANGAKA
from tests.test_faults import data_digest, marker_versions

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


class Cluster:
    """``dask scheduler`` and ``dask worker`` processes on loopback, each in a process group of its own."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"], env)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        # the Dask config deploy/ gives every scheduler and worker (deploy/hpc is DASK_CONFIG's form)
        env = {**env, "DASK_CONFIG": str(ROOT / "deploy" / "hpc")}
        with open(self.logs / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(BIN / "dask"), *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def worker(self, name: str, env: dict[str, str] | None = None) -> None:
        args = ["worker", self.address, "--nthreads", "1", "--name", name, "--no-dashboard", "--memory-limit", "0"]
        self._start(name, args, env or self.env)

    def kill(self, name: str) -> None:
        """SIGKILL a worker: its nanny and its worker process, no goodbye to the scheduler."""
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def wait_for(self, n: int, timeout: float = 120) -> list[str]:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)
            return sorted(w["name"] for w in client.scheduler_info(n_workers=-1)["workers"].values())

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture()
def real_cluster(prefect_server: dict[str, str], tmp_path: Path) -> Iterator[Cluster]:
    env = {**prefect_server, "PYTHONPATH": str(ROOT)}
    cluster = Cluster(env, tmp_path)
    try:
        cluster.worker("w1")
        cluster.worker("w2")
        cluster.wait_for(2)
        yield cluster
    finally:
        cluster.close()


def _corpus(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"p{i:04d}.png")
    return folder


def _run_killing(
    args: list[str], env: dict[str, str], cwd: Path, cluster: Cluster, markers: Path, victim: str, joiner: str
) -> subprocess.CompletedProcess[str]:
    """Run the command; once 3 shards are marked, SIGKILL ``victim`` and start ``joiner``."""
    proc = subprocess.Popen(
        [*MANGAKA, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if markers.exists() and len(list(markers.iterdir())) >= 3:
            break
        time.sleep(0.005)
    done = len(list(markers.iterdir())) if markers.exists() else 0
    cluster.kill(victim)
    cluster.worker(joiner)
    out, err = proc.communicate(timeout=600)
    assert done < 40, f"the run ended before the worker was killed ({done} shards marked)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow  # ~95 s: `make test-slow` (make test stays within its 20 minutes)
def test_a_real_cluster_with_a_worker_killed_mid_run_gives_the_local_cluster_result(
    real_cluster: Cluster, prefect_server: dict[str, str], tmp_path: Path
) -> None:
    src = _corpus(tmp_path / "src", 640)
    env = {**prefect_server, "PYTHONPATH": str(ROOT), "MANGAKA_SHARDS_PER_TASK": "1"}
    on_cluster, local = tmp_path / "on-cluster", tmp_path / "local"
    ingest = ["ingest-images", str(src), "--size", "16", "--shard-size", "16"]  # 40 shards
    render = ["render-lineart", "--method", "xdog"]
    g = ["--dask-address", real_cluster.address, "--workspace", str(on_cluster)]

    r = _run_killing([*g, *ingest], env, tmp_path, real_cluster, on_cluster / "_meta/markers/corpus/images", "w1", "w3")
    assert r.returncode == 0, r.stderr
    assert "ingested 640 new images" in r.stdout, r.stdout
    r = _run_killing(
        [*g, *render], env, tmp_path, real_cluster, on_cluster / "_meta/markers/corpus/lineart/xdog", "w2", "w4"
    )
    assert r.returncode == 0, r.stderr
    assert "rendered 640 corpus images" in r.stdout, r.stdout
    assert real_cluster.wait_for(2) == ["w3", "w4"]

    for args in (ingest, render):  # the same commands on the command's own LocalCluster
        r = subprocess.run(
            [*MANGAKA, "--workspace", str(local), "--workers", "2", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr

    for prefix in ("corpus/images", "corpus/item", "corpus/lineart"):
        assert data_digest(on_cluster, prefix) == data_digest(local, prefix), prefix
    a, b = Workspace(str(on_cluster)), Workspace(str(local))
    for array in ("corpus/images", "corpus/lineart/xdog"):
        assert marker_versions(a, array) == marker_versions(b, array)
        assert len(marker_versions(a, array)) == 40
    # a worker killed mid-write leaves a temporary file (never data); the next run sweeps it
    r = subprocess.run([*MANGAKA, *g, *render], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "rendered 0 corpus images" in r.stdout, r.stderr
    assert not list(on_cluster.rglob(".tmp-*"))


def test_a_worker_without_the_prefect_api_is_refused_with_what_it_needs(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    env = {**prefect_server, "PYTHONPATH": str(ROOT)}
    cluster = Cluster(env, tmp_path)
    try:
        bare = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
        cluster.worker("bare", bare)
        cluster.wait_for(1)
        src = str(_corpus(tmp_path / "src", 8))
        r = subprocess.run(
            [*MANGAKA, "--dask-address", cluster.address, "--workspace", str(tmp_path / "ws"), "ingest-images", src],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        cluster.close()
    assert r.returncode == 1
    assert "1 of 1 Dask worker(s)" in r.stderr and "have no PREFECT_API_URL" in r.stderr, r.stderr
    assert "deploy/README.md" in r.stderr
    assert not (tmp_path / "ws" / "corpus" / "images").exists() or not list(
        (tmp_path / "ws" / "_meta" / "markers").rglob("*.json")
    )
