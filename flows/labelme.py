"""The ``ingest-labelme`` flow: a folder of labelme files into ``annotated/*``."""

from __future__ import annotations

import os
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from flows.ops import mangaka_flow, shard_task
from flows.shards import run_shards
from storage.items import item_table, write_item_index
from storage.sources import list_sources
from storage.workspace import Workspace
from tasks.annotations import (
    FAMILY,
    IMAGES,
    JSON_SUFFIXES,
    STAGE,
    LabelmeOptions,
    LabelmeShardSpec,
    ingest_labelme_shard,
    prepare_arrays,
)
from tasks.ingest import ShardResult, fix_shard_size, shard_specs, start_batches


@shard_task("ingest-labelme-shard")
def ingest_labelme_shard_task(spec: LabelmeShardSpec) -> ShardResult:
    return ingest_labelme_shard(spec)


@mangaka_flow("ingest-labelme", "from {src}")
def ingest_labelme(
    workspace: str,
    src: str,
    options: LabelmeOptions = LabelmeOptions(),  # noqa: B008 - pydantic models are immutable
    shard_size: int | None = None,
) -> dict[str, Any]:
    """Add (or replace, by id) the labelme annotations under the folder ``src``."""
    logger = get_run_logger()
    root = os.path.abspath(src)
    ws = Workspace(workspace)
    fix_shard_size(ws, shard_size, classes=list(options.classes))
    listing = list_sources(root, JSON_SUFFIXES)
    record = {**options.model_dump(), "root": root}
    plan, batches = start_batches(ws, listing, FAMILY, IMAGES, STAGE, options.version, record)
    for b in batches:
        opts = {k: v for k, v in b.options.items() if k != "root"}
        prepare_arrays(ws, LabelmeOptions(**opts), b.end)
    specs = [
        LabelmeShardSpec(
            ws.url,
            b.options["root"],
            s.shard,
            s.version,
            {k: v for k, v in b.options.items() if k != "root"},
            s.sources,
        )
        for b in batches
        for s in shard_specs(ws, b, IMAGES)
    ]
    results: list[ShardResult] = run_shards(ingest_labelme_shard_task, specs, "ingest-labelme")
    table = item_table(ws, FAMILY)
    write_item_index(ws, table)
    summary = {
        "source": root,
        "listed": len(listing.refs),
        "already_ingested": plan.known,
        "resumed": plan.resuming,
        "stored": sum(r.ok for r in results),
        "quarantined": sum(r.quarantined for r in results) + len(plan.refused),
        "replaced": len(table.replaced),
        "shards": len(specs),
        "annotated_items": len(table),
    }
    create_table_artifact(
        key="ingest-labelme-summary",
        table=[{"what": k, "count": v} for k, v in summary.items() if k != "source"],
        description=f"ingest-labelme of {root} into {ws.url}",
    )
    logger.info("summary: %s", summary)
    return summary
