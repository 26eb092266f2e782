"""The operator's path: a real Prefect server, ``mangaka serve``, backfills through the API, the UI.

A real ``prefect server start`` on loopback, a real ``mangaka serve`` process; the test
launches deployments through the API exactly as the UI's "Run" button does, watches them
through their artifacts and logs, opens the flow run's page in headless Chromium, opens
the report, and stops the server process to see its schedules paused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import MANGAKA

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _wait(what: str, check: Any, timeout: float = 120.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _wait_or_none(check: Any, timeout: float, every: float = 0.5) -> Any:
    with contextlib.suppress(AssertionError):
        return _wait("", check, timeout, every)
    return None


@pytest.fixture(scope="module")
def server(prefect_server: dict[str, str]) -> dict[str, str]:
    """The suite's real Prefect server (tests/conftest.py); yields the env to reach it."""
    return prefect_server


@pytest.fixture(scope="module")
def served(server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``mangaka serve`` on a fresh workspace whose nightly source is a synth corpus."""
    from tasks.synth import write_synth_shard

    tmp = tmp_path_factory.mktemp("served")
    write_synth_shard(str(tmp / "c"), seed=3, size=64, start=0, stop=24, annotated=0)
    env = {**server, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*MANGAKA, "--workspace", "ws", "serve", "--src", "c/images", "--cron", "0 4 * * *", "--gpu-limit", "1"],
        cwd=tmp,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    info = {
        "proc": proc,
        "tmp": tmp,
        "ws": tmp / "ws",
        "src": str(tmp / "c" / "images"),
        "url": server["PREFECT_API_URL"],
    }
    try:
        from flows.serve import workspace_flows

        names = ["build-dataset/nightly", *(f"{f}/backfill" for f in workspace_flows())]
        with api(info):
            _wait(
                "the served deployments", lambda: all(_deployment(n) is not None for n in names), timeout=180, every=2
            )
        yield info
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def api(info: dict[str, Any]) -> Any:
    """Point this process's Prefect client at the test server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: info["url"]})


def _deployment(name: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _run(name: str, parameters: dict[str, Any]) -> Any:
    """Launch a deployment as the UI's Run button does, and wait for the flow run to end."""
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, timeout=300)
    assert run.state is not None and run.state.is_completed(), (run.name, run.state)
    return run


def test_serve_registers_the_nightly_schedule_and_every_backfill(served: dict[str, Any]) -> None:
    from flows.serve import workspace_flows

    with api(served):
        nightly = _deployment("build-dataset/nightly")
        assert not nightly.paused
        (schedule,) = nightly.schedules
        assert schedule.active and schedule.schedule.cron == "0 4 * * *" and schedule.schedule.timezone == "UTC"
        assert nightly.parameters == {"workspace": str(served["ws"]), "src": served["src"]}
        for flow_name in (
            "ingest-images",
            "pseudolabel",
            "render-lineart",
            "render-style",
            "train-gaugan",
            *workspace_flows(),
        ):
            d = _deployment(f"{flow_name}/backfill")
            assert d is not None, flow_name
            assert d.parameters == {"workspace": str(served["ws"])}
            assert "workspace" in d.parameter_openapi_schema["properties"]
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            limit = client.read_concurrency_limit_by_tag("gpu")
        assert limit.concurrency_limit == 1


def test_backfills_from_the_api_fill_the_workspace_with_artifacts_logs_and_a_report(served: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    from storage.workspace import Workspace

    ws = Workspace(str(served["ws"]))
    with api(served):
        build = _run(
            "build-dataset/backfill",
            {"stages": ["ingest-images", "render-lineart"], "src": served["src"], "shard_size": 8},
        )
        assert build.name == "build-dataset on ws"
        assert len(ws.markers("corpus/images")) == 3
        assert len(ws.markers("corpus/lineart/xdog")) == 3 and len(ws.markers("corpus/lineart/canny")) == 3
        reports = sorted(served["ws"].glob("reports/*/index.html"))
        assert len(reports) == 1
        page = reports[0].read_text()
        assert "render-lineart xdog" in page and "corpus.png" in page and "Quarantine (0)" in page
        assert (reports[0].parent / "corpus.png").stat().st_size > 1000

        # a backfill of one stage on a slice, forced: it redoes exactly that shard
        before = ws.markers("corpus/lineart/canny")
        run = _run("render-lineart/backfill", {"method": "canny", "shards": "1:2", "force": True})
        assert run.name == "render-lineart canny on ws"
        after = ws.markers("corpus/lineart/canny")
        assert after[0] == before[0] and after[2] == before[2] and after[1]["written"] >= before[1]["written"]

        with get_client(sync_client=True) as client:
            arts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            )
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        by_type = {a.type: a for a in arts}
        assert by_type["progress"].key == "lineart-canny-progress" and float(by_type["progress"].data) == 100.0
        assert "table" in by_type
        assert any("1 shard task(s)" in log.message for log in logs), [log.message for log in logs]

    runs = {r["name"]: r for r in ws.runs()}
    assert runs["render-lineart canny on ws"]["state"] == "COMPLETED"


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("MANGAKA_REQUIRE_BROWSER"), reason="no Chromium")
def test_the_ui_shows_the_completed_run(served: dict[str, Any]) -> None:
    """Headless Chromium renders the flow run's page of the Prefect UI: its name and state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    assert CHROMIUM is not None, "Chromium is required here (.ci/run installs Debian's chromium)"
    with api(served), get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["render-lineart canny on ws"])), limit=1
        )
    page = served["url"].removesuffix("/api") + f"/runs/flow-run/{run.id}"
    shot = served["tmp"] / "flow-run.png"
    profile = served["tmp"] / "chromium-profile"
    base = [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000"]
    subprocess.run([*base, "--window-size=1400,900", f"--screenshot={shot}", page], capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    assert "render-lineart canny on ws" in dom
    assert "Completed" in dom
    assert "Can't connect to Server API" not in dom


def test_stopping_serve_pauses_its_schedules(served: dict[str, Any]) -> None:
    proc = served["proc"]
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    with api(served):
        paused = _wait_or_none(lambda: _deployment("build-dataset/nightly").paused, timeout=30)
    log = (served["tmp"] / "serve.log").read_text(errors="replace")
    assert paused, f"the nightly schedule is still active after serve stopped; serve's log ends:\n{log[-3000:]}"
