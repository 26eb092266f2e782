"""What every flow shares as an operated service: retries on transient errors only, leases, run records."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from prefect import flow

from flows.ingest import ingest_images
from flows.lineart import render_lineart
from flows.ops import is_transient, shard_task
from storage.lease import LeaseHeld, WorkspaceLease
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
