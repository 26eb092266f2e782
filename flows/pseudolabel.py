"""The ``pseudolabel`` flow: the latest (or a named) segmenter over every corpus shard."""

from __future__ import annotations

from typing import Any

from flows.ops import mangaka_flow, shard_task
from flows.shards import corpus_table, render_corpus
from storage.checkpoints import load_checkpoint
from storage.workspace import Workspace
from tasks.pseudolabel import (
    MASKS,
    PseudolabelOptions,
    PseudolabelShardSpec,
    prepare_arrays,
    producer_version,
    pseudolabel_shard,
)

pseudolabel_shard_task = shard_task("pseudolabel-shard")(pseudolabel_shard)


@mangaka_flow("pseudolabel")
def pseudolabel(
    workspace: str,
    options: PseudolabelOptions = PseudolabelOptions(),  # noqa: B008
    shards: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Label every corpus shard not yet labelled by this model.

    Args:
        workspace: local directory or s3://bucket/prefix
        options: the segmenter and how to run it
        shards: A:B, a range of shards (backfills)
        force: relabel even shards done with this model
    """
    ws = Workspace(workspace)
    ckpt = load_checkpoint(ws, "unet", options.model)
    version = producer_version(ckpt.digest, options)
    table = corpus_table(ws)
    prepare_arrays(ws, options.confidence_map)
    opts = options.model_dump()
    return render_corpus(
        ws,
        table,
        stage="pseudolabel",
        array=MASKS,
        version=version,
        task=pseudolabel_shard_task,
        make_spec=lambda s, slots: PseudolabelShardSpec(ws.url, s, version, ckpt.name, slots, opts),
        shards=shards,
        force=force,
        gpu=options.engine != "onnxruntime",  # that engine runs on CPUs
        head={"checkpoint": ckpt.name, "digest": ckpt.digest},
        count="labelled",
        artifact="pseudolabel-summary",
    )


def describe_pseudolabel(r: dict[str, Any], params: dict[str, Any]) -> str:
    return (
        f"labelled {r['labelled']} corpus images in {r['shards']} shard(s) with {r['checkpoint']} ({r['digest']}); "
        f"{r['corpus_items']} corpus items in all"
    )


def precheck_pseudolabel(params: dict[str, Any], given: set[str]) -> None:
    from storage.checkpoints import resolve

    resolve(Workspace(params["workspace"]), "unet", params["options"].model)  # trained?
