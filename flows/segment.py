"""The ``train-unet`` flow: train (or resume) the segmenter on the workspace's annotations.

Training runs in the flow's process, where a progress bar can be seen, on the device the
run was given; each epoch's metrics go to a Prefect table artifact as they come.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows.ops import mangaka_flow
from storage.workspace import Workspace
from tasks.segment import TrainOptions, train_unet


@mangaka_flow("train-unet")
def train_unet_flow(workspace: str, options: TrainOptions = TrainOptions()) -> dict[str, Any]:  # noqa: B008
    """Train the U-Net; checkpoints land in ``models/unet`` of the workspace."""
    logger = get_run_logger()
    ws = Workspace(workspace)
    rows: list[dict[str, Any]] = []

    def on_epoch(m: dict[str, Any]) -> None:
        rows.append({k: v for k, v in m.items() if k != "iou"} | {f"iou_{c}": v for c, v in m.get("iou", {}).items()})
        create_table_artifact(key="train-unet-metrics", table=rows, description=f"train-unet on {ws.url}")
        logger.info("epoch %s: loss %s, mIoU %s (%s s)", m["epoch"], m["loss"], m.get("miou"), m["seconds"])

    columns = (TextColumn("train-unet"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        job = bar.add_task("steps", total=None)

        def on_step(done: int, total: int) -> None:
            bar.update(job, completed=done, total=total)

        result = train_unet(ws, options, on_epoch=on_epoch, on_step=on_step)
    if result["resumed_at"]:
        logger.info("resumed from epoch %d", result["resumed_at"])
    return result
