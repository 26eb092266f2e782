"""mangaka's Dask task runner: what a worker keeps between the Prefect task runs it hydrates."""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.runtime import SETTINGS_KEY, MangakaTaskRunner, keyed_context, worker_contexts


@task
def probe(i: int) -> dict[str, Any]:
    from prefect.context import SyncClientContext, TaskRunContext, get_settings_context

    ctx = SyncClientContext.get()
    return {
        "i": i,
        "pid": os.getpid(),
        "client": None if ctx is None else id(ctx.client),
        "api": str(get_settings_context().settings.api.url),
        "task_run": str(TaskRunContext.get().task_run.id),  # type: ignore[union-attr]
    }


@flow(task_runner=MangakaTaskRunner())
def probing(n: int) -> list[dict[str, Any]]:
    return [f.result() for f in probe.map(list(range(n)))]


def test_a_worker_reuses_one_api_client_for_the_task_runs_of_one_set_of_settings(cluster: str) -> None:
    state = probing(8, return_state=True)
    got = state.result()
    assert sorted(r["i"] for r in got) == list(range(8))
    assert len({r["task_run"] for r in got}) == 8  # every task run its own
    assert {r["api"] for r in got} == {os.environ["PREFECT_API_URL"].rstrip("/")}
    by_worker: dict[int, set[Any]] = {}
    for r in got:
        by_worker.setdefault(r["pid"], set()).add(r["client"])
    assert os.getpid() not in by_worker  # they ran on the cluster's workers
    assert all(None not in clients and len(clients) == 1 for clients in by_worker.values()), by_worker
    # and each of them is a real, finished task run of this flow run in the Prefect API; the
    # server records task runs from their events, a moment after the flow run has returned
    ours = {r["task_run"] for r in got}
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = {str(r.id): r for r in client.read_task_runs(flow_run_filter=flow_run)}
        done = {i for i in ours if i in runs and runs[i].state is not None and runs[i].state.is_completed()}
        if done == ours or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done == ours, {i: runs[i].state if i in runs else None for i in ours - done}


def test_other_settings_get_their_own_client_and_the_oldest_is_closed() -> None:
    from prefect.context import SyncClientContext, get_settings_context, serialize_context
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, temporary_settings

    from flows import runtime

    runtime._worker_local.__dict__.pop("held", None)
    clients = []
    contexts = []
    for timeout in (61.0, 62.0, 61.0, 63.0, 64.0, 65.0, 61.0):
        with temporary_settings(updates={PREFECT_API_REQUEST_TIMEOUT: timeout}):
            contexts.append(keyed_context(serialize_context()))
    for context in contexts:
        with worker_contexts(context) as rest:
            assert SETTINGS_KEY not in rest and "settings_context" not in rest
            clients.append(SyncClientContext.get().client)  # type: ignore[union-attr]
            timeouts = get_settings_context().settings.api.request_timeout
            assert timeouts == context["settings_context"]["settings"]["api"]["request_timeout"]
    assert SyncClientContext.get() is None  # nothing left set outside
    first, second, again, *_rest, last = clients
    assert again is first and second is not first  # the same settings, the same client
    assert last is not first  # 61 s was the oldest of five sets when 65 s came: it was dropped
    assert first._closed and not last._closed
    assert len(runtime._worker_local.held) == runtime.HELD_SETTINGS
