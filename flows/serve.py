"""``mangaka serve``: every flow as a Prefect deployment, served from this process.

- ``build-dataset/nightly``: the whole chain on a cron schedule (default ``0 3 * * *``).
  It is incremental by construction: ingest-images lists the source and skips every file
  already ingested (same place, size and time; then same content hash), new files go to
  new shards, and every later stage does only shards without a marker for its version.
- ``<flow>/backfill`` for every flow that works on a workspace: no schedule, the
  workspace as default parameter and every option of the flow as a form in the UI.

Runs execute in subprocesses of this process (Prefect's Runner), each on the cluster of
``--dask-address`` or on a LocalCluster of its own. GPU shard tasks carry the tag ``gpu``;
``--gpu-limit`` sets the Prefect tag concurrency limit that bounds them across runs.
Stopping the process (Ctrl-C, SIGTERM) pauses its schedules, so nothing is started while
no one serves them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType, RunnerDeployment

log = logging.getLogger("flows")

NIGHTLY_CRON = "0 3 * * *"
GPU_TAG = "gpu"


def workspace_flows() -> dict[str, Any]:
    """Every command's flow that takes a ``workspace`` parameter, by its Prefect name."""
    import inspect

    from flows.cli import COMMANDS
    from flows.cli.options import load

    flows = [load(c.flow) for c in COMMANDS.values() if c.flow and c.name != "demo"]  # demo draws its own corpus
    return {f.name: f for f in flows if "workspace" in inspect.signature(f.fn).parameters}


def deployments(
    workspace: str,
    cron: str = NIGHTLY_CRON,
    timezone: str = "UTC",
    src: str | None = None,
    labelme: str | None = None,
    paused: bool = False,
) -> list[RunnerDeployment]:
    """The nightly build and a backfill deployment per flow, all on ``workspace``."""
    from flows.build import build

    nightly_params: dict[str, Any] = {"workspace": workspace}
    if src:
        nightly_params["src"] = src
    if labelme:
        nightly_params["labelme"] = labelme
    out = [
        build.to_deployment(
            name="nightly",
            schedule=CronSchedule(cron=cron, timezone=timezone),
            parameters=nightly_params,
            paused=paused,
            # one nightly build at a time; a late one waits instead of overlapping
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"),
            description=f"Incremental build of {workspace} at {cron} ({timezone}): new corpus files of "
            f"{src or '(no source given)'} through every stage.",
            tags=["mangaka", "nightly"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    ]
    for name, flow_obj in workspace_flows().items():
        out.append(
            flow_obj.to_deployment(
                name="backfill",
                parameters={"workspace": workspace},
                description=f"{name} on any workspace (default {workspace}) with any of its options; "
                "finished shards are skipped unless force is set.",
                tags=["mangaka", "backfill"],
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return out


def set_gpu_limit(limit: int) -> None:
    """Create or update the ``gpu`` tag concurrency limit (0 removes it)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        with contextlib.suppress(Exception):  # not there yet
            client.delete_concurrency_limit_by_tag(GPU_TAG)
        if limit > 0:
            client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=limit)


def serve(
    workspace: str,
    cron: str = NIGHTLY_CRON,
    timezone: str = "UTC",
    src: str | None = None,
    labelme: str | None = None,
    gpu_limit: int = 1,
    limit: int | None = None,
    dask_address: str | None = None,
) -> None:
    """Register the deployments and serve them until stopped (then their schedules pause)."""
    from prefect import serve as prefect_serve

    from flows.runtime import DASK_ADDRESS_ENV

    if dask_address:
        os.environ[DASK_ADDRESS_ENV] = dask_address
    # Queued runs of one flow on one workspace wait for each other's lease instead of failing.
    os.environ.setdefault("MANGAKA_LEASE_WAIT", "3600")
    set_gpu_limit(gpu_limit)
    deps = deployments(workspace, cron=cron, timezone=timezone, src=src, labelme=labelme)
    log.info("serving %d deployments for %s (nightly at %s %s)", len(deps), workspace, cron, timezone)
    # Prefect pauses the schedules only when its runner has fully started; a SIGTERM that
    # arrives while the deployments are being registered would leave the nightly schedule
    # running with no one to serve it. Until the runner takes over the signal, SIGTERM
    # stops this process like Ctrl-C, and the schedules are paused here either way.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        prefect_serve(*deps, pause_on_shutdown=True, limit=limit, print_starting_message=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        pause_schedules(deps)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pause_schedules(deps: list[RunnerDeployment]) -> None:
    """Pause every scheduled deployment of ``deps`` that is registered (idempotent)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for dep in deps:
            if not dep.schedules:
                continue
            try:
                found = client.read_deployment_by_name(f"{dep.flow_name}/{dep.name}")
                if not found.paused:
                    client.pause_deployment(found.id)
                    log.info("paused the schedule of %s/%s", dep.flow_name, dep.name)
            except Exception as exc:  # noqa: BLE001 - stopping goes on; say what is left running
                log.warning("could not pause %s/%s: %s", dep.flow_name, dep.name, exc)


# -- the command line ---------------------------------------------------------------------
def serve_options(p: argparse.ArgumentParser) -> None:
    """The options of ``mangaka serve``."""
    p.add_argument("--cron", default="0 3 * * *", help="the nightly build's schedule (default 0 3 * * *)")
    p.add_argument("--timezone", default="UTC", help="the schedule's time zone (default UTC)")
    p.add_argument("--src", help="the nightly build's corpus source (new files are ingested)")
    p.add_argument("--labelme", help="the nightly build's labelme folder (corrections are ingested)")
    p.add_argument("--gpu-limit", type=int, default=1, help="GPU shard tasks at once, all runs (0: no limit)")
    p.add_argument("--limit", type=int, help="flow runs at once from this process")


def serve_command(a: argparse.Namespace, config: Any) -> int:
    """``mangaka serve``: check the server, the schedule and the options, then serve until stopped."""
    from flows import UsageError
    from flows.runtime import _ensure_prefect_home

    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError(
            "serve needs a Prefect server: start one (`prefect server start`) and set PREFECT_API_URL, "
            "e.g. http://127.0.0.1:4200/api"
        )
    try:
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=a.cron, timezone=a.timezone)
    except ValueError as exc:
        raise UsageError(f"invalid --cron/--timezone: {str(exc).splitlines()[0]}") from None
    if a.limit is not None and a.limit <= 0:
        raise UsageError(f"--limit must be positive, not {a.limit}")
    _ensure_prefect_home()

    def absolute(url: str | None) -> str | None:
        from storage.location import absolute as absolute_url

        return None if url is None else absolute_url(url)

    serve(
        str(absolute(config.workspace)),
        cron=a.cron,
        timezone=a.timezone,
        src=absolute(a.src),
        labelme=absolute(a.labelme),
        gpu_limit=a.gpu_limit,
        limit=a.limit,
        dask_address=config.dask_address,
    )
    return 0
