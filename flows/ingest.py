"""The ``ingest-images`` flow: a folder, ``.tar`` or S3 prefix into ``corpus/images``.

The flow process lists and plans (one writer of the journal and of array metadata); shard
tasks on Dask read, decode and write; the flow then refreshes ``corpus/item`` and reports.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect import get_run_logger

from flows import heap
from flows.ops import mangaka_flow, shard_task
from flows.runtime import cluster_soon
from flows.shards import run_shards, summarise
from storage.bulk import Joined
from storage.items import REPLACE_BY_ID, ItemTable, item_index_current, item_table, write_item_index
from storage.location import is_remote
from storage.sources import list_sources
from storage.workspace import Workspace
from tasks.ingest import (
    ARRAY,
    FAMILY,
    STAGE,
    IngestOptions,
    ShardResult,
    fix_shard_size,
    ingest_shard,
    prepare_array,
    resolve_codec,
    shard_specs,
    start_batches,
)

ingest_shard_task = shard_task("ingest-shard")(ingest_shard)


@mangaka_flow("ingest-images", "from {src}", log_prints=False)
def ingest_images(
    workspace: str,
    src: str,
    options: IngestOptions = IngestOptions(),  # noqa: B008 - pydantic models are immutable
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Add the images under ``src`` to the workspace's corpus; returns a summary.

    Args:
        workspace: local directory or s3://bucket/prefix
        src: the images: a folder, a .tar, or s3://bucket/prefix
        options: how images are checked and made square
        shard_size: items per shard (fixed at the first ingestion; default the workspace's, else 256)
    """
    ws = Workspace(workspace)
    fix_shard_size(ws, shard_size)
    options = resolve_codec(ws, options)
    # what shard_specs needs of the markers (their versions), read once for all batches, after planning
    marked = functools.cache(lambda: {shard: {"version": m.get("version")} for shard, m in ws.each_marker(ARRAY)})
    with heap.lean():  # from the listing on (see flows.heap)
        summary, results, table, plan = ingest_family(
            ws,
            stage=STAGE,
            family=FAMILY,
            array=ARRAY,
            listing=listing_beside(src),
            version=options.version,
            record=options.model_dump(),
            prepare=lambda b: prepare_array(ws, IngestOptions(**b.options), b.end),
            specs_of=lambda b: shard_specs(ws, b, markers=marked()),
            task=ingest_shard_task,
            source=src,
        )
    run_slots, s = {r.shard for r in results}, ws.shard_size
    duplicates = table.duplicates if table is not None else []  # None: nothing ran
    missing = table.missing if table is not None else []
    summary.update(
        duplicates_skipped=sum(1 for d in duplicates if d["slot"] // s in run_slots),
        missing=sum(1 for e in missing if e["slot"] // s in run_slots),
        not_image_names=plan.skipped_names,
        corpus_items=summary.pop("items"),
        stored_as_is=sum(r.as_is for r in results),
        codec=options.codec,
    )
    return summarise(ws, "ingest-images-summary", summary, f"ingest-images of {src} into {ws.url} ({ARRAY})")


def listing_beside(src: str, *args: Any) -> Future[Any]:
    """``list_sources(src)``: for a source on S3 in a thread of its own, while the flow reads
    the workspace (its pages of 1,000 keys are waits on the network); a local one here and
    now. Listing a local folder is Python's work under the GIL: beside the journal's
    reading it gained 0.1 s of 3.7 at 302,652 files and cost 10 MB more of peak memory
    (two threads' temporaries at once)."""
    if not is_remote(src):
        done: Future[Any] = Future()
        try:
            done.set_result(list_sources(src, *args))
        except Exception as exc:  # raised where the listing is used, as from the thread
            done.set_exception(exc)
        return done
    pool = ThreadPoolExecutor(1, thread_name_prefix="listing")
    try:
        return pool.submit(list_sources, src, *args)
    finally:
        pool.shutdown(wait=False)


def _cluster_if_work(plan: Any) -> None:
    if plan.open_batches or plan.new:
        cluster_soon()  # the LocalCluster starts while the journal and the arrays are written


def _prepare_each(prepare: Callable[[Any], None], batches: Sequence[Any]) -> None:
    for b in batches:
        prepare(b)


def ingest_family(
    ws: Workspace,
    *,
    stage: str,
    family: str,
    array: str,
    listing: Any,
    version: str,
    record: dict[str, Any],
    prepare: Callable[[Any], None],
    specs_of: Callable[[Any], Sequence[Any]],
    task: Any,
    source: str,
) -> tuple[dict[str, Any], list[ShardResult], Any, Any]:
    """Every ingestion's flow body: journal the new files in batches, run their shards, index the items.

    Returns the summary so far (what was listed, known, resumed, stored, quarantined, the
    shard count and the items in all), the shard results, the family's item table (``None``
    when nothing ran and its counts sufficed; always a table for families where a new file
    replaces an item) and the plan, whose ``new`` and ``open_batches`` are cleared (the
    records of 302,652 files are let go before the table is derived).
    """
    with heap.lean():
        return _ingest_family(ws, stage, family, array, listing, version, record, prepare, specs_of, task, source)


def _ingest_family(
    ws: Workspace,
    stage: str,
    family: str,
    array: str,
    listing: Any,
    version: str,
    record: dict[str, Any],
    prepare: Callable[[Any], None],
    specs_of: Callable[[Any], Sequence[Any]],
    task: Any,
    source: str,
) -> tuple[dict[str, Any], list[ShardResult], Any, Any]:
    plan, batches = start_batches(ws, listing, family, array, stage, version, record, planned=_cluster_if_work)
    if isinstance(listing, Future):
        listing = listing.result()
    heap.trim()  # planning's temporaries (a sorted listing, the journal's pieces) are freed
    _prepare_each(prepare, batches)  # not a loop here: its variable would keep the last batch alive
    specs = Joined([specs_of(b) for b in batches])  # each made when a task takes it
    get_run_logger().info(
        "%s: %d files listed, %d already ingested, %d left by an unfinished run, %d new, %d shard task(s)",
        source,
        len(listing.refs),
        plan.known,
        plan.resuming,
        len(plan.new),
        len(specs),
    )
    results: list[ShardResult] = run_shards(task, specs, stage)
    summary = {
        "source": source,
        "listed": len(listing.refs),
        "already_ingested": plan.known,
        "resumed": plan.resuming,
        "stored": sum(r.ok for r in results),
        "quarantined": sum(r.quarantined for r in results) + len(plan.refused),
        "shards": len(specs),
    }
    ran = bool(specs)
    # The listing and the journal records (one each of 302,652 files) are done with: let
    # them go before the item table is derived, so the two are never held at once.
    del listing, specs, batches
    plan.new = []
    plan.open_batches.clear()
    counts = plan.counts
    heap.trim(force=True)
    table: ItemTable | None = None
    if ran or plan.refused or counts is None or family in REPLACE_BY_ID:
        plan.table = None
        table = item_table(ws, family)
        write_item_index(ws, table)
        summary["items"] = len(table)
    else:  # nothing ran and nothing was set aside: the items are the ones planning knew
        table = plan.table
        if not item_index_current(ws, family, counts.length):  # an earlier run stopped before its index was whole
            table = table or item_table(ws, family)
            write_item_index(ws, table)
        summary["items"] = len(table) if table is not None else counts.items
    return summary, results, table, plan


def describe_ingest_images(r: dict[str, Any], params: dict[str, Any]) -> str:
    return (
        f"ingested {r['stored']} new images into corpus/images ({r['corpus_items']} in all"
        + (f"; {r['stored_as_is']} of them stored as their source JPEG" if r.get("codec") == "jpeg" else "")
        + "); "
        f"{r['already_ingested']} already there, "
        + (f"{r['resumed']} finished from an interrupted run, " if r.get("resumed") else "")
        + f"{r['duplicates_skipped']} duplicates skipped, "
        f"{r['quarantined']} quarantined, {r['not_image_names']} files not named like images"
        + (f", {r['missing']} gone since they were listed" if r.get("missing") else "")
        + ("\nsee `mangaka status` for the quarantine and its reasons" if r["quarantined"] else "")
    )


def precheck_ingest_images(params: dict[str, Any], given: set[str]) -> None:
    """Before anything starts: a compressed tar is refused; the size defaults to the workspace's."""
    from storage.sources import check_source

    check_source(params["src"])
    workspace_size(params, given)
    opts = params["options"]
    Workspace(params["workspace"]).check_codec(opts.codec, opts.jpeg_quality)


def workspace_size(params: dict[str, Any], given: set[str], **check: Any) -> None:
    """``options.size`` left out means the workspace's image size (else the options' default)."""
    ws, opts = Workspace(params["workspace"]), params["options"]
    size = opts.size if "options.size" in given else ws.config().get("image_size", opts.size)
    params["options"] = opts.model_copy(update={"size": size})
    ws.check_config(image_size=size, shard_size=params.get("shard_size"), **check)
