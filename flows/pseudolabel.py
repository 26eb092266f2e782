"""The ``pseudolabel`` flow: the latest (or a named) segmenter over every corpus shard."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from flows.ops import mangaka_flow, shard_task
from flows.runtime import gpu_workers
from flows.shards import corpus_table, live_slots, pending_shards, run_shards
from storage.checkpoints import load_checkpoint
from storage.workspace import Workspace
from tasks.ingest import ShardResult
from tasks.pseudolabel import (
    MASKS,
    PseudolabelOptions,
    PseudolabelShardSpec,
    prepare_arrays,
    producer_version,
    pseudolabel_shard,
)


@shard_task("pseudolabel-shard")
def pseudolabel_shard_task(spec: PseudolabelShardSpec) -> ShardResult:
    return pseudolabel_shard(spec)


@mangaka_flow("pseudolabel")
def pseudolabel(
    workspace: str,
    options: PseudolabelOptions = PseudolabelOptions(),  # noqa: B008
    shards: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Label every corpus shard not yet labelled by this model (``shards`` "A:B" limits the range)."""
    logger = get_run_logger()
    ws = Workspace(workspace)
    ckpt = load_checkpoint(ws, "unet", options.model)
    version = producer_version(ckpt.digest, options)
    table = corpus_table(ws)
    prepare_arrays(ws, options.confidence_map)
    todo = pending_shards(ws, table.length, live_slots(table), MASKS, version, shards, force)
    specs = [PseudolabelShardSpec(ws.url, s, version, ckpt.name, slots, options.model_dump()) for s, slots in todo]
    logger.info("model %s (%s): %d shard task(s)", ckpt.name, ckpt.digest, len(specs))
    gpus = gpu_workers() if options.engine != "onnxruntime" else 0  # that engine runs on CPUs
    if gpus:
        logger.info("pinning pseudolabel tasks to the cluster's %d GPU worker(s)", gpus)
    resources = {"GPU": 1} if gpus else None
    results: list[ShardResult] = run_shards(pseudolabel_shard_task, specs, "pseudolabel", resources)
    summary = {
        "checkpoint": ckpt.name,
        "digest": ckpt.digest,
        "labelled": sum(r.ok for r in results),
        "shards": len(specs),
        "corpus_items": len(table),
    }
    create_table_artifact(
        key="pseudolabel-summary",
        table=[{"what": k, "value": v} for k, v in summary.items()],
        description=f"pseudolabel of {ws.url}",
    )
    return summary
