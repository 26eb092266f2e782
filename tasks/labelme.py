"""The labelme JSON format, read and written by mangaka itself (labelme is GPL-3 and its
Python API is private since 7.0; it is only ever used as the annotation GUI).

Rasterisation follows labelme's own ``shape_to_mask``: Pillow draws each shape with fill
*and* outline, and later shapes paint over earlier ones. Contract of
:func:`shapes_to_mask`: shapes in, ``(height, width)`` uint8 class ids out, 0 for pixels no
shape covers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

LABELME_VERSION = "5.5.0"
LINE_WIDTH = 10  # labelme's width for line and linestrip shapes
POINT_SIZE = 5  # labelme's radius for point shapes


def shape_to_mask(height: int, width: int, points: Sequence[Sequence[float]], shape_type: str | None) -> np.ndarray:
    """Boolean ``(height, width)`` mask of one labelme shape, as labelme draws it."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [(float(x), float(y)) for x, y in points]
    kind = shape_type or "polygon"
    if kind == "circle":
        (cx, cy), (px, py) = xy[:2]
        d = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind == "rectangle":
        (x0, y0), (x1, y1) = xy[:2]
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    elif kind in ("line", "linestrip"):
        draw.line(xy=xy, fill=1, width=LINE_WIDTH)
    elif kind == "point":
        cx, cy = xy[0]
        r = POINT_SIZE
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    else:
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def shapes_to_mask(
    shapes: Sequence[Mapping[str, Any]], height: int, width: int, class_ids: Mapping[str, int]
) -> np.ndarray:
    """Class-id map of labelme ``shapes`` (dicts with label, points, shape_type), paint order."""
    out = np.zeros((height, width), dtype=np.uint8)
    for shape in shapes:
        mask = shape_to_mask(height, width, shape["points"], shape.get("shape_type"))
        out[mask] = class_ids[shape["label"]]
    return out


def polygons_to_json(
    shapes: Sequence[tuple[str, Sequence[tuple[float, float]]]], image_path: str, height: int, width: int
) -> bytes:
    """labelme JSON (no embedded image data) for labelled polygons in paint order."""
    doc: dict[str, Any] = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": [
            {
                "label": label,
                "points": [[float(x), float(y)] for x, y in pts],
                "group_id": None,
                "description": "",
                "shape_type": "polygon",
                "flags": {},
                "mask": None,
            }
            for label, pts in shapes
        ],
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }
    return json.dumps(doc, indent=2).encode()
