"""The ``train-unet`` flow: train (or resume) the segmenter on the workspace's annotations.

Training runs in the flow's process, where a progress bar can be seen, on the device the
run was given; each epoch's metrics go to a Prefect table artifact as they come.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from flows.ops import mangaka_flow
from flows.training import monitored
from storage.workspace import Workspace
from tasks.segment import TrainOptions, train_unet


@mangaka_flow("train-unet", cluster=False)
def train_unet_flow(workspace: str, options: TrainOptions = TrainOptions()) -> dict[str, Any]:  # noqa: B008
    """Train the U-Net; checkpoints land in ``models/unet`` of the workspace."""
    ws = Workspace(workspace)

    def row(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k != "iou"} | {f"iou_{c}": v for c, v in m.get("iou", {}).items()}

    def line(m: dict[str, Any]) -> str:
        return f"epoch {m['epoch']}: loss {m['loss']}, mIoU {m.get('miou')} ({m['seconds']} s)"

    with monitored("train-unet-metrics", f"train-unet on {ws.url}", line, row) as mon:
        result = train_unet(ws, options, on_epoch=mon.on_epoch, on_step=mon.on_step)
    if result["resumed_at"]:
        get_run_logger().info("resumed from epoch %d", result["resumed_at"])
    return result


def describe_train_unet_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    head = ""
    if r["already_done"]:
        head = f"this run already finished its {r['epochs']} epochs: nothing to do (change an option to train anew)\n"
    elif r["resumed_at"]:
        head = f"resumed from epoch {r['resumed_at']} of a run that was cut short\n"
    return head + (
        f"trained {r['epochs']} epochs on {r['train_samples']} samples; last epoch mIoU {r['last'].get('miou')} "
        f"on {r['val_images']} held-out annotations, best {r['best_miou']:.4f}; checkpoint in models/unet"
    )
