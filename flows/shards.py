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
from collections.abc import Callable, Sequence
from typing import Any

from prefect import get_run_logger, tags, unmapped
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.tasks import Task
from prefect.utilities.annotations import opaque
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows import ShardFailures, UsageError, env_number, heap
from flows.runtime import cluster_soon, gpu_workers
from storage.bulk import bulk_build
from storage.items import ItemTable, ItemView
from storage.lease import LeaseLost, active_fence, held_lease
from storage.workspace import REINDEX_AFTER, Workspace, WorkspaceError, marker_matches
from tasks.shards import ShardResult

TASK_SECONDS_ENV = "MANGAKA_TASK_SECONDS"
SHARDS_PER_TASK_ENV = "MANGAKA_SHARDS_PER_TASK"
DEFAULT_TASK_SECONDS = 8.0
# What a task carries (its shards' source records, their results) lives in the worker and
# in the flow while it runs: measured on a 302,652-image ingest (1,183 shards, 2 workers),
# tasks of up to 64 shards kept each worker at 174 MB, of up to 16 at 146 MB (as at 20,000
# images), in the same wall time. 16 shards of the cheapest 512 px stage (xdog, ~0.35 s
# each) are ~6 s of work against ~0.2 s of task overhead.
MAX_SHARDS_PER_TASK = 16
# The progress artifact is updated at most this often (and when the last shard is in): an
# update is an API call in the flow's loop between a finished task and the next submission.
PROGRESS_EVERY = 2.0
TAIL_SPLIT = 2  # a task takes at most 1/(TAIL_SPLIT x workers) of the shards not yet submitted


class TaskSizer:
    """How many shards the next Prefect task carries, from the seconds the shards took so far.

    A Prefect task costs about 0.2 s of a small machine (its task run, state changes and
    logs, in the flow process and on the worker), as much as a whole shard of the cheapest
    stages (xdog line art: ~0.35 s per 256 images at 512 px; tiny images far less). So the
    first task of each worker carries one shard (which also warms the worker), and every
    later one as many as fill ``target`` seconds (``MANGAKA_TASK_SECONDS``, default 8: the
    per-task cost stays a few percent) at the mean seconds per shard measured so far, at
    most 16 (:data:`MAX_SHARDS_PER_TASK`), and at most half of an equal part per worker of the shards not yet submitted
    (guided self-scheduling): the tasks shrink towards the end, so the workers end within
    a shard or two of each other rather than one idling while another runs its last large
    task (with an equal part each, that tail had cost 1-2 s of a 20 s xdog run on 2
    workers), and a bar still moves. ``MANGAKA_SHARDS_PER_TASK`` fixes the count.
    Nothing here grows with the corpus: the state is two numbers.
    """

    def __init__(self, workers: int, target: float | None = None, fixed: int | None = None) -> None:
        self.workers = max(1, workers)
        self.target = target if target is not None else env_number(TASK_SECONDS_ENV, DEFAULT_TASK_SECONDS, strict=True)
        self.fixed = fixed if fixed is not None else env_number(SHARDS_PER_TASK_ENV, None, int, strict=True)
        self.seconds = 0.0
        self.measured = 0

    def measure(self, seconds: Sequence[float]) -> None:
        self.seconds += float(sum(seconds))
        self.measured += len(seconds)

    @property
    def known(self) -> bool:
        return self.fixed is not None or self.measured > 0

    def next_size(self, left: int) -> int:
        if self.fixed is not None:
            return max(1, min(self.fixed, left))
        if not self.measured:
            return 1
        per_shard = max(self.seconds / self.measured, 1e-3)
        want = max(1, min(MAX_SHARDS_PER_TASK, math.ceil(self.target / per_shard)))
        return max(1, min(want, math.ceil(left / (TAIL_SPLIT * self.workers)), left))


