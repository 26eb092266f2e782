"""The run-time every command shares: one Prefect API and one Dask cluster per run.

Prefect without a configured server starts a temporary one in each process that needs it,
and every Dask worker process would then start its own (~15 s each, and runs scattered over
several databases). So the command-line process starts at most one server, exports its
address as ``PREFECT_API_URL`` *before* any worker process exists, and every worker inherits
it. With ``PREFECT_API_URL`` already set (``mangaka serve``, a cluster, CI) nothing is
started.

Nothing here computes; this module must never import ``tasks`` or ``models``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """What every flow needs to know about where it runs (the CLI's global options)."""

    workspace: str
    dask_address: str | None = None
    device: str = "auto"
    n_workers: int | None = None


def _ensure_prefect_home() -> None:
    # Task modules log through the standard library; Prefect forwards these loggers to the
    # run's logs in the UI when they are named here (workers inherit the variable).
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,storage")
    # The machine may have no route out; a local server must not try to phone home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home)


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the Prefect API URL for this run, starting one local server if none is set."""
    _ensure_prefect_home()
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    log.info("starting a local Prefect server (set PREFECT_API_URL to use your own)")
    server.start(timeout=120)
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        yield server.api_url
    finally:
        # Logs are shipped to the API in batches: flush them while the server still runs.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def quiet_dask() -> None:
    """Dask logs every worker start and stop at INFO; operators need its warnings only."""
    import distributed  # noqa: F401 - its import configures these loggers

    for name in (
        "distributed",
        "distributed.scheduler",
        "distributed.nanny",
        "distributed.core",
        "distributed.worker",
        "distributed.http.proxy",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


@contextlib.contextmanager
def dask_address(config: RunConfig) -> Iterator[str]:
    """Yield a Dask scheduler address: the given one, or a LocalCluster's for this run.

    Workers are processes with one thread each (PIL, zstd and torch each use their own
    threads; one task per core avoids oversubscription). Call inside :func:`prefect_api` so
    the workers inherit ``PREFECT_API_URL``.
    """
    if config.dask_address:
        yield config.dask_address
        return
    from distributed import LocalCluster

    quiet_dask()
    n = config.n_workers or default_workers()
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.WARNING,
        # A worker must never be killed for memory mid-shard on a small laptop: shards are
        # sized so that a task's peak is bounded (see docs/ARCHITECTURE.md).
        memory_limit=0,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@contextlib.contextmanager
def session(config: RunConfig) -> Iterator[str]:
    """One Prefect API and one Dask cluster for a whole command; yields the Dask address."""
    with prefect_api(), dask_address(config) as address:
        os.environ[DASK_ADDRESS_ENV] = address
        try:
            yield address
        finally:
            os.environ.pop(DASK_ADDRESS_ENV, None)


DASK_ADDRESS_ENV = "MANGAKA_DASK_ADDRESS"


def run_flow(flow_obj, /, **params):  # noqa: ANN001, ANN201 - any Prefect flow
    """Call ``flow_obj`` with the run's Dask cluster as its task runner.

    The address comes from ``session`` (via ``MANGAKA_DASK_ADDRESS``), so sub-flows of
    ``build`` share the one cluster; without it (a served deployment) Prefect's
    DaskTaskRunner starts a LocalCluster for the flow run.
    """
    from prefect_dask import DaskTaskRunner

    address = os.environ.get(DASK_ADDRESS_ENV)
    runner = (
        DaskTaskRunner(address=address)
        if address
        else DaskTaskRunner(
            cluster_kwargs={"n_workers": default_workers(), "threads_per_worker": 1, "dashboard_address": None}
        )
    )
    return flow_obj.with_options(task_runner=runner)(**params)


def gpu_workers() -> int:
    """How many workers of the run's Dask cluster advertise a ``GPU`` resource.

    GPU tasks are pinned to those (``dask worker --resources GPU=1``); on a cluster
    without any, the same tasks run anywhere, on the CPU.
    """
    address = os.environ.get(DASK_ADDRESS_ENV)
    if not address:
        return 0
    from distributed import Client

    with Client(address, timeout=30) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        return sum(1 for w in workers if w.get("resources", {}).get("GPU", 0) > 0)
