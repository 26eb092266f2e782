"""Running shard tasks on Dask from a flow: progress, failures, and a summary artifact.

Every bulk step is ``process_shard(spec) -> result``; this module maps such a Prefect task
over specs, shows progress, and collects failures instead of stopping at the first one, so
one bad shard does not waste the work of the others. The caller decides what a failure
means (the CLI exits 1; a re-run redoes only the shards without a marker).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, tags
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.tasks import Task
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class ShardFailures(RuntimeError):
    """Some shards failed after their retries; the others are done and marked."""


def run_shards(task: Task, specs: Sequence[Any], label: str, resources: dict[str, float] | None = None) -> list[Any]:
    """Run ``task`` on every spec; return the results; raise ShardFailures if any failed.

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
    if resources:
        import dask

        with dask.annotate(resources=resources), tags(*[r.lower() for r in resources]):
            futures = task.map(list(specs))
    else:
        futures = task.map(list(specs))
    results: list[Any] = []
    failures: list[str] = []
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        job = bar.add_task(label, total=len(futures))
        for done, fut in enumerate(as_completed(futures), 1):
            try:
                results.append(fut.result())
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
                "shards": len(futures),
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
        raise ShardFailures(f"{len(failures)} of {len(futures)} shards of {label} failed; first: {failures[0]}")
    return results


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "shards"


def _update_progress(artifact_id: Any, percent: float) -> None:
    try:
        update_progress_artifact(artifact_id, percent)
    except Exception as exc:  # monitoring must never fail the run
        get_run_logger().debug("progress artifact not updated: %s", exc)


def pending_shards(
    ws: Any, length: int, slots_of: Any, array: str, version: str, shards: str | None, force: bool
) -> list[tuple[int, list[int]]]:
    """(shard, live slots) of every shard of ``array`` still to do for ``version``.

    ``shards`` "A:B" limits the range (backfills); ``force`` clears the markers of the
    range so every shard in it is done again. ``slots_of(range)`` lists the live slots.
    """
    lo, hi = 0, ws.shards_of(length)
    if shards:
        a, _, b = shards.partition(":")
        lo, hi = int(a or lo), int(b or hi)
    done = ws.markers(array)
    todo = []
    for shard in range(lo, hi):
        slots = slots_of(ws.shard_slots(shard, length))
        if not slots:
            continue
        if force:
            ws.clear_markers(array, [shard])
        elif done.get(shard, {}).get("version") == version:
            continue
        todo.append((shard, slots))
    return todo


def corpus_table(ws: Any) -> Any:
    """The corpus's item table, or a clear error when nothing was ingested yet."""
    from storage.items import item_table
    from storage.workspace import WorkspaceError

    table = item_table(ws, "corpus")
    if not len(table):
        raise WorkspaceError(f"{ws.url} has no corpus images: run ingest-images first")
    return table


def live_slots(table: Any) -> Any:
    """``slots_of`` for :func:`pending_shards`: the live items of an item table in a slot range."""
    return lambda slots: [s for s, _ in table.slots_in(slots)]
