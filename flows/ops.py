"""What every mangaka flow and shard task shares as an operated service.

- :func:`mangaka_flow`: a Prefect flow on the run's Dask cluster (:class:`MangakaTaskRunner`),
  with a run name that says what it does, a workspace lease (one run of a flow per
  workspace at a time, see ``storage.lease``), a run record in the workspace
  (``_meta/runs/``, read by ``mangaka status``) and an on-failure hook that says what
  failed and how to resume.
- :func:`shard_task`: a Prefect task for one shard, retried with exponential backoff and
  jitter on transient errors only (a bad file is quarantined by the task itself and is
  never retried; a bug fails at once).

Fencing: while a flow holds its lease, the lease's :class:`~storage.lease.Fence` is active
in the flow (every write of the flow process checks it) and travels with every shard task
that :func:`flows.shards.run_shards` maps (an unmapped ``fence`` argument that the
:func:`shard_task` wrapper takes and activates around the shard function on the Dask
worker). A run whose lease was taken over, or could not be renewed within its ttl, meets
:class:`~storage.lease.LeaseLost` (never retried) at its next write instead of writing.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import Task, exponential_backoff

from flows.runtime import MangakaTaskRunner, unjoined_heartbeats
from storage.lease import DEFAULT_TTL, Fence, LeaseLost, WorkspaceLease, fencing
from storage.workspace import Workspace, now_iso

log = logging.getLogger("flows")
unjoined_heartbeats()

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

LEASE_WAIT_ENV = "MANGAKA_LEASE_WAIT"
# Seconds without a landed renewal after which a lease is stale (renewed every ttl/4).
LEASE_TTL_ENV = "MANGAKA_LEASE_TTL"

# -- transient errors ------------------------------------------------------------------

TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
    errno.ENETRESET,
    errno.ENETUNREACH,
    errno.EPIPE,
    errno.ETIMEDOUT,
}
TRANSIENT_WORDS = (
    "slowdown",
    "slow down",
    "reduce your request rate",
    "throttl",
    "service unavailable",
    "internal error",
    "internalerror",
    "requesttimeout",
    "connection reset",
    "connection refused",
    "connection closed",
    "connection aborted",
    "server disconnected",
    "timed out",
    "temporarily unavailable",
    "broken pipe",
)
TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "500",
    "502",
    "503",
    "504",
}
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)


def is_transient(exc: BaseException | None) -> bool:
    """True for errors that a later attempt may not meet: network, throttling, 5xx, timeouts.

    A missing file, a refused permission, a bad value or a bug is permanent however it is
    worded (a file named ``s-000503.jpg`` is not a 503).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, LeaseLost):  # another run holds the workspace now: never retry
            return False
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return True
        response = getattr(exc, "response", None)
        if isinstance(response, dict):  # botocore's ClientError
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in TRANSIENT_CODES or status in (500, 502, 503, 504)
        if isinstance(exc, PERMANENT):
            return False
        name = type(exc).__name__.lower()
        if any(w in name for w in ("timeout", "connection", "throttl", "slowdown", "serverdisconnected")):
            return True
        text = str(exc).lower()
        if any(w in text for w in TRANSIENT_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed shard only when its error was transient."""
    try:
        state.result(raise_on_failure=True)
    except Exception as exc:  # the shard's own exception, re-raised by Prefect
        transient = is_transient(exc)
        if not transient:
            log.warning("%s failed with a permanent error, not retrying: %s", task_run.name, exc)
        return transient
    return False


def shard_task(name: str, retries: int = 4) -> Callable[[Callable[..., R]], Task[..., R]]:
    """Decorate a shard function as a Prefect task: transient errors retried with backoff.

    The task also takes an optional keyword ``fence`` (a :class:`~storage.lease.Fence`,
    passed by :func:`flows.shards.run_shards`): the lease of the flow that submitted it,
    checked before the shard starts and, through ``storage.location``, before every write
    the shard makes. Without one the task runs under whatever fence its caller has.

    No Prefect task timeout: shard tasks run in Dask worker threads, where Prefect cannot
    interrupt them. Time limits live where the waiting happens: every S3 request has a
    connect and a read timeout (``storage.location.s3_storage_options``), so a hung
    connection becomes a transient error that is retried here.
    """

    def wrap(fn: Callable[..., R]) -> Task[..., R]:
        @functools.wraps(fn)
        def fenced(*args: Any, fence: Fence | None = None, **kwargs: Any) -> Any:
            with fencing(fence):
                if fence is not None:
                    fence.check()  # a lost run starts no new shard
                return fn(*args, **kwargs)

        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        keyword = inspect.Parameter("fence", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Fence | None)
        at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
        fenced.__signature__ = sig.replace(parameters=[*params[:at], keyword, *params[at:]])  # type: ignore[attr-defined]

        def several(specs: list[Any], fence: Fence | None = None) -> dict[str, list[Any]]:
            """The shards of ``specs`` one after another, in one task: their results and the
            seconds each took (``flows.shards.run_shards`` sizes the next tasks from them).
            Each shard keeps its own marker, so a retry redoes only what has none."""
            with fencing(fence):
                results, seconds = [], []
                for spec in specs:
                    if fence is not None:
                        fence.check()
                    t0 = time.perf_counter()
                    results.append(fn(spec))
                    seconds.append(round(time.perf_counter() - t0, 4))
                return {"results": results, "seconds": seconds}

        # Dask names a task's key after its function: "lineart_shard_several-<id>"
        several.__name__ = several.__qualname__ = f"{fn.__name__}_several"

        options: dict[str, Any] = {
            "retries": retries,
            "retry_delay_seconds": exponential_backoff(backoff_factor=2),
            "retry_jitter_factor": 0.5,
            "retry_condition_fn": retry_transient,
            "cache_policy": NO_CACHE,
        }
        one = task(name=name, **options)(fenced)
        one.several = task(name=f"{name}s", **options)(several)  # type: ignore[attr-defined]
        return one

    return wrap


# -- flows ------------------------------------------------------------------------------


def _short(value: Any) -> str:
    text = str(value)
    return text.rstrip("/").rsplit("/", 1)[-1] or text


def _run_name(name: str, detail: str) -> Callable[[], str]:
    """A run name from the run's parameters: ``render-lineart xdog on demo-ws``."""

    def make() -> str:
        from prefect.runtime import flow_run

        params = dict(flow_run.parameters or {})
        shown = {k: (_short(v) if k in ("src", "out", "content", "style") else v) for k, v in params.items()}
        try:
            what = detail.format(**shown) if detail else ""
        except (KeyError, IndexError, ValueError):
            what = ""
        where = f" on {_short(params['workspace'])}" if params.get("workspace") else ""
        return " ".join(p for p in (name, what) if p) + where

    return make


def _flow_logger(flow_obj: Any, flow_run: Any) -> logging.LoggerAdapter[logging.Logger] | logging.Logger:
    try:
        from prefect.logging.loggers import flow_run_logger

        return flow_run_logger(flow_run, flow_obj)
    except Exception:  # logging must never hide the failure itself
        return log


def log_failure(flow_obj: Any, flow_run: Any, state: Any) -> None:
    """On-failure hook: one clear message with what failed, where, and how to resume."""
    params = flow_run.parameters or {}
    where = f" on workspace {params['workspace']}" if params.get("workspace") else ""
    _flow_logger(flow_obj, flow_run).error(
        "%s run %r%s %s: %s. Finished shards keep their data and markers; run it again "
        "(same command, or the %s/backfill deployment with the same parameters) to do only what is missing.",
        flow_obj.name,
        flow_run.name,
        where,
        "crashed" if state.is_crashed() else "failed",
        state.message or state.name,
        flow_obj.name,
    )


def _record(ws: Workspace, run_id: str, body: dict[str, Any]) -> None:
    try:
        ws.loc.write_json(f"_meta/runs/{run_id}.json", body)
    except Exception as exc:  # a run record must not fail the run it records
        log.warning("could not record the run in %s: %s", ws.url, exc)


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if hasattr(v, "model_dump"):
            v = v.model_dump(mode="json")
        out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else str(v)
    return out


def mangaka_flow(
    name: str, detail: str = "", lease: bool = True, cluster: bool = True, **flow_kwargs: Any
) -> Callable[[F], Any]:
    """``@mangaka_flow("render-lineart", "{method}")``: a Prefect flow as mangaka runs one.

    ``detail`` formats the run's parameters into its name. Flows with a ``workspace``
    parameter hold the workspace lease ``name`` for the run (``MANGAKA_LEASE_WAIT`` seconds
    to wait for another run's, default 0: refuse; ``MANGAKA_LEASE_TTL`` seconds without a
    renewal before it is stale, default 120) and record the run in ``_meta/runs``. The
    lease's fence is active for the whole run (see the module docstring). ``cluster``:
    whether the command line starts a Dask cluster for it (False: it runs in process).
    """

    def wrap(fn: F) -> Any:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            workspace = bound.arguments.get("workspace")
            if workspace is None or not lease:
                return fn(*args, **kwargs)
            from prefect.runtime import flow_run

            ws = Workspace(str(workspace))
            run_id = str(flow_run.id or f"local-{os.getpid()}-{time.time_ns()}")
            record = {
                "id": run_id,
                "flow": name,
                "name": flow_run.name or name,
                "parameters": _plain(dict(bound.arguments)),
                "state": "RUNNING",
                "start": now_iso("milliseconds"),
            }
            wait = float(os.environ.get(LEASE_WAIT_ENV, "0") or 0)
            ttl = float(os.environ.get(LEASE_TTL_ENV, "") or DEFAULT_TTL)
            lease_run = WorkspaceLease(ws.loc, name, run=str(record["name"]), wait=wait, ttl=ttl)
            with lease_run as held, fencing(held.fence()):
                _record(ws, run_id, record)
                t0 = time.perf_counter()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    record.update(
                        state="FAILED", end=now_iso("milliseconds"), seconds=round(time.perf_counter() - t0, 3)
                    )
                    record["message"] = f"{type(exc).__name__}: {exc}"[:500]
                    _record(ws, run_id, record)
                    raise
                record.update(
                    state="COMPLETED", end=now_iso("milliseconds"), seconds=round(time.perf_counter() - t0, 3)
                )
                _record(ws, run_id, record)
                return result

        # Prefect validates parameters against the wrapper: give it the annotations resolved in
        # the flow's own module (they are strings under ``from __future__ import annotations``).
        resolved = inspect.signature(fn, eval_str=True)
        body.__signature__ = resolved  # type: ignore[attr-defined]
        body.__annotations__ = {p.name: p.annotation for p in resolved.parameters.values()} | {
            "return": resolved.return_annotation
        }
        kwargs: dict[str, Any] = {
            "name": name,
            "flow_run_name": _run_name(name, detail),
            "task_runner": MangakaTaskRunner(),
            "on_failure": [log_failure],
            "on_crashed": [log_failure],
            "validate_parameters": True,
        }
        kwargs.update(flow_kwargs)
        made = flow(**kwargs)(body)
        setattr(made, "mangaka_cluster", cluster)  # noqa: B010 - read by flows.runtime.launch
        return made

    return wrap
