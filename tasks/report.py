"""The demo report: a contact sheet PNG of corpus items beside what each stage made of them.

Contract of :func:`contact_sheet`: returns PNG bytes of a grid with one row per item and
one column per available per-item array (images as RGB, masks colour-coded by class, line
art as grey); items are the first ``n`` live corpus items in slot order.
"""

from __future__ import annotations

import math

import numpy as np

from storage.items import is_index_array, item_table
from storage.workspace import Workspace
from tasks.imageio import encode_png

# background, skin, face, eye, mouth, hair, clothes; then a fallback for other ids
PALETTE = np.array(
    [[0, 0, 0], [255, 205, 160], [250, 150, 110], [40, 80, 255], [230, 30, 60], [160, 40, 200], [40, 170, 80]]
    + [[128, 128, 128]] * 249,
    dtype=np.uint8,
)


def colorize(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` class ids to ``(H, W, 3)`` RGB using :data:`PALETTE` (255 = ignore, grey)."""
    return PALETTE[mask]


def _as_rgb(name: str, item: np.ndarray) -> np.ndarray:
    if item.ndim == 3 and item.shape[-1] == 3:
        return item
    if "mask" in name:
        return colorize(item)
    return np.repeat(item[..., None], 3, axis=2)


def contact_sheet(ws: Workspace, family: str = "corpus", n: int = 16, tile: int = 128) -> bytes:
    """PNG of the first ``n`` items of ``family``: each item a strip of its arrays, on a grid."""
    from PIL import Image

    table = item_table(ws, family)
    slots = sorted(table.by_slot)[:n]
    if not slots:
        raise ValueError(f"{ws.url} has no {family} items to show")
    head = f"{family}/images"
    columns = [head] + [
        a for a in ws.list_arrays() if a.startswith(f"{family}/") and a != head and not is_index_array(a)
    ]
    columns = [c for c in columns if len(ws.array(c).shape) in (3, 4)]
    marked = {c: set(ws.markers(c)) for c in columns[1:]}
    s = ws.shard_size
    per_row = max(1, round(math.sqrt(len(slots) / len(columns))))
    rows = math.ceil(len(slots) / per_row)
    strip_w = len(columns) * tile
    sheet = np.full((rows * tile, per_row * strip_w, 3), 255, np.uint8)
    for k, slot in enumerate(slots):
        y, x0 = (k // per_row) * tile, (k % per_row) * strip_w
        for c, name in enumerate(columns):
            if c and slot // s not in marked[name]:
                continue
            item = _as_rgb(name, np.asarray(ws.array(name)[slot]))
            resample = Image.Resampling.NEAREST if "mask" in name else Image.Resampling.BILINEAR
            small = np.asarray(Image.fromarray(item).resize((tile, tile), resample))
            sheet[y : y + tile, x0 + c * tile : x0 + (c + 1) * tile] = small
    return encode_png(sheet)
