"""Workspace leases (one run of a flow per workspace), fencing, and the sweep of killed writers' files."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage import identity
from storage import lease as lease_mod
from storage.identity import machine_digest, machine_identity, process_start, tmp_prefix
from storage.lease import (
    LeaseHeld,
    LeaseLost,
    WorkspaceLease,
    fencing,
    generation_key,
    generations,
)
from storage.location import Location
from storage.sweep import sweep_stale_tmp
from storage.workspace import Workspace, image_spec

HOURS = 3600.0


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def holder(**over: Any) -> dict[str, Any]:
    """A lease body as another run would have written it (this machine, a dead process)."""
    body: dict[str, Any] = {
        "name": "x",
        "token": "other-run",
        "run": "r",
        **machine_identity(),
        "pid": dead_pid(),
        "pid_start": "1",
        "heartbeat": time.time(),
        "beats": 3,
        "released": False,
    }
    body.update(over)
    return body


def age_file(loc: Location, key: str, seconds: float) -> None:
    p = loc.path(key)
    st = os.stat(p)
    os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def wait_for(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


# -- holding, waiting, releasing -------------------------------------------------------------


def test_a_second_run_refuses_with_a_clear_message_then_gets_the_lease(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    first = WorkspaceLease(loc, "render-lineart", run="render-lineart xdog on ws")
    first.acquire()
    assert first.key == "_meta/leases/render-lineart/000000000001.json"
    with pytest.raises(
        LeaseHeld, match=r"another render-lineart run holds .*render-lineart xdog on ws.*MANGAKA_LEASE_WAIT"
    ):
        WorkspaceLease(loc, "render-lineart").acquire()
    with WorkspaceLease(loc, "pseudolabel"):  # another flow is not held up
        pass
    first.release()
    # released, never deleted: generation numbers only grow
    assert loc.read_json(first.key)["released"] is True
    assert WorkspaceLease(loc, "render-lineart").current() is None
    with WorkspaceLease(loc, "render-lineart") as second:
        assert second.generation == 2
        held = second.current()
        assert held is not None and held["token"] == second.token and held["generation"] == 2
    # releasing generation 2 removed the ones below it
    assert sorted(generations(loc, "render-lineart")) == [2]


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
    # a holder on this machine, in this PID namespace, whose process is gone: at once
    loc.create_json(generation_key("x", 1), holder())
    with WorkspaceLease(loc, "x") as lease:
        assert lease.generation == 2
        assert loc.read_json(lease.key)["token"] == lease.token
    # a holder elsewhere whose heartbeat (its file's mtime) stopped longer than the ttl ago
    loc.create_json(generation_key("x", 3), holder(host="elsewhere", boot_id="b", pidns="1"))
    age_file(loc, generation_key("x", 3), 600)
    with WorkspaceLease(loc, "x", ttl=120) as lease:
        assert lease.generation == 4


def test_an_old_single_file_lease_counts_as_generation_zero(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    old = {"name": "x", "token": "old", "run": "old run", "host": socket.gethostname(), "pid": dead_pid()}
    loc.write_json("_meta/leases/x.json", {**old, "heartbeat": time.time()})
    # an old body names no machine identity: its absent pid proves nothing, its heartbeat counts
    with pytest.raises(LeaseHeld, match="old run.*generation 0"):
        WorkspaceLease(loc, "x").acquire()
    assert WorkspaceLease(loc, "x").current() is not None  # `mangaka status` still sees it
    age_file(loc, "_meta/leases/x.json", 600)
    with WorkspaceLease(loc, "x") as lease:
        assert lease.generation == 1
    assert not loc.exists("_meta/leases/x.json")


def test_the_heartbeat_keeps_a_long_run_alive(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    with WorkspaceLease(loc, "x", ttl=0.4) as lease:
        first = loc.mtime(lease.key)
        assert first is not None
        time.sleep(0.6)
        assert loc.read_json(lease.key)["beats"] >= 2
        assert (loc.mtime(lease.key) or 0) > first
        with pytest.raises(LeaseHeld):
            WorkspaceLease(loc, "x", ttl=0.4).acquire()
        assert not lease.lost


def test_leases_on_s3(bucket: str) -> None:
    loc = Location(f"s3://{bucket}/ws")
    with WorkspaceLease(loc, "pseudolabel") as lease, pytest.raises(LeaseHeld):
        assert loc.exists("_meta/leases/pseudolabel/000000000001.json")
        WorkspaceLease(loc, "pseudolabel").acquire()
    assert loc.read_json(lease.key)["released"] is True
    with WorkspaceLease(loc, "pseudolabel") as again:
        assert again.generation == 2
    assert sorted(generations(loc, "pseudolabel")) == [2]
    assert not [k for k in loc.list("_meta/leases/pseudolabel") if ".clock-" in k]  # probes are deleted


# -- renewal and fencing -------------------------------------------------------------------------


def test_renewal_survives_transient_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    loc = Location(str(tmp_path / "ws"))
    lease = WorkspaceLease(loc, "x", ttl=1.0)  # a beat every 0.25 s
    lease.acquire()
    try:
        real = loc.write_json
        failed: list[str] = []

        def flaky(key: str, obj: Any) -> None:
            if len(failed) < 2:
                failed.append(key)
                raise ConnectionResetError("connection reset by peer (injected)")
            real(key, obj)

        with caplog.at_level(logging.WARNING, logger="storage.lease"):
            monkeypatch.setattr(loc, "write_json", flaky)
            assert wait_for(lambda: len(failed) == 2)
            # the heartbeat resumes once the errors stop, and the lease was never lost
            assert wait_for(lambda: loc.read_json(lease.key)["beats"] >= 1, timeout=5)
        assert lease._thread is not None and lease._thread.is_alive()
        assert not lease.lost
        assert any("could not renew the x lease" in r.getMessage() for r in caplog.records)
        with fencing(lease.fence()):
            loc.write_json("_meta/markers/a/000000.json", {"ok": 1})
    finally:
        lease.release()


def test_a_holder_whose_renewals_fail_longer_than_the_ttl_stops_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = Location(str(tmp_path / "ws"))
    lease = WorkspaceLease(loc, "x", ttl=0.6)
    lease.acquire()

    def broken(key: str, obj: Any) -> None:
        raise ConnectionResetError("the storage is unreachable (injected)")

    monkeypatch.setattr(loc, "write_json", broken)
    assert wait_for(lambda: lease.lost, timeout=5)
    assert "not renewed" in str(lease.lost_reason)
    with fencing(lease.fence()), pytest.raises(LeaseLost, match="not renewed"):
        loc.write_bytes("_meta/markers/a/000000.json", b"{}")
    assert not loc.exists("_meta/markers/a/000000.json")
    monkeypatch.undo()
    lease.release()


def test_a_holder_that_was_taken_over_raises_lease_lost_before_writing(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    ws = Workspace(loc.url)
    ws.ensure_config(shard_size=4)
    arr = ws.require_array("corpus/images", image_spec(4), length=8)
    lease = WorkspaceLease(loc, "x", ttl=0.4)
    lease.acquire()
    fence = lease.fence()
    with fencing(fence):
        ws.write_marker("corpus/images", 0, "v1")  # held: fine
        # another run judged this one stale and took the next generation
        assert loc.create_json(generation_key("x", fence.generation + 1), holder(token="new", pid=os.getpid()))
        with pytest.raises(LeaseLost, match="taken over by generation 2"):
            ws.write_marker("corpus/images", 1, "v1")
        with pytest.raises(LeaseLost):
            ws.write_shard("corpus/images", 1, np.zeros((4, 4, 4, 3), np.uint8))
        with pytest.raises(LeaseLost):
            arr[0] = 1  # zarr's own writes pass the same fence
        with pytest.raises(LeaseLost):
            ws.clear_markers("corpus/images", [0])
        with pytest.raises(LeaseLost):
            loc.create_bytes("_meta/batches/corpus/000001.json", b"{}")
        with pytest.raises(LeaseLost):  # a location inside the workspace is fenced too
            Location(ws.sub_url("sources/synth")).write_bytes("a.png", b"x")
        Location(str(tmp_path / "elsewhere")).write_bytes("a.json", b"{}")  # outside: not fenced
    assert ws.markers("corpus/images").keys() == {0}
    assert wait_for(lambda: lease.lost, timeout=5)  # the renewal thread noticed too
    assert "taken over" in str(lease.lost_reason)
    lease.release()  # leaves the new holder alone
    held = WorkspaceLease(loc, "x").current()
    assert held is not None and held["token"] == "new" and not held.get("released")


def test_fencing_on_s3_covers_location_and_zarr_writes(bucket: str) -> None:
    ws = Workspace(f"s3://{bucket}/ws")
    ws.ensure_config(shard_size=4)
    arr = ws.require_array("corpus/images", image_spec(4), length=8)
    with WorkspaceLease(ws.loc, "x") as lease, fencing(lease.fence()):
        ws.write_marker("corpus/images", 0, "v1")
        arr[0] = 1
        ws.loc.create_json(generation_key("x", 2), holder(token="new", host="elsewhere"))
        with pytest.raises(LeaseLost):
            ws.write_marker("corpus/images", 1, "v1")
        with pytest.raises(LeaseLost):
            arr[1] = 1  # through zarr's event loop: the fence travels with the context
    assert ws.markers("corpus/images").keys() == {0}
    assert int(ws.array("corpus/images")[1].max()) == 0


# -- judging a holder: the storage's clock, and which pid means what -----------------------------


class SkewedTime(types.SimpleNamespace):
    """``time`` as seen by a machine whose wall clock is ``offset`` seconds off."""

    def __init__(self, offset: float) -> None:
        super().__init__(monotonic=time.monotonic, sleep=time.sleep, time=lambda: time.time() + offset)


@pytest.mark.parametrize("skew", [-5 * HOURS, 5 * HOURS])
def test_clock_skew_does_not_change_the_judgement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skew: float) -> None:
    loc = Location(str(tmp_path / "ws"))
    alive = holder(host="elsewhere", boot_id="b", pidns="1", heartbeat=time.time() + skew)
    # the holder's clock is hours off, but its file was just renewed: it is alive
    loc.create_json(generation_key("x", 1), alive)
    with pytest.raises(LeaseHeld, match=r"heartbeat [0-9] s ago"):
        WorkspaceLease(loc, "x").acquire()
    # and the judge's own clock being hours off changes nothing either
    monkeypatch.setattr(lease_mod, "time", SkewedTime(skew))
    with pytest.raises(LeaseHeld):
        WorkspaceLease(loc, "x").acquire()
    # a holder whose heartbeat field says "now" but whose file has not changed for 10 min is stale
    loc.write_json(generation_key("x", 1), {**alive, "heartbeat": time.time()})
    age_file(loc, generation_key("x", 1), 600)
    with WorkspaceLease(loc, "x") as lease:
        assert lease.generation == 2


def test_clock_skew_on_s3_is_judged_on_the_storage_clock(bucket: str) -> None:
    loc = Location(f"s3://{bucket}/ws")
    loc.create_json(generation_key("x", 1), holder(host="elsewhere", heartbeat=time.time() - 5 * HOURS))
    with pytest.raises(LeaseHeld):  # LastModified is seconds old, whatever the body says
        WorkspaceLease(loc, "x", ttl=3).acquire()
    loc.create_json(generation_key("x", 2), holder(host="elsewhere", heartbeat=time.time() + 5 * HOURS))
    time.sleep(4.5)  # longer than the ttl: LastModified is older than that on the server's clock
    with WorkspaceLease(loc, "x", ttl=3) as lease:
        assert lease.generation == 3


def test_another_container_with_the_same_host_name_is_not_judged_gone(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    here = machine_identity()
    for other in ({"boot_id": "another-boot"}, {"pidns": "4026539999"}, {"boot_id": "", "pidns": ""}):
        body = holder(**other)
        assert body["host"] == here["host"] and not identity.pid_alive(body["pid"])
        loc.write_json(generation_key("x", 1), body)
        with pytest.raises(LeaseHeld):
            WorkspaceLease(loc, "x").acquire()
    # the same machine and namespace, the pid alive but started at another time: a reused pid
    loc.write_json(generation_key("x", 1), holder(pid=os.getpid(), pid_start="1"))
    assert process_start(os.getpid()) not in ("", "1")
    with WorkspaceLease(loc, "x") as lease:
        assert lease.generation == 2
    # and the real, live process itself is never judged gone
    loc.write_json(generation_key("x", 3), holder(pid=os.getpid(), pid_start=process_start(os.getpid())))
    with pytest.raises(LeaseHeld):
        WorkspaceLease(loc, "x").acquire()


# -- the sweep of dead writers' temporary files --------------------------------------------------


def test_sweep_removes_only_dead_writers_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    images = root / "corpus" / "images"
    (images / "c").mkdir(parents=True)
    host, mine = socket.gethostname(), machine_digest()
    gone = dead_pid()
    files = {
        "dead": images / f".tmp-{mine}_{gone}_123_abc",
        "live": images / f"{tmp_prefix()}def",
        "reused": images / f".tmp-{mine}_{os.getpid()}_1_ghi",  # our pid, another start time
        "other_container": images / f".tmp-{'0' * 16}_{gone}_5_jkl",
        "other_container_old": images / f".tmp-{'1' * 16}_{gone}_5_mno",
        "legacy_same_host": images / f".tmp-{host}-{gone}-pqr",  # no machine identity: heartbeat rules
        "legacy_old": images / f".tmp-{host}-{gone}-stu",
        "zarr_partial": images / "c" / f"0.{'a' * 32}.partial",
        "zarr_partial_old": images / f"zarr.{'b' * 32}.partial",
        "data": images / "c" / "0",
    }
    for p in files.values():
        p.write_bytes(b"x")
    for name in ("other_container_old", "legacy_old", "zarr_partial_old"):
        st = files[name].stat()
        os.utime(files[name], (st.st_atime - 600, st.st_mtime - 600))
    assert sweep_stale_tmp(Location(str(root)), ttl=120) == 5
    kept = {name for name, p in files.items() if p.exists()}
    assert kept == {"live", "other_container", "legacy_same_host", "zarr_partial", "data"}


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
    assert len(left) == 1 and left[0].startswith(f".tmp-{machine_digest()}_")
    with WorkspaceLease(Location(str(root)), "ingest-images") as held:
        held.swept()  # the sweep runs beside the run, from the moment the lease is taken
        assert list((root / "corpus" / "images" / "c").iterdir()) == []


def test_status_still_tells_a_running_run_from_an_interrupted_one(tmp_path: Path) -> None:
    from tasks.status import last_runs

    ws = Workspace(str(tmp_path / "ws"))
    record = {"id": "a", "flow": "x", "name": "x on ws", "state": "RUNNING", "start": "2026-01-01T00:00:00+00:00"}
    ws.loc.write_json("_meta/runs/a.json", record)
    with WorkspaceLease(ws.loc, "x", run="x on ws"):
        assert [r["state"] for r in last_runs(ws)] == ["RUNNING"]
    # killed (a process of this machine that is gone), its lease never released
    ws.loc.write_json(generation_key("x", 2), holder(run="x on ws"))
    assert [r["state"] for r in last_runs(ws)] == ["INTERRUPTED"]


def test_a_killed_writer_not_yet_reaped_counts_as_gone(tmp_path: Path) -> None:
    """A SIGKILLed worker stays a zombie until init reaps it (seconds, or for good in a
    container whose PID 1 does not reap): its temporary files are swept all the same."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while identity.process_state(child.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert identity.process_state(child.pid) == "Z"
        start = process_start(child.pid)
        assert start and identity.pid_alive(child.pid)  # a signal still reaches a zombie
        assert not identity.process_running(child.pid, start)
        root = tmp_path / "ws"
        (root / "corpus").mkdir(parents=True)
        left = root / "corpus" / f".tmp-{machine_digest()}_{child.pid}_{start}_abc"
        left.write_bytes(b"x")
        assert sweep_stale_tmp(Location(str(root)), ttl=120) == 1
        assert not left.exists()
    finally:
        child.wait()
