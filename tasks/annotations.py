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
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from storage.location import exists_file
from storage.sources import SourceRef, read_file
from storage.workspace import DEFAULT_CLASSES, Workspace
from tasks.imageio import DEFAULT_MAX_PIXELS, square, square_mask
from tasks.ingest import ShardResult, read_shard_sources, shard_buffer, unless_done
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
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse larger images before decoding")
    max_bytes: int = Field(200_000_000, ge=1, description="refuse larger files before reading them")

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
    ws.require_pair(IMAGES, MASKS, options.size, length, owner="ingest-labelme")


@unless_done(IMAGES)
def ingest_labelme_shard(spec: LabelmeShardSpec, ws: Workspace) -> ShardResult:
    """Read, check and rasterise the labelme files of one shard; quarantine the bad ones."""
    from PIL import Image

    t0 = time.perf_counter()
    opts = LabelmeOptions(**spec.options)
    ids = class_ids(opts.classes)
    n = len(spec.sources)
    images = shard_buffer(n, (opts.size, opts.size, 3))
    masks = shard_buffer(n, (opts.size, opts.size))

    def use(j: int, raw: bytes, ref: SourceRef, entry: dict[str, Any]) -> None:
        ann = read_annotation(raw, ref.path, spec.root, ids, opts.max_pixels, max_bytes=opts.max_bytes)
        entry["sha256"] = hashlib.sha256(raw + b"\0" + ann.image_bytes).hexdigest()
        images[j] = square(Image.fromarray(ann.image), opts.size, opts.fit)
        masks[j] = square_mask(ann.mask, opts.size, opts.fit)

    entries, holes = read_shard_sources(
        ws,
        spec.sources,
        spec.shard * ws.shard_size,
        STAGE,
        opts.max_bytes,
        use,
        judged=(LabelmeError,),
        faults=(ImageReadError,),  # a fault of the run, not of the file: the shard fails and is done again
        decoder="unreadable annotation",
    )
    ws.write_shard(IMAGES, spec.shard, images, holes)
    ws.write_shard(MASKS, spec.shard, masks, holes)
    ws.write_marker(MASKS, spec.shard, spec.version)
    ws.write_marker(IMAGES, spec.shard, spec.version, entries=entries)
    dt = time.perf_counter() - t0
    bad = len(holes)
    log.info("annotated shard %d: %d stored, %d quarantined in %.1f s", spec.shard, n - bad, bad, dt)
    return ShardResult(IMAGES, spec.shard, False, n - bad, bad, dt)


def labels_file_classes(path: str | None) -> tuple[str, ...]:
    """The class list from a labels.txt (local or ``s3://``; ``None``: the default seven classes)."""
    from tasks.labelme import parse_labels

    if path is None:
        return DEFAULT_CLASSES
    if not exists_file(path):
        raise FileNotFoundError(f"labels file {path} does not exist")
    return tuple(parse_labels(read_file(path).decode("utf-8")))
