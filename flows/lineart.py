"""The line-art flows: ``train-lineart`` (in process) and ``render-lineart`` (shards on Dask)."""

from __future__ import annotations

import sys
from typing import Any, Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows.ops import mangaka_flow, shard_task
from flows.runtime import gpu_workers
from flows.shards import corpus_table, live_slots, pending_shards, run_shards
from storage.checkpoints import load_checkpoint
from storage.workspace import Workspace
from tasks.artline import MODEL_DIR, LineartTrainOptions, train_lineart
from tasks.ingest import ShardResult
from tasks.lineart import METHODS, LineartShardSpec, array_name, lineart_shard, method_version, prepare_array


@mangaka_flow("train-lineart")
def train_lineart_flow(workspace: str, options: LineartTrainOptions = LineartTrainOptions()) -> dict[str, Any]:  # noqa: B008
    """Train the ArtLine-style model with progressive resizing; checkpoints in ``models/artline``."""
    logger = get_run_logger()
    ws = Workspace(workspace)
    rows: list[dict[str, Any]] = []

    def on_epoch(m: dict[str, Any]) -> None:
        rows.append(m)
        create_table_artifact(key="train-lineart-metrics", table=rows, description=f"train-lineart on {ws.url}")
        logger.info("epoch %s at %s px: F1 %s (%s s)", m["epoch"], m["size"], m["f1"], m["seconds"])

    columns = (TextColumn("train-lineart"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        job = bar.add_task("steps", total=None)
        result = train_lineart(ws, options, on_epoch, lambda d, t: bar.update(job, completed=d, total=t))
    if result["resumed_at"] and not result["already_done"]:
        logger.info("resumed after epoch %d", result["resumed_at"])
    return result


@shard_task("lineart-shard")
def lineart_shard_task(spec: LineartShardSpec) -> ShardResult:
    return lineart_shard(spec)


@mangaka_flow("render-lineart", "{method}")
def render_lineart(
    workspace: str,
    method: Literal[METHODS] = "xdog",  # type: ignore[valid-type] - the tuple's values, checked by Prefect
    model: str = "latest",
    shards: str | None = None,
    force: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Fill ``corpus/lineart/<method>`` for every corpus shard not yet rendered by this version."""
    logger = get_run_logger()
    ws = Workspace(workspace)
    table = corpus_table(ws)
    checkpoint, digest = "", ""
    if method == "artline":
        ckpt = load_checkpoint(ws, MODEL_DIR, model)
        checkpoint, digest = ckpt.name, ckpt.digest
    version = method_version(method, digest)
    array = array_name(method)
    prepare_array(ws, method)
    todo = pending_shards(ws, table.length, live_slots(table), array, version, shards, force)
    specs = [LineartShardSpec(ws.url, s, method, version, checkpoint, slots, device) for s, slots in todo]
    logger.info("render-lineart %s (version %s): %d shard task(s)", method, version, len(specs))
    resources = {"GPU": 1} if method == "artline" and gpu_workers() else None
    results: list[ShardResult] = run_shards(lineart_shard_task, specs, f"lineart-{method}", resources)
    seconds = sum(r.seconds for r in results)
    summary = {
        "method": method,
        "version": version,
        "checkpoint": checkpoint or None,
        "rendered": sum(r.ok for r in results),
        "shards": len(specs),
        "corpus_items": len(table),
        "task_seconds": round(seconds, 1),
    }
    create_table_artifact(
        key=f"render-lineart-{method}",
        table=[{"what": k, "value": v} for k, v in summary.items()],
        description=f"render-lineart {method} of {ws.url}",
    )
    return summary
