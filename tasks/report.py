"""Reports: contact sheets of items beside what each stage made of them, and a run's HTML page.

Contract of :func:`contact_sheet`: returns PNG bytes of a grid with one row per item and
one column per available per-item array (images as RGB, masks colour-coded by class, line
art as grey); items are the first ``n`` live corpus items in slot order.
"""

from __future__ import annotations

import html
import math
from typing import Any

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
    """``(H, W)`` uint8 class ids to RGB ``(H, W, 3)`` uint8 using :data:`PALETTE` (255 = ignore, grey)."""
    return PALETTE[mask]


def _as_rgb(name: str, item: np.ndarray) -> np.ndarray:
    if item.ndim == 3 and item.shape[-1] == 3:
        return item
    if "mask" in name:
        return colorize(item)
    return np.repeat(item[..., None], 3, axis=2)


def sheet_columns(ws: Workspace, family: str) -> list[str]:
    """The arrays a contact sheet of ``family`` shows, left to right (images first)."""
    head = f"{family}/images"
    columns = [head] + [
        a for a in ws.list_arrays() if a.startswith(f"{family}/") and a != head and not is_index_array(a)
    ]
    return [c for c in columns if len(ws.array(c).shape) in (3, 4)]


def contact_sheet(ws: Workspace, family: str = "corpus", n: int = 16, tile: int = 128) -> bytes:
    """PNG of the first ``n`` items of ``family``: each item a strip of its arrays, on a grid."""
    from PIL import Image

    table = item_table(ws, family)
    slots = sorted(table.by_slot)[:n]
    if not slots:
        raise ValueError(f"{ws.url} has no {family} items to show")
    head = f"{family}/images"
    columns = sheet_columns(ws, family)
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
            if "mask" in name and c:  # masks as an overlay on their image
                base = np.asarray(ws.array(head)[slot])
                if base.shape[:2] == item.shape[:2] and base.ndim == 3:
                    item = (0.45 * base.astype(np.float32) + 0.55 * item.astype(np.float32)).astype(np.uint8)
            resample = Image.Resampling.NEAREST if "mask" in name else Image.Resampling.BILINEAR
            small = np.asarray(Image.fromarray(item).resize((tile, tile), resample))
            sheet[y : y + tile, x0 + c * tile : x0 + (c + 1) * tile] = small
    return encode_png(sheet)


def html_page(title: str, sections: list[tuple[str, str]]) -> bytes:
    """A self-contained HTML page (no server, no scripts): ``sections`` are (heading, HTML body)."""
    body = "\n".join(f"<section><h2>{html.escape(h)}</h2>\n{b}</section>" for h, b in sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }} td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; border: 1px solid #ddd; image-rendering: pixelated; }}
figure {{ margin: 1em 0; }} figcaption {{ color: #555; }}
</style></head><body><h1>{html.escape(title)}</h1>
{body}
</body></html>
""".encode()


def html_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """An HTML table of ``rows`` (dicts); numbers right-aligned and rounded."""
    if not rows:
        return "<p>(none)</p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="n">{v:.4g}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="n">{v}</td>'
        return f"<td>{html.escape('' if v is None else str(v))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_figure(src: str, caption: str) -> str:
    cap = html.escape(caption)
    return f'<figure><img src="{html.escape(src)}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'
