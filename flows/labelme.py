"""The ``ingest-labelme`` flow: a folder of labelme files into ``annotated/*``."""

from __future__ import annotations

import argparse
from typing import Any

from flows import UsageError
from flows.ingest import ingest_family
from flows.ops import mangaka_flow, shard_task
from flows.shards import summarise
from storage.location import absolute, exists_dir
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
    labels_file_classes,
    prepare_arrays,
)
from tasks.ingest import fix_shard_size, shard_specs
from tasks.labelme import LabelmeError

ingest_labelme_shard_task = shard_task("ingest-labelme-shard")(ingest_labelme_shard)


@mangaka_flow("ingest-labelme", "from {src}")
def ingest_labelme(
    workspace: str,
    src: str,
    options: LabelmeOptions = LabelmeOptions(),  # noqa: B008 - pydantic models are immutable
    shard_size: int | None = None,
    labels: str | None = None,
) -> dict[str, Any]:
    """Add (or replace, by id) the labelme annotations under the folder ``src``.

    Args:
        workspace: local directory or s3://bucket/prefix
        src: a folder of labelme JSON files and their images
        options: how annotations are checked, rasterised and made square
        shard_size: items per shard (fixed at the first ingestion; default the workspace's, else 256)
        labels: labels.txt in labelme2voc's format, for options.classes (default: the 7 classes)
    """
    if labels is not None:
        try:
            options = options.model_copy(update={"classes": labels_file_classes(labels)})
        except LabelmeError as exc:
            raise UsageError(f"{labels}: {exc}") from None
    root = absolute(src)
    ws = Workspace(workspace)
    fix_shard_size(ws, shard_size, classes=list(options.classes))
    record = {**options.model_dump(), "root": root}

    def options_of(b: Any) -> dict[str, Any]:
        return {k: v for k, v in b.options.items() if k != "root"}

    summary, _, table, _ = ingest_family(
        ws,
        stage=STAGE,
        family=FAMILY,
        array=IMAGES,
        listing=list_sources(root, JSON_SUFFIXES),
        version=options.version,
        record=record,
        prepare=lambda b: prepare_arrays(ws, LabelmeOptions(**options_of(b)), b.end),
        specs_of=lambda b: [
            LabelmeShardSpec(ws.url, b.options["root"], s.shard, s.version, options_of(b), s.sources)
            for s in shard_specs(ws, b, IMAGES)
        ],
        task=ingest_labelme_shard_task,
        source=root,
    )
    summary.update(replaced=len(table.replaced), annotated_items=summary.pop("items"))
    return summarise(ws, "ingest-labelme-summary", summary, f"ingest-labelme of {root} into {ws.url}")


def describe_ingest_labelme(r: dict[str, Any], params: dict[str, Any]) -> str:
    return (
        f"ingested {r['stored']} annotations into annotated/images + annotated/masks ({r['annotated_items']} in "
        f"all, {r['replaced']} replaced so far); {r['already_ingested']} already there, {r['quarantined']} quarantined"
        + ("\nsee `mangaka status` for the quarantine and its reasons" if r["quarantined"] else "")
    )


def annotate_command(a: argparse.Namespace, config: Any) -> int:
    """``mangaka annotate DIR``: the labelme GUI on DIR with the workspace's classes."""
    import shutil
    import subprocess
    import tempfile

    from flows import UsageError
    from storage.workspace import Workspace

    if not exists_dir(a.dir):
        raise UsageError(f"{a.dir} is not a folder")
    if (exe := shutil.which("labelme")) is None:
        raise UsageError("labelme is not installed: install the annotate extra, pip install -e '.[annotate]'")
    classes = Workspace(config.workspace).classes
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="mangaka-labels-", delete=False) as f:
        f.write("\n".join(["__ignore__", "_background_", *classes[1:]]) + "\n")
    # --nodata keeps images out of the JSON (imagePath only), as mangaka's own files do.
    return subprocess.call([exe, a.dir, "--labels", f.name, "--nodata", "--autosave"])


def precheck_ingest_labelme(params: dict[str, Any], given: set[str]) -> None:
    from flows.ingest import workspace_size

    workspace_size(params, given)