def run_shards(
    task: Task,
    specs: Sequence[Any],
    label: str,
    resources: dict[str, float] | None = None,
    per_task: int | None = None,
) -> list[Any]:
    """Run ``task`` on every spec; return the results in spec order; raise ShardFailures if any failed.

    Shards travel in Prefect tasks of several (``task.several``, see ``flows.ops.shard_task``)
    sized by :class:`TaskSizer` from the seconds measured so far (``per_task`` fixes the
    count); a task that fails fails its shards, and its retry skips those done. Tasks are
    submitted as workers free up (one more than the workers are in flight), so a run of any
    size holds a few futures, not one per shard.

    ``resources`` (``{"GPU": 1}``) pins the tasks to Dask workers that advertise them, and
    tags them ``gpu`` so that a Prefect tag concurrency limit (``mangaka serve --gpu-limit``)
    bounds the GPU work of all runs together. A progress artifact (key ``<label>-progress``)
    is updated as shards finish, and a table artifact sums them up (items, quarantine,
    throughput).
    """
    from flows.runtime import cluster_workers, shared_task_context

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
    runner = getattr(task, "several", None)
    sizer = TaskSizer(cluster_workers(), fixed=per_task if runner is not None else 1)
    waiting = list(range(len(specs)))[::-1]  # spec indices, next one last
    done_results: dict[int, Any] = {}
    failures: list[str] = []
    failed_shards = 0
    tasks = 0
    in_flight: dict[Any, list[int]] = {}
    finished: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def submit() -> None:
        nonlocal tasks
        n = sizer.next_size(len(waiting))
        chunk = [waiting.pop() for _ in range(n)]
        # opaque: Prefect walks a task's parameters for futures (in the flow, twice, and on
        # the worker); shard specs hold none, and walking 16 specs of 256 slots each costs
        # more than the rest of a submission
        work = [opaque([specs[i] for i in chunk] if runner is not None else specs[chunk[0]])]
        if resources:
            import dask

            with dask.annotate(resources=resources), tags(*[r.lower() for r in resources]):
                fut = (runner or task).map(work, **extra)[0]
        else:
            fut = (runner or task).map(work, **extra)[0]
        in_flight[fut] = chunk
        fut.add_done_callback(finished.put)
        tasks += 1

    poll = None if lease is None else max(0.05, min(2.0, lease.ttl / 8))
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar,
        shared_task_context(),
    ):
        job = bar.add_task(label, total=len(specs))
        shards_done, shown = 0, t0
        while waiting or in_flight:
            # One task per worker until the first shard times are in, then one more than the
            # workers, so that a worker never waits for the flow to size its next task.
            limit = sizer.workers + (1 if sizer.known else 0)
            while waiting and len(in_flight) < limit:
                submit()
            try:
                fut = finished.get(timeout=poll)
            except queue.Empty:
                fut = None
            if lease is not None and lease.lost:
                _cancel(list(in_flight))
                raise LeaseLost(lease.lost_reason)
            if fut is None:
                continue
            chunk = in_flight.pop(fut)
            try:
                got = fut.result()
                if runner is not None:
                    sizer.measure(got["seconds"])
                    done_results.update(zip(chunk, got["results"], strict=True))
                else:
                    done_results[chunk[0]] = got
            except LeaseLost:
                _cancel(list(in_flight))
                raise
            except Exception as exc:  # a shard's own error, after its retries
                failures.append(f"{exc.__class__.__name__}: {exc}")
                failed_shards += len(chunk)
            shards_done += len(chunk)
            heap.trim()
            bar.advance(job, len(chunk))
            now = time.perf_counter()
            if progress is not None and (now - shown >= PROGRESS_EVERY or shards_done == len(specs)):
                _update_progress(progress, 100.0 * shards_done / len(specs))
                shown = now
    results = [done_results[i] for i in sorted(done_results)]
    seconds = time.perf_counter() - t0
    items = sum(int(getattr(r, "ok", 0)) for r in results)
    quarantined = sum(int(getattr(r, "quarantined", 0)) for r in results)
    create_table_artifact(
        key=artifact_key(f"{label}-shards"),
        table=[
            {
                "stage": label,
                "shards": len(specs),
                "tasks": tasks,
                "failed": failed_shards,
                "items": items,
                "quarantined": quarantined,
                "seconds": round(seconds, 2),
                "items_per_second": round(items / seconds, 2) if seconds > 0 else None,
            }
        ],
        description=f"{label}: shards of this run",
    )
    logger.info("%s: %d shard(s) in %d task(s), %.1f s", label, len(specs), tasks, seconds)
    if failures:
        raise ShardFailures(
            f"{failed_shards} of {len(specs)} shards of {label} failed (in {len(failures)} of {tasks} tasks); "
            f"first: {failures[0]}"
        )
    return results


