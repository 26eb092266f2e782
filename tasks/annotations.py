"""Annotation ingestion: a folder of labelme files into ``annotated/images`` + ``annotated/masks``.

The same journal, slots and markers as corpus ingestion (``tasks.ingest``), with two
differences: an item is a labelme file (its content hash covers the JSON and the image),
and a file whose id is already annotated replaces that item, so corrected files come
back from wherever they were saved. Images are made square like corpus images
(Lanczos); masks the same way with nearest-neighbour, padding with 255 (ignore).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.sources import SourceReader, SourceRef
from storage.workspace import DEFAULT_CLASSES, Workspace, image_spec, mask_spec
from tasks.imageio import DEFAULT_MAX_PIXELS, square, square_mask
from tasks.ingest import ShardResult, SourceReadError, Unusable, Vanished, read_source, ref_fields, shard_buffer
from tasks.labelme import ImageReadError, LabelmeError, class_ids, read_annotation

log = logging.getLogger(__name__)

STAGE = "ingest-labelme"
FAMILY = "annotated"
IMAGES = "annotated/images"
MASKS = "annotated/masks"
CODE_VERSION = "labelme-1"
JSON_SUFFIXES = frozenset({".json"})


class LabelmeOptions(BaseModel):
    """How labelme files become annotated items."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(512, ge=16, le=4096, description="side of the stored square image and mask")
    fit: Literal["crop", "pad"] = Field("crop", description="centre-crop, or pad (image white, mask ignore)")
    classes: tuple[str, ...] = Field(DEFAULT_CLASSES, description="class names, background first")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1)
    max_bytes: int = Field(200_000_000, ge=1)

    @property
    def version(self) -> str:
        key = f"{CODE_VERSION}|{self.size}|{self.fit}|{'/'.join(self.classes)}|{self.max_pixels}|{self.max_bytes}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class LabelmeShardSpec:
    workspace: str
    root: str  # the folder every imagePath must stay inside
    shard: int
    version: str
    options: dict[str, Any]
    sources: list[dict[str, Any]]


def prepare_arrays(ws: Workspace, options: LabelmeOptions, length: int) -> None:
    """Create or grow both arrays (the flow is their metadata's single writer)."""
    ws.ensure_config(image_size=options.size, classes=list(options.classes))
    ws.require_array(IMAGES, image_spec(options.size), length, owner="ingest-labelme")
    ws.require_array(MASKS, mask_spec(options.size), length, owner="ingest-labelme")


def ingest_labelme_shard(spec: LabelmeShardSpec) -> ShardResult:
    """Read, check and rasterise the labelme files of one shard; quarantine the bad ones."""
    ws = Workspace(spec.workspace)
    if ws.is_done(IMAGES, spec.shard, spec.version):
        return ShardResult(IMAGES, spec.shard, skipped=True)
    t0 = time.perf_counter()
    opts = LabelmeOptions(**spec.options)
    ids = class_ids(opts.classes)
    start = spec.shard * ws.shard_size
    n = len(spec.sources)
    images = shard_buffer(n, (opts.size, opts.size, 3))
    masks = shard_buffer(n, (opts.size, opts.size))
    entries: list[dict[str, Any]] = []
    holes: list[int] = []
    with SourceReader() as reader:
        for j, record in enumerate(spec.sources):
            ref = SourceRef.from_dict(ref_fields(record))
            entry: dict[str, Any] = {"slot": start + j, "id": ref.id, "source": ref.source, "fp": record["fingerprint"]}
            try:
                raw = read_source(reader, ref, opts.max_bytes)
                ann = read_annotation(raw, ref.path, spec.root, ids, opts.max_pixels, max_bytes=opts.max_bytes)
            except (SourceReadError, ImageReadError):
                raise  # a fault of the run, not of the file: the shard fails and is done again
            except Vanished as exc:
                log.warning("%s: %s; it is ingested when it is there again", ref.source, exc)
                entry.update(status="missing", reason=str(exc))
                entries.append(entry)
                holes.append(j)
                continue
            except (Unusable, LabelmeError) as exc:
                reason = str(exc)
            except Exception as exc:  # hostile files: isolate each one
                reason = f"unreadable annotation: {exc.__class__.__name__}: {exc}"
            else:
                from PIL import Image

                entry["sha256"] = hashlib.sha256(raw + b"\0" + ann.image_bytes).hexdigest()
                images[j] = square(Image.fromarray(ann.image), opts.size, opts.fit)
                masks[j] = square_mask(ann.mask, opts.size, opts.fit)
                entry["status"] = "ok"
                entries.append(entry)
                continue
            ws.quarantine(ref.source, STAGE, reason)
            entry.update(status="quarantined", reason=reason)
            entries.append(entry)
            holes.append(j)
    ws.write_shard(IMAGES, spec.shard, images, holes)
    ws.write_shard(MASKS, spec.shard, masks, holes)
    ws.write_marker(MASKS, spec.shard, spec.version)
    ws.write_marker(IMAGES, spec.shard, spec.version, entries=entries)
    dt = time.perf_counter() - t0
    bad = len(holes)
    log.info("annotated shard %d: %d stored, %d quarantined in %.1f s", spec.shard, n - bad, bad, dt)
    return ShardResult(IMAGES, spec.shard, False, n - bad, bad, dt)


def labels_file_classes(path: str | None) -> tuple[str, ...]:
    """The class list from a labels.txt (``None``: the default seven classes)."""
    from tasks.labelme import parse_labels

    if path is None:
        return DEFAULT_CLASSES
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        return tuple(parse_labels(f.read()))
