"""The embedded default's Prefect server: one per PREFECT_HOME, kept between commands, stopped on demand or idle."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from flows.apiserver import healthy, read_record
from tests.conftest import _free_port
from tests.test_cli import MANGAKA

ROOT = Path(__file__).resolve().parents[1]


def _env(home: Path, idle: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MANGAKA_"))}
    env.update(PREFECT_HOME=str(home), MANGAKA_API_IDLE=idle, PYTHONPATH=str(ROOT))
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_commands_share_one_kept_server_until_it_is_stopped(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    env = _env(home, "600")
    run = ["--workspace", str(tmp_path / "ws"), "ingest-images", str(src), "--size", "16"]
    first = subprocess.run([*MANGAKA, *run], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    record = read_record(home)
    assert record is not None and healthy(record["url"]) and _alive(record["pid"])
    try:
        again = subprocess.run([*MANGAKA, *run], env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert "0 new images" in again.stdout
        assert read_record(home)["pid"] == record["pid"]  # the same server, not a second one
        said = subprocess.run([*MANGAKA, "api-server"], env=env, capture_output=True, text=True, timeout=60)
        assert record["url"] in said.stdout and str(record["pid"]) in said.stdout
        # both runs are in the kept server's database
        import httpx

        runs = httpx.post(f"{record['url']}/flow_runs/filter", json={}, timeout=10).json()
        assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "COMPLETED"], runs
    finally:
        stop = subprocess.run([*MANGAKA, "api-server", "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert not _alive(record["pid"]) and read_record(home) is None
    said = subprocess.run([*MANGAKA, "api-server"], env=env, capture_output=True, text=True, timeout=60)
    assert "no kept Prefect server" in said.stdout


def test_a_kept_server_stops_itself_when_idle(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(tmp_path, "1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.apiserver", "--port", str(port), "--idle", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + 180
        while not healthy(url) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert healthy(url)
        assert proc.wait(timeout=60) == 0  # no request for a second: it ends by itself, cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