def _takes_fence(task: Task) -> bool:
    """Whether ``task`` takes the ``fence`` argument (every ``flows.ops.shard_task`` does)."""
    try:
        return "fence" in inspect.signature(task.fn).parameters
    except (TypeError, ValueError):
        return False


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


@bulk_build
def pending_shards(
    ws: Workspace,
    length: int,
    slots_of: Callable[[range], list[int]],
    array: str,
    version: str,
    shards: str | None,
    force: bool,
    done: dict[int, dict[str, Any]] | None = None,
) -> list[tuple[int, list[int]]]:
    """(shard, live slots) of every shard of ``array`` still to do for ``version``.

    ``shards`` "A:B" limits the range (backfills); ``force`` clears the markers of the
    range so every shard in it is done again. ``slots_of(range)`` lists the live slots.
    ``done``: the markers of ``array``, when the caller has just read them.
    """
    lo, hi = shard_range(ws, length, shards)
    done = ws.markers(array) if done is None else done
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


def shard_range(ws: Workspace, length: int, shards: str | None) -> tuple[int, int]:
    """The shards ``shards`` ("A:B", ``None``: all) names of an array of ``length`` slots."""
    lo, hi = 0, ws.shards_of(length)
    if shards:
        a, b = parse_shards(shards)
        lo, hi = a if a is not None else lo, b if b is not None else hi
    return lo, hi


@bulk_build
def pending_of(
    ws: Workspace, items: ItemView, array: str, version: str, shards: str | None, force: bool
) -> list[tuple[int, list[int]]]:
    """:func:`pending_shards` of a family's items: decided from their counts alone when
    every shard's marker matches ``version`` and the counts' live digest (a run with
    nothing to do reads no item table); otherwise from the table, derived now."""
    done = None
    if not force:
        counts = items.counts
        lo, hi = shard_range(ws, counts.length, shards)
        done = ws.markers(array)
        if all(
            _matches_digest(done.get(shard), version, digest)
            for shard, digest in counts.digests.items()
            if lo <= shard < hi
        ):
            return []
    table = items.table()
    return pending_shards(ws, table.length, live_slots(table), array, version, shards, force, done)


def _matches_digest(marker: dict[str, Any] | None, version: str, digest: str) -> bool:
    """:func:`storage.workspace.marker_matches` for live slots known by their digest."""
    return marker is not None and marker.get("version") == version and marker.get("live") in (None, digest)


def parse_shards(text: str) -> tuple[int | None, int | None]:
    """``"A:B"`` (either end may be left out; ``"A"`` is ``"A:"``) as ``(A, B)``; a usage error otherwise."""
    a, _, b = text.partition(":")
    if not all(p.strip().isdigit() or not p.strip() for p in (a, b)):
        raise UsageError(f"--shards takes A:B (shard numbers), not {text!r}")
    return (int(a) if a.strip() else None), (int(b) if b.strip() else None)


def corpus_table(ws: Workspace) -> ItemView:
    """The corpus's items (counts at once, the table when a run needs it), or a clear error
    when nothing was ingested yet."""
    items = ItemView(ws, "corpus")
    if not len(items):
        raise WorkspaceError(f"{ws.url} has no corpus images: run ingest-images first")
    return items


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
    table: ItemView,
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
    todo = pending_of(ws, table, array, version, shards, force)
    if todo:
        cluster_soon()  # the LocalCluster starts while the specs are made
    specs = [make_spec(shard, slots) for shard, slots in todo]
    logger.info("%s %s (version %s): %d shard task(s)", stage, array, version, len(specs))
    gpus = gpu_workers() if gpu else 0
    if gpus:
        logger.info("pinning %s tasks to the cluster's %d GPU worker(s)", stage, gpus)
    results: list[ShardResult] = run_shards(task, specs, label, {"GPU": 1} if gpus else None)
    if len(specs) >= REINDEX_AFTER:
        ws.markers(array)  # the marker index, refreshed now: the next run reads one file, not a file per shard
    summary = {
        **(head or {}),
        count: sum(r.ok for r in results),
        "shards": len(specs),
        "corpus_items": len(table),
        "task_seconds": round(sum(r.seconds for r in results), 1),
    }
    return summarise(ws, artifact or stage, summary, f"{stage} of {ws.url}")
