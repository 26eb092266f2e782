"""What every flow shares as an operated service: retries on transient errors only, leases, run records."""

from __future__ import annotations

import errno
import inspect
import os
import threading
import time
from pathlib import Path

import pytest
from prefect import flow

from flows.ingest import ingest_images
from flows.lineart import render_lineart
from flows.ops import LEASE_TTL_ENV, is_transient, mangaka_flow, shard_task
from flows.shards import run_shards
from storage.lease import LeaseHeld, LeaseLost, WorkspaceLease, generation_key, generations
from storage.workspace import Workspace
from tasks.ingest import IngestOptions
from tasks.synth import write_synth_shard


def test_transient_errors_are_told_from_permanent_ones() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    slow = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "PutObject")
    unavailable = ClientError({"Error": {"Code": "503", "Message": "Service Unavailable"}}, "GetObject")
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert is_transient(OSError(errno.ECONNRESET, "reset"))
    assert is_transient(slow) and is_transient(unavailable)
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    try:  # a transient cause under another exception still counts
        try:
            raise ConnectionResetError("peer")
        except ConnectionResetError as inner:
            raise RuntimeError("shard 3 failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert not is_transient(denied)
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(ValueError("bad option"))
    assert not is_transient(FileNotFoundError("missing.png"))
    assert not is_transient(FileNotFoundError("s11-000503.jpg"))  # a name is not a status
    assert not is_transient(RuntimeError("shard 500 of corpus/masks failed: KeyError"))
    # a lost lease is permanent however it is worded, and whatever caused the loss
    try:
        try:
            raise ConnectionResetError("connection reset")
        except ConnectionResetError as inner:
            raise LeaseLost("the x lease was not renewed: connection timed out") from inner
    except LeaseLost as lost:
        assert not is_transient(lost)


def test_shard_tasks_keep_their_signature_and_take_a_fence() -> None:
    @shard_task("sig-shard")
    def f(spec: int, scale: int = 2) -> int:
        return spec * scale

    params = inspect.signature(f.fn).parameters
    assert list(params) == ["spec", "scale", "fence"]
    assert params["fence"].kind is inspect.Parameter.KEYWORD_ONLY and params["fence"].default is None
    assert f.fn(3) == 6 and f.fn(3, scale=3, fence=None) == 9


def _take_over(ws: Workspace, name: str, when: Path, then: Path | None = None) -> threading.Thread:
    """Once ``when`` exists, create the next generation of lease ``name`` as another run would."""

    def run() -> None:
        deadline = time.monotonic() + 120
        while not when.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        top = max(generations(ws.loc, name))
        body = {"token": "the-other-run", "run": "the other run", "host": "elsewhere", "pid": 1, "released": False}
        assert ws.loc.create_json(generation_key(name, top + 1), body)
        if then is not None:
            then.touch()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_run_whose_lease_was_taken_over_fails_at_its_next_marker_write(cluster: str, tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    calls, taken = tmp_path / "calls", tmp_path / "taken"
    calls.mkdir()

    @shard_task("two-markers-shard")
    def two_markers(spec: tuple[str, str, str]) -> int:
        url, calls_dir, taken_flag = spec
        Path(calls_dir, f"call-{time.time_ns()}").touch()
        w = Workspace(url)
        w.write_marker("corpus/images", 0, "v1")  # the lease is this run's: written
        deadline = time.monotonic() + 60
        while not os.path.exists(taken_flag) and time.monotonic() < deadline:
            time.sleep(0.02)
        w.write_marker("corpus/images", 1, "v1")  # taken over meanwhile: refused
        return 1

    @mangaka_flow("fence-test")
    def fenced(workspace: str, calls_dir: str, taken_flag: str) -> list[int]:
        return run_shards(two_markers, [(workspace, calls_dir, taken_flag)], "fence-test")

    marker0 = tmp_path / "ws" / "_meta" / "markers" / "corpus" / "images" / "000000.json"
    thief = _take_over(ws, "fence-test", when=marker0, then=taken)
    with pytest.raises(LeaseLost, match="taken over by generation 2"):
        fenced(workspace=ws.url, calls_dir=str(calls), taken_flag=str(taken))
    thief.join(timeout=30)
    assert sorted(ws.markers("corpus/images")) == [0]
    assert len(list(calls.iterdir())) == 1  # a lost lease is not retried
    held = WorkspaceLease(ws.loc, "fence-test").current()
    assert held is not None and held["token"] == "the-other-run"  # the loser did not release it


def test_a_run_that_lost_its_lease_stops_waiting_for_its_shards(
    cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LEASE_TTL_ENV, "1.2")  # renewed every 0.3 s: the loss is seen within a beat
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    started, release = tmp_path / "started", tmp_path / "release"

    @shard_task("stuck-shard")
    def stuck(spec: tuple[str, str, str]) -> int:
        url, started_flag, release_flag = spec
        Path(started_flag).touch()
        deadline = time.monotonic() + 60
        while not os.path.exists(release_flag) and time.monotonic() < deadline:
            time.sleep(0.02)
        Workspace(url).write_marker("corpus/images", 5, "v1")
        return 1

    @mangaka_flow("stuck-test")
    def stuck_flow(workspace: str, started_flag: str, release_flag: str) -> list[int]:
        return run_shards(stuck, [(workspace, started_flag, release_flag)], "stuck-test")

    thief = _take_over(ws, "stuck-test", when=started)
    t0 = time.monotonic()
    try:
        with pytest.raises(LeaseLost, match="taken over"):
            stuck_flow(workspace=ws.url, started_flag=str(started), release_flag=str(release))
        assert time.monotonic() - t0 < 30  # did not wait for the stuck shard
        assert not release.exists()
    finally:
        release.touch()
        thief.join(timeout=30)
    time.sleep(2)  # the shard, let go, meets the fence at its write
    assert ws.markers("corpus/images") == {}


def test_shard_tasks_retry_transient_errors_and_not_permanent_ones(cluster: str, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()

    @shard_task("flaky-shard")
    def flaky(kind: str) -> str:
        n = len(list(calls.glob(f"{kind}-*")))
        (calls / f"{kind}-{n}").touch()
        if kind == "transient" and n < 2:
            raise ConnectionResetError("connection reset by peer")
        if kind == "permanent":
            raise ValueError("this input is wrong and stays wrong")
        return kind

    @flow
    def both() -> tuple[str, str]:
        ok = flaky.submit("transient").result()
        bad = flaky.submit("permanent").result(raise_on_failure=False)
        return ok, type(bad).__name__

    assert both() == ("transient", "ValueError")
    assert len(list(calls.glob("transient-*"))) == 3  # two transient failures, then success
    assert len(list(calls.glob("permanent-*"))) == 1  # never retried


def test_a_second_run_of_a_flow_on_the_same_workspace_is_refused(
    cluster: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_synth_shard(str(tmp_path / "c"), seed=8, size=48, start=0, stop=8, annotated=0)
    ws = Workspace(str(tmp_path / "ws"))
    ingest_images(workspace=ws.url, src=str(tmp_path / "c" / "images"), options=IngestOptions(size=48))
    holder = WorkspaceLease(ws.loc, "render-lineart", run="render-lineart xdog on ws")
    holder.acquire()
    try:
        with pytest.raises(LeaseHeld, match="another render-lineart run holds"):
            render_lineart(workspace=ws.url, method="canny")
        # the on-failure hook says what failed, where, and how to resume
        hook = [r.getMessage() for r in caplog.records if "Finished shards keep their data" in r.getMessage()]
        assert hook and "render-lineart run 'render-lineart canny on ws'" in hook[-1], hook
        assert f"on workspace {ws.url} failed: " in hook[-1] and "LeaseHeld" in hook[-1]
        assert not ws.has_array("corpus/lineart/canny") or not ws.markers("corpus/lineart/canny")
    finally:
        holder.release()
    r = render_lineart(workspace=ws.url, method="canny")
    assert r["rendered"] == 8
    runs = ws.runs()
    assert [x["state"] for x in runs[:2]] == ["COMPLETED", "COMPLETED"]
    assert runs[0]["name"] == "render-lineart canny on ws" and runs[0]["parameters"]["method"] == "canny"


def test_the_nightly_schedule_takes_its_cron_and_time_zone() -> None:
    from flows.serve import deployments, workspace_flows

    deps = deployments("s3://bucket/ws", cron="30 2 * * 1", timezone="Asia/Tokyo", src="s3://bucket/in")
    nightly, *backfills = deps
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("30 2 * * 1", "Asia/Tokyo")
    assert nightly.parameters == {"workspace": "s3://bucket/ws", "src": "s3://bucket/in"}
    assert sorted(d.flow_name for d in backfills) == sorted(workspace_flows())
    assert all(d.name == "backfill" and not d.schedules for d in backfills)
