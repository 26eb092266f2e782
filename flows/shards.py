"""Running shard tasks on Dask from a flow: progress, failures, and a summary artifact.

Every bulk step is ``process_shard(spec) -> result``; this module maps such a Prefect task
over specs, shows progress, and collects failures instead of stopping at the first one, so
one bad shard does not waste the work of the others. The caller decides what a failure
means (the CLI exits 1; a re-run redoes only the shards without a marker).

Under a workspace lease (every ``mangaka_flow`` with a workspace) each shard task gets the
lease's fence as an unmapped argument, and the wait for the shards ends with
:class:`~storage.lease.LeaseLost` as soon as the lease is lost (taken over, or not renewed
within its ttl) or a shard met that error: a run that lost its lease stops, it does not
wait for shards whose writes are refused anyway.
"""

from __future__ import annotations

import inspect
import math
import queue
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prefect import get_run_logger, tags, unmapped
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.tasks import Task
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows import UsageError
from flows.runtime import gpu_workers
from storage.items import ItemTable, item_table
from storage.lease import LeaseLost, WorkspaceLease, active_fence, held_lease
from storage.workspace import Workspace, WorkspaceError, marker_matches
from tasks.shards import ShardResult


class ShardFailures(RuntimeError):
    """Some shards failed after their retries; the others are done and marked."""


def shards_per_task(shards: int, cap: int = 16) -> int:
    """How many shards one task carries for a cheap stage: about one task per worker for a
    small run (a Prefect task costs about 0.3 s of a 2-core machine, as much as ingesting a
    shard of JPEGs), at most ``cap``, so that a large run still spreads and shows progress."""
    from flows.runtime import cluster_workers

    return max(1, min(cap, math.ceil(shards / cluster_workers())))


def run_shards(
    task: Task,
    specs: Sequence[Any],
    label: str,
    resources: dict[str, float] | None = None,
    per_task: int = 1,
) -> list[Any]:
    """Run ``task`` on every spec; return the results; raise ShardFailures if any failed.

    ``per_task`` shards go to one Prefect task (``task.several``, see
    ``flows.ops.shard_task``), one after another, for stages whose shards cost about as
    much as a task; a task that fails fails its shards, and its retry skips those done.

    ``resources`` (``{"GPU": 1}``) pins the tasks to Dask workers that advertise them, and
    tags them ``gpu`` so that a Prefect tag concurrency limit (``mangaka serve --gpu-limit``)
    bounds the GPU work of all runs together. A progress artifact (key ``<label>-progress``)
    is updated as shards finish, and a table artifact sums them up (items, quarantine,
    throughput).
    """
    logger = get_run_logger()
    if not specs:
        logger.info("%s: nothing to do", label)
        return []
    key = artifact_key(f"{label}-progress")
    progress = create_progress_artifact(0.0, key=key, description=f"{label}: shards done, in percent")
    t0 = time.perf_counter()
    fence = active_fence()
    lease = held_lease(fence)
    extra: dict[str, Any] = {"fence": unmapped(fence)} if fence is not None and _takes_fence(task) else {}
    runner, work = task, list(specs)
    if per_task > 1 and len(work) > 1 and hasattr(task, "several"):
        runner = task.several
        work = [list(specs[i : i + per_task]) for i in range(0, len(specs), per_task)]
    if resources:
        import dask

        with dask.annotate(resources=resources), tags(*[r.lower() for r in resources]):
            futures = runner.map(work, **extra)
    else:
        futures = runner.map(work, **extra)
    results: list[Any] = []
    failures: list[str] = []
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        job = bar.add_task(label, total=len(futures))
        for done, fut in enumerate(_as_completed(futures, lease), 1):
            try:
                got = fut.result()
                results.extend(got if runner is not task else [got])
            except LeaseLost:
                _cancel(futures)
                raise
            except Exception as exc:  # a shard's own error, after its retries
                failures.append(f"{exc.__class__.__name__}: {exc}")
            bar.advance(job)
            if progress is not None:
                _update_progress(progress, 100.0 * done / len(futures))
    seconds = time.perf_counter() - t0
    items = sum(int(getattr(r, "ok", 0)) for r in results)
    quarantined = sum(int(getattr(r, "quarantined", 0)) for r in results)
    create_table_artifact(
        key=artifact_key(f"{label}-shards"),
        table=[
            {
                "stage": label,
                "shards": len(specs),
                "tasks": len(futures),
                "failed": len(failures),
                "items": items,
                "quarantined": quarantined,
                "seconds": round(seconds, 2),
                "items_per_second": round(items / seconds, 2) if seconds > 0 else None,
            }
        ],
        description=f"{label}: shards of this run",
    )
    if failures:
        what = "shards" if runner is task else f"tasks of up to {per_task} shards"
        raise ShardFailures(f"{len(failures)} of {len(futures)} {what} of {label} failed; first: {failures[0]}")
    return results


def _takes_fence(task: Task) -> bool:
    """Whether ``task`` takes the ``fence`` argument (every ``flows.ops.shard_task`` does)."""
    try:
        return "fence" in inspect.signature(task.fn).parameters
    except (TypeError, ValueError):
        return False


def _as_completed(futures: list[Any], lease: WorkspaceLease | None) -> Iterator[Any]:
    """The futures as they finish; raises LeaseLost (after cancelling the rest) once ``lease`` is lost."""
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for fut in futures:
        fut.add_done_callback(finished.put)
    poll = None if lease is None else max(0.05, min(2.0, lease.ttl / 8))
    left = len(futures)
    while left:
        try:
            fut = finished.get(timeout=poll)
        except queue.Empty:
            fut = None
        if lease is not None and lease.lost:
            _cancel(futures)
            raise LeaseLost(lease.lost_reason)
        if fut is not None:
            left -= 1
            yield fut


