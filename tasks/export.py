"""Export: one PNG per item of an array, named by the item's id.

Images are written as RGB PNGs, masks as single-channel PNGs of class ids (255 = ignore),
line art and other single-channel arrays as greyscale. Contract of :func:`export_shard`:
it reads one Zarr shard, writes ``OUT/<id>.png`` for each live item in it, and returns the
number written. Re-running it rewrites identical files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.location import Location
from storage.workspace import Workspace
from tasks.imageio import encode_png


@dataclass(frozen=True)
class ExportSpec:
    workspace: str
    array: str
    shard: int
    out: str
    items: list[tuple[int, str]]  # (slot, id) of the live items in this shard


def export_shard(spec: ExportSpec) -> int:
    ws = Workspace(spec.workspace)
    data = ws.read_shard(spec.array, spec.shard)
    start = spec.shard * ws.shard_size
    out = Location(spec.out)
    for slot, item in spec.items:
        array = np.ascontiguousarray(data[slot - start])
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype != np.uint8:
            raise ValueError(f"{spec.array} holds {array.dtype}; only uint8 image arrays export to PNG")
        out.write_bytes(f"{item}.png", encode_png(array))
    return len(spec.items)


@dataclass(frozen=True)
class LabelmeExportSpec:
    workspace: str
    shard: int
    out: str
    items: list[tuple[int, str]]  # (slot, id)
    classes: list[str]


def export_labelme_shard(spec: LabelmeExportSpec) -> int:
    """``OUT/<id>.png`` (the corpus image) and ``OUT/<id>.json`` (its pseudo-label as polygons)."""
    from tasks.labelme import mask_to_json

    ws = Workspace(spec.workspace)
    images = ws.read_shard("corpus/images", spec.shard)
    masks = ws.read_shard("corpus/masks", spec.shard)
    start = spec.shard * ws.shard_size
    out = Location(spec.out)
    for slot, item in spec.items:
        out.write_bytes(f"{item}.png", encode_png(np.ascontiguousarray(images[slot - start])))
        out.write_bytes(f"{item}.json", mask_to_json(masks[slot - start], spec.classes, f"{item}.png"))
    return len(spec.items)
