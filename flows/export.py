"""The ``export`` flow: one PNG per item of an array, named by its id."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from flows.ops import mangaka_flow, shard_task
from flows.shards import run_shards
from storage.items import item_table
from storage.workspace import Workspace, WorkspaceError, family_of
from tasks.export import ExportSpec, LabelmeExportSpec, export_labelme_shard, export_shard

export_shard_task = shard_task("export-shard")(export_shard)


@mangaka_flow("export", "{array} to {out}")
def export(workspace: str, array: str, out: str) -> dict[str, int]:
    """Write ``out/<id>.png`` for every item of ``array`` that has been produced.

    Args:
        workspace: local directory or s3://bucket/prefix
        array: the array, e.g. corpus/masks or corpus/lineart/xdog
        out: the folder (local or s3://) to write into
    """
    ws = Workspace(workspace)
    family = family_of(array)
    arr = ws.array(array)  # a clear error if it does not exist
    if arr.ndim not in (3, 4) or str(arr.dtype) != "uint8":
        raise WorkspaceError(
            f"{array} holds {arr.dtype} items of shape {arr.shape[1:]}: export writes image and mask arrays"
        )
    table = item_table(ws, family)
    # Derived arrays hold data only where a shard was completed; ingested ones everywhere.
    produced = set(ws.markers(array)) if array != f"{family}/images" else None
    specs = []
    for shard in range(ws.shards_of(table.length)):
        items = table.slots_in(ws.shard_slots(shard, table.length))
        if items and (produced is None or shard in produced):
            specs.append(ExportSpec(ws.url, array, shard, out, items))
    written = sum(run_shards(export_shard_task, specs, f"export {array}"))
    get_run_logger().info("exported %d items of %s to %s", written, array, out)
    return {"exported": written}


export_labelme_shard_task = shard_task("export-labelme-shard")(export_labelme_shard)


@mangaka_flow("export-labelme", "to {out}")
def export_labelme(workspace: str, out: str, lowest_confidence: int | None = None) -> dict[str, float]:
    """Pseudo-labelled corpus images as labelme files, to correct and ingest again.

    Args:
        workspace: local directory or s3://bucket/prefix
        out: the folder to write image + JSON pairs into
        lowest_confidence: only the K least confident images (default: all)
    """
    import math

    ws = Workspace(workspace)
    table = item_table(ws, "corpus")
    done = set(ws.markers("corpus/masks"))
    if not done:
        raise WorkspaceError(f"{ws.url} has no pseudo-labels yet: run pseudolabel first")
    conf = ws.array("corpus/confidence")[:]
    labelled = [
        (float(conf[e["slot"]]), e["slot"], i) for i, e in table.by_id.items() if e["slot"] // ws.shard_size in done
    ]
    labelled = [x for x in labelled if not math.isnan(x[0])]
    labelled.sort()
    chosen = labelled[:lowest_confidence] if lowest_confidence else labelled
    by_shard: dict[int, list[tuple[int, str]]] = {}
    for _, slot, item in chosen:
        by_shard.setdefault(slot // ws.shard_size, []).append((slot, item))
    specs = [LabelmeExportSpec(ws.url, s, out, sorted(items), ws.classes) for s, items in sorted(by_shard.items())]
    written = sum(run_shards(export_labelme_shard_task, specs, "export-labelme"))
    get_run_logger().info("wrote %d labelme files to %s", written, out)
    return {"exported": written, "max_confidence": round(chosen[-1][0], 4) if chosen else 0}


def describe_export(r: dict[str, Any], params: dict[str, Any]) -> str:
    return f"exported {r['exported']} items of {params['array']} to {params['out']}"


def describe_export_labelme(r: dict[str, Any], params: dict[str, Any]) -> str:
    out = params["out"]
    return (
        f"wrote {r['exported']} labelme files (image + JSON) to {out} (confidence up to {r['max_confidence']}); "
        f"correct them with `mangaka annotate {out}`, then `mangaka ingest-labelme {out}`"
    )


def precheck_export(params: dict[str, Any], given: set[str]) -> None:
    """The array name and its kind are refused before anything starts."""
    arr = Workspace(params["workspace"]).array(params["array"])
    if arr.ndim not in (3, 4):
        raise WorkspaceError(f"{params['array']} is not an image or mask array")