def _cancel(futures: list[Any]) -> None:
    """Best effort: shards not started yet need not start (running ones meet LeaseLost at their next write)."""
    for fut in futures:
        wrapped = getattr(fut, "wrapped_future", None)
        try:
            if wrapped is not None and not wrapped.done():
                wrapped.cancel()
        except Exception as exc:  # cancelling is an optimisation only
            get_run_logger().debug("could not cancel %s: %s", fut, exc)


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "shards"


def _update_progress(artifact_id: Any, percent: float) -> None:
    try:
        update_progress_artifact(artifact_id, percent)
    except Exception as exc:  # monitoring must never fail the run
        get_run_logger().debug("progress artifact not updated: %s", exc)


def pending_shards(
    ws: Workspace,
    length: int,
    slots_of: Callable[[range], list[int]],
    array: str,
    version: str,
    shards: str | None,
    force: bool,
) -> list[tuple[int, list[int]]]:
    """(shard, live slots) of every shard of ``array`` still to do for ``version``.

    ``shards`` "A:B" limits the range (backfills); ``force`` clears the markers of the
    range so every shard in it is done again. ``slots_of(range)`` lists the live slots.
    """
    lo, hi = 0, ws.shards_of(length)
    if shards:
        a, b = parse_shards(shards)
        lo, hi = a if a is not None else lo, b if b is not None else hi
    done = ws.markers(array)
    todo = []
    for shard in range(lo, hi):
        slots = slots_of(ws.shard_slots(shard, length))
        if not slots:
            continue
        if force:
            ws.clear_markers(array, [shard])
        elif marker_matches(done.get(shard), version, slots):
            continue
        todo.append((shard, slots))
    return todo


def parse_shards(text: str) -> tuple[int | None, int | None]:
    """``"A:B"`` (either end may be left out; ``"A"`` is ``"A:"``) as ``(A, B)``; a usage error otherwise."""
    a, _, b = text.partition(":")
    if not all(p.strip().isdigit() or not p.strip() for p in (a, b)):
        raise UsageError(f"--shards takes A:B (shard numbers), not {text!r}")
    return (int(a) if a.strip() else None), (int(b) if b.strip() else None)


def corpus_table(ws: Workspace) -> ItemTable:
    """The corpus's item table, or a clear error when nothing was ingested yet."""
    table = item_table(ws, "corpus")
    if not len(table):
        raise WorkspaceError(f"{ws.url} has no corpus images: run ingest-images first")
    return table


def live_slots(table: ItemTable) -> Callable[[range], list[int]]:
    """``slots_of`` for :func:`pending_shards`: the live items of an item table in a slot range."""
    return lambda slots: [s for s, _ in table.slots_in(slots)]


def summarise(ws: Workspace, key: str, summary: dict[str, Any], description: str) -> dict[str, Any]:
    """Log a flow's summary and make it the run's table artifact ``key`` (one ``what | value`` row per
    number); returns it. Every flow's summary artifact has these two columns."""
    rows = [{"what": k, "value": v} for k, v in summary.items() if isinstance(v, (int, float, type(None)))]
    create_table_artifact(key=artifact_key(key), table=rows, description=description)
    get_run_logger().info("summary: %s", summary)
    return summary


def describe_rendered(r: dict[str, Any], array: str) -> str:
    """A corpus rendering's summary in words (the command line prints it)."""
    return (
        f"rendered {r['rendered']} corpus images with {r['method']} in {r['shards']} shard(s) into "
        f"{array}; {r['corpus_items']} corpus items in all"
    )


def render_corpus(
    ws: Workspace,
    table: ItemTable,
    *,
    stage: str,
    array: str,
    version: str,
    task: Task,
    make_spec: Callable[[int, list[int]], Any],
    shards: str | None = None,
    force: bool = False,
    gpu: bool = False,
    head: dict[str, Any] | None = None,
    count: str = "rendered",
    label: str | None = None,
    artifact: str | None = None,
) -> dict[str, Any]:
    """Every corpus rendering's flow body: pending shards -> specs -> (GPU pin) -> run -> summary.

    ``make_spec(shard, live_slots)`` builds one shard task's argument. ``gpu``: the task
    wants a GPU; it is pinned to GPU workers when the cluster has any. The summary is
    ``head`` followed by ``count`` (images done now), ``shards``, ``corpus_items`` and
    ``task_seconds``; it is also the run's table artifact ``artifact`` (default the stage).
    ``label`` names the shard tasks' progress (default the stage).
    """
    logger = get_run_logger()
    label = label or stage
    todo = pending_shards(ws, table.length, live_slots(table), array, version, shards, force)
    specs = [make_spec(shard, slots) for shard, slots in todo]
    logger.info("%s %s (version %s): %d shard task(s)", stage, array, version, len(specs))
    gpus = gpu_workers() if gpu else 0
    if gpus:
        logger.info("pinning %s tasks to the cluster's %d GPU worker(s)", stage, gpus)
    results: list[ShardResult] = run_shards(task, specs, label, {"GPU": 1} if gpus else None)
    summary = {
        **(head or {}),
        count: sum(r.ok for r in results),
        "shards": len(specs),
        "corpus_items": len(table),
        "task_seconds": round(sum(r.seconds for r in results), 1),
    }
    return summarise(ws, artifact or stage, summary, f"{stage} of {ws.url}")
