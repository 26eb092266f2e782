"""The line-art flows: ``train-lineart`` (in process) and ``render-lineart`` (shards on Dask)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from prefect import get_run_logger

from flows.ops import mangaka_flow, shard_task
from flows.shards import corpus_table, describe_rendered, render_corpus
from flows.training import monitored
from storage.checkpoints import load_checkpoint
from storage.workspace import Workspace
from tasks.artline_options import LineartTrainOptions
from tasks.lineart import (
    METHODS,
    LineartShardSpec,
    array_name,
    lineart_shard,
    method_names,
    prepare_array,
    producer_version,
)

if TYPE_CHECKING:
    MethodName = str
else:  # the registry's names: the UI form's choices, checked by Prefect
    MethodName = Literal[method_names()]


@mangaka_flow("train-lineart", cluster=False)
def train_lineart_flow(workspace: str, options: LineartTrainOptions = LineartTrainOptions()) -> dict[str, Any]:  # noqa: B008
    """Train the ArtLine-style model with progressive resizing; checkpoints in ``models/artline``."""
    ws = Workspace(workspace)

    def line(m: dict[str, Any]) -> str:
        tuning = "fine-tuning " if m.get("holdout") == "annotated" else ""
        return f"{tuning}epoch {m['epoch']} at {m['size']} px: F1 {m['f1']} ({m['seconds']} s)"

    with monitored("train-lineart-metrics", f"train-lineart on {ws.url}", line) as mon:
        from tasks.artline import train_lineart  # torch: only where a model trains

        result = train_lineart(ws, options, mon.on_epoch, mon.on_step)
    if result["resumed_at"] and not result["already_done"]:
        get_run_logger().info("resumed after epoch %d", result["resumed_at"])
    return result


lineart_shard_task = shard_task("lineart-shard")(lineart_shard)


@mangaka_flow("render-lineart", "{method}")
def render_lineart(
    workspace: str,
    method: MethodName,
    model: str = "latest",
    shards: str | None = None,
    force: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Fill ``corpus/lineart/<method>`` for every corpus shard not yet rendered by this version.

    Args:
        workspace: local directory or s3://bucket/prefix
        method: the line-art method (one per file of tasks/lineart/)
        model: learned methods: a checkpoint tag (latest, best) or name
        shards: A:B, a range of shards (backfills)
        force: render again even shards done with this version
        device: auto, cpu or cuda (learned methods)
    """
    ws = Workspace(workspace)
    table = corpus_table(ws)
    m = METHODS[method]
    checkpoint, digest = "", ""
    if m.model is not None:
        ckpt = load_checkpoint(ws, m.model, model)
        checkpoint, digest = ckpt.name, ckpt.digest
    version = producer_version(method, digest)
    prepare_array(ws, method)
    return render_corpus(
        ws,
        table,
        stage="render-lineart",
        array=array_name(method),
        version=version,
        task=lineart_shard_task,
        make_spec=lambda s, slots: LineartShardSpec(ws.url, s, method, version, checkpoint, slots, device),
        shards=shards,
        force=force,
        gpu=m.model is not None,
        head={"method": method, "version": version, "checkpoint": checkpoint or None},
        label=f"lineart-{method}",
        artifact=f"render-lineart-{method}",
    )


def describe_train_lineart_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    head = ""
    if r["already_done"]:
        head = f"run {r['run']} already finished its {r['epochs']} epochs: nothing to do\n"
    elif r["resumed_at"]:
        head = f"resumed run {r['run']} after epoch {r['resumed_at']} of {r['epochs']}\n"
    last = r["last"]
    from tasks.status import holdout_text

    classic = ", ".join(f"{m} {last[f'{m}_f1']}" for m in ("xdog", "canny") if f"{m}_f1" in last)
    if "pretrained_f1" in last:
        classic += f", before fine-tuning {last['pretrained_f1']}"
    what = f"trained the line-art model {r['epochs']} epochs on {r['pairs']}"
    if r.get("finetune"):
        what = f"fine-tuned the line-art model {r['epochs']} epochs on the annotated images, from {r['pretrained']}"
    text = (
        f"{what}; held-out boundary F1 {last.get('f1')}{holdout_text(last.get('holdout'))} at {last.get('size')} px"
        + (f" (same images: {classic})" if classic else "")
    )
    if "family_f1" in last:
        classic = ", ".join(f"{m} {last[f'family_{m}_f1']}" for m in ("xdog", "canny") if f"family_{m}_f1" in last)
        text += f"; F1 {last['family_f1']}{holdout_text(last.get('family'))}" + (f" ({classic})" if classic else "")
    return head + text + f"; checkpoint {r['checkpoint']} in models/artline"


def describe_render_lineart(r: dict[str, Any], params: dict[str, Any]) -> str:
    return describe_rendered(r, array_name(r["method"]))


def precheck_render_lineart(params: dict[str, Any], given: set[str]) -> None:
    from storage.checkpoints import resolve

    model_dir = METHODS[params["method"]].model
    if model_dir is not None:  # a learned method: its checkpoint must be there
        resolve(Workspace(params["workspace"]), model_dir, params.get("model", "latest"))
