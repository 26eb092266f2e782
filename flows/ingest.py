"""The ``ingest-images`` flow: a folder, ``.tar`` or S3 prefix into ``corpus/images``.

The flow process lists and plans (one writer of the journal and of array metadata); shard
tasks on Dask read, decode and write; the flow then refreshes ``corpus/item`` and reports.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from flows.ops import mangaka_flow, shard_task
from flows.shards import run_shards
from storage.items import item_table, write_item_index
from storage.sources import list_sources
from storage.workspace import Workspace
from tasks.ingest import (
    ARRAY,
    FAMILY,
    STAGE,
    IngestOptions,
    ShardResult,
    ShardSpec,
    fix_shard_size,
    ingest_shard,
    prepare_array,
    shard_specs,
    start_batches,
)


@shard_task("ingest-shard")
def ingest_shard_task(spec: ShardSpec) -> ShardResult:
    return ingest_shard(spec)


@mangaka_flow("ingest-images", "from {src}", log_prints=False)
def ingest_images(
    workspace: str,
    src: str,
    options: IngestOptions = IngestOptions(),  # noqa: B008 - pydantic models are immutable
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Add the images under ``src`` to the workspace's corpus; returns a summary.

    ``shard_size`` (items per shard and per task) is fixed when a workspace is created;
    ``None`` keeps the workspace's, or 256 for a new one.
    """
    logger = get_run_logger()
    ws = Workspace(workspace)
    fix_shard_size(ws, shard_size)
    listing = list_sources(src)
    plan, batches = start_batches(ws, listing, FAMILY, ARRAY, STAGE, options.version, options.model_dump())
    for b in batches:
        prepare_array(ws, IngestOptions(**b.options), b.end)
    specs = [s for b in batches for s in shard_specs(ws, b)]
    logger.info(
        "%s: %d files listed, %d already ingested, %d left by an unfinished run, %d new, %d shard task(s)",
        src,
        len(listing.refs),
        plan.known,
        plan.resuming,
        len(plan.new),
        len(specs),
    )
    results: list[ShardResult] = run_shards(ingest_shard_task, specs, "ingest-images")
    table = item_table(ws, FAMILY)
    write_item_index(ws, table)
    run_slots = {r.shard for r in results}
    s = ws.shard_size
    summary = {
        "source": src,
        "listed": len(listing.refs),
        "already_ingested": plan.known,
        "resumed": plan.resuming,
        "stored": sum(r.ok for r in results),
        "duplicates_skipped": sum(1 for d in table.duplicates if d["slot"] // s in run_slots),
        "quarantined": sum(r.quarantined for r in results) + len(plan.refused),
        "missing": sum(1 for e in table.missing if e["slot"] // s in run_slots),
        "not_image_names": plan.skipped_names,
        "shards": len(specs),
        "corpus_items": len(table),
    }
    create_table_artifact(
        key="ingest-images-summary",
        table=[{"what": k, "count": v} for k, v in summary.items() if k != "source"],
        description=f"ingest-images of {src} into {ws.url} ({ARRAY})",
    )
    logger.info("summary: %s", summary)
    return summary
