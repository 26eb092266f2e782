"""The ``augment`` flow: ``annotated/*`` multiplied into ``augmented/*``, shard by shard."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from flows.ops import mangaka_flow, shard_task
from flows.shards import run_shards, summarise
from storage.items import item_table, write_item_index
from storage.workspace import Workspace, WorkspaceError
from tasks.augment import (
    IMAGES,
    AugmentOptions,
    AugmentShardSpec,
    augment_shard,
    prepare_arrays,
    producer_version,
    shards_of_parents,
)
from tasks.ingest import ShardResult

augment_shard_task = shard_task("augment-shard")(augment_shard)


@mangaka_flow("augment")
def augment(workspace: str, options: AugmentOptions = AugmentOptions()) -> dict[str, Any]:  # noqa: B008
    """Write ``options.multiplier`` variants of every annotated item (the original first)."""
    logger = get_run_logger()
    ws = Workspace(workspace)
    parents = item_table(ws, "annotated")
    if not len(parents):
        raise WorkspaceError(f"{ws.url} has no annotated items: run ingest-labelme first")
    prepare_arrays(ws, options, parents.length)
    m, s = options.multiplier, ws.shard_size
    done = ws.markers(IMAGES)
    specs = []
    for shard, members in shards_of_parents(parents.by_id, m, s).items():
        version = producer_version(options, members)
        if done.get(shard, {}).get("version") != version:
            specs.append(AugmentShardSpec(ws.url, shard, version, options.model_dump(), members))
    logger.info("%d annotated items x%d: %d shard task(s) to run", len(parents), m, len(specs))
    results: list[ShardResult] = run_shards(augment_shard_task, specs, "augment")
    table = item_table(ws, "augmented")
    write_item_index(ws, table)
    summary = {
        "parents": len(parents),
        "multiplier": m,
        "variants_written": sum(r.ok for r in results),
        "augmented_items": len(table),
        "shards": len(specs),
    }
    return summarise(ws, "augment-summary", summary, f"augment of {ws.url}")


def describe_augment(r: dict[str, Any], params: dict[str, Any]) -> str:
    return (
        f"augmented {r['parents']} annotated items x{r['multiplier']}: {r['augmented_items']} items in "
        f"augmented/images + augmented/masks ({r['variants_written']} written now)"
    )
