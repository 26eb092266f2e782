"""Workspace leases (one run of a flow per workspace) and the sweep of killed writers' files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.lease import LeaseHeld, WorkspaceLease, sweep_stale_tmp
from storage.location import Location


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_run_refuses_with_a_clear_message_then_gets_the_lease(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    first = WorkspaceLease(loc, "render-lineart", run="render-lineart xdog on ws")
    first.acquire()
    with pytest.raises(
        LeaseHeld, match=r"another render-lineart run holds .*render-lineart xdog on ws.*MANGAKA_LEASE_WAIT"
    ):
        WorkspaceLease(loc, "render-lineart").acquire()
    with WorkspaceLease(loc, "pseudolabel"):  # another flow is not held up
        pass
    first.release()
    assert not loc.exists("_meta/leases/render-lineart.json")
    with WorkspaceLease(loc, "render-lineart"):
        assert loc.exists("_meta/leases/render-lineart.json")


def test_a_second_run_waits_for_the_first(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    first = WorkspaceLease(loc, "ingest-images")
    first.acquire()
    threading.Timer(1.0, first.release).start()
    t0 = time.monotonic()
    with WorkspaceLease(loc, "ingest-images", wait=30, poll=0.1):
        waited = time.monotonic() - t0
    assert 0.8 < waited < 20


def test_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    body = {
        "name": "x",
        "token": "old",
        "run": "r",
        "host": socket.gethostname(),
        "pid": dead_pid(),
        "heartbeat": time.time(),
    }
    loc.write_json("_meta/leases/x.json", body)
    with WorkspaceLease(loc, "x") as lease:
        assert loc.read_json("_meta/leases/x.json")["token"] == lease.token
    # and a holder elsewhere whose heartbeat stopped longer than the ttl ago
    loc.write_json("_meta/leases/x.json", {**body, "host": "elsewhere", "heartbeat": time.time() - 600})
    with WorkspaceLease(loc, "x", ttl=120):
        pass


def test_the_heartbeat_keeps_a_long_run_alive(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    with WorkspaceLease(loc, "x", ttl=0.4):
        first = loc.read_json("_meta/leases/x.json")["heartbeat"]
        time.sleep(0.6)
        assert loc.read_json("_meta/leases/x.json")["heartbeat"] > first
        with pytest.raises(LeaseHeld):
            WorkspaceLease(loc, "x", ttl=0.4).acquire()


def test_leases_on_s3(bucket: str) -> None:
    loc = Location(f"s3://{bucket}/ws")
    with WorkspaceLease(loc, "pseudolabel"), pytest.raises(LeaseHeld):
        WorkspaceLease(loc, "pseudolabel").acquire()
    assert not loc.exists("_meta/leases/pseudolabel.json")


def test_sweep_removes_only_dead_writers_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "corpus" / "images").mkdir(parents=True)
    host = socket.gethostname()
    dead = root / "corpus" / "images" / f".tmp-{host}-{dead_pid()}-abc123"
    live = root / "corpus" / "images" / f".tmp-{host}-{os.getpid()}-def456"
    other_host = root / "corpus" / f".tmp-otherhost-{dead_pid()}-ghi789"
    data = root / "corpus" / "images" / "c" / "0"
    data.parent.mkdir(parents=True)
    for p in (dead, live, other_host, data):
        p.write_bytes(b"x")
    assert sweep_stale_tmp(Location(str(root))) == 1
    assert not dead.exists() and live.exists() and other_host.exists() and data.exists()


def test_a_killed_write_leaves_a_file_the_next_lease_sweeps(tmp_path: Path) -> None:
    """SIGKILL between the temporary file and its rename; the next run's lease removes it."""
    root = tmp_path / "ws"
    code = (
        f"import os, signal; from storage.location import Location; loc = Location({str(root)!r}); "
        "os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL); loc.write_bytes('corpus/images/c/0', b'data')"
    )
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode == -9
    left = [p.name for p in (root / "corpus" / "images" / "c").iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-")
    with WorkspaceLease(Location(str(root)), "ingest-images"):
        assert list((root / "corpus" / "images" / "c").iterdir()) == []
