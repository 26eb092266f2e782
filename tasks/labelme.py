"""The labelme JSON format, read and written by mangaka itself (labelme is GPL-3 and its
Python API is private since 7.0; it is only ever used as the annotation GUI).

Rasterisation follows labelme's own ``shape_to_mask``: Pillow draws each shape with fill
*and* outline, and later shapes paint over earlier ones. Contract of
:func:`shapes_to_mask`: shapes in, ``(height, width)`` uint8 class ids out, 0 for pixels no
shape covers, 255 for ``__ignore__``.

:func:`read_annotation` is the hostile-input boundary: whatever the file holds, it returns
an upright RGB image and its class map, or raises :class:`LabelmeError` saying why.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from storage.sources import NotRegularFile, OutsideFolder, read_relative
from tasks.imageio import DEFAULT_MAX_PIXELS, BadImage, load_rgb, open_image

IGNORE = 255
DEFAULT_MAX_BYTES = 200_000_000
"""The largest image file an ``imagePath`` may name, in bytes (``LabelmeOptions.max_bytes``)."""
SHAPE_POINTS = {"rectangle": 2, "circle": 2, "line": 2, "point": 1, "mask": 2}


class LabelmeError(ValueError):
    """A labelme file mangaka cannot use; ``str(exc)`` says why."""


def parse_labels(text: str) -> list[str]:
    """Class names from labelme2voc's ``labels.txt``: index 0 is the background.

    ``__ignore__`` (first line, optional) maps to 255 in masks, ``_background_`` to 0,
    then one class a line, 1, 2, ...
    """
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if names and names[0] == "__ignore__":
        names = names[1:]
    if not names or names[0] != "_background_":
        raise LabelmeError("labels.txt must list __ignore__ (optional), then _background_, then one class a line")
    if len(set(names)) != len(names) or "__ignore__" in names:
        raise LabelmeError("labels.txt lists a class twice")
    if len(names) > 255:
        raise LabelmeError(f"labels.txt lists {len(names)} classes; at most 255 fit a mask")
    return ["background", *names[1:]]


def class_ids(classes: Sequence[str]) -> dict[str, int]:
    """Label to class id for a class list whose index 0 is the background."""
    ids = {name: i for i, name in enumerate(classes)}
    ids.update({"_background_": 0, "__ignore__": IGNORE})
    return ids


LABELME_VERSION = "5.5.0"
LINE_WIDTH = 10  # labelme's width for line and linestrip shapes
POINT_SIZE = 5  # labelme's radius for point shapes


def shape_to_mask(
    height: int,
    width: int,
    points: Sequence[Sequence[float]],
    shape_type: str | None,
    mask_b64: str | None = None,
) -> np.ndarray:
    """Boolean ``(height, width)`` mask of one labelme shape, as labelme draws it."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [(float(x), float(y)) for x, y in points]
    kind = shape_type or "polygon"
    if kind == "mask":
        return _mask_patch(height, width, xy, mask_b64)
    if kind in ("polygon", "oriented_rectangle"):
        xy = clip_polygon(xy, width, height)
        if not xy:
            return np.zeros((height, width), dtype=bool)
    elif kind != "circle":
        xy = [(min(max(x, -2.0 * width), 3.0 * width), min(max(y, -2.0 * height), 3.0 * height)) for x, y in xy]
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
    for k, shape in enumerate(shapes):
        try:
            mask = shape_to_mask(height, width, shape["points"], shape.get("shape_type"), shape.get("mask"))
        except (OverflowError, ValueError, MemoryError) as exc:
            if isinstance(exc, LabelmeError):
                raise
            raise LabelmeError(f"shape {k} ({shape.get('label')}) cannot be drawn: {exc}") from None
        out[mask] = class_ids[shape["label"]]
    return out


def clip_polygon(xy: Sequence[tuple[float, float]], width: int, height: int) -> list[tuple[float, float]]:
    """Clip a polygon to a box just outside the canvas (Sutherland-Hodgman).

    The raster inside the canvas is unchanged; what is clipped away is only ever outside,
    and far-away or huge coordinates can no longer upset the rasteriser.
    """
    lo_x, lo_y, hi_x, hi_y = -1.0, -1.0, width + 1.0, height + 1.0
    pts = list(xy)
    for axis, bound, keep_above in ((0, lo_x, True), (0, hi_x, False), (1, lo_y, True), (1, hi_y, False)):
        if not pts:
            break
        out: list[tuple[float, float]] = []
        for k, cur in enumerate(pts):
            prev = pts[k - 1]
            cur_in = cur[axis] >= bound if keep_above else cur[axis] <= bound
            prev_in = prev[axis] >= bound if keep_above else prev[axis] <= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append(cross)
            if cur_in:
                out.append(cur)
        pts = out
    return pts


def _mask_patch(height: int, width: int, xy: list[tuple[float, float]], mask_b64: str | None) -> np.ndarray:
    """A ``mask`` shape: a PNG patch (base64) placed at its box's top-left corner.

    The patch is the box cut out of the image, so it is never larger than the image: its
    header is checked against the image's size before any pixel is decoded (a few bytes of
    base64 can otherwise claim 16000 x 16000).
    """
    if not isinstance(mask_b64, str) or not mask_b64:
        raise LabelmeError("a mask shape has no mask data")
    try:
        im = open_image(base64.b64decode(mask_b64, validate=True), height * width, fit_in=(width, height))
        patch = np.asarray(im.convert("L")) > 0
    except BadImage as exc:
        if str(exc).startswith("decompression bomb"):
            raise LabelmeError(f"a mask shape's patch must fit in its {width}x{height} image: {exc}") from None
        raise LabelmeError(f"a mask shape's data is not a base64 PNG: {exc}") from None
    except (binascii.Error, OSError, ValueError) as exc:
        raise LabelmeError(f"a mask shape's data is not a base64 PNG: {exc}") from None
    out = np.zeros((height, width), dtype=bool)
    x0, y0 = int(xy[0][0]), int(xy[0][1])
    ys, xs = slice(max(y0, 0), min(y0 + patch.shape[0], height)), slice(max(x0, 0), min(x0 + patch.shape[1], width))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = patch[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return out


@dataclass
class Annotation:
    """An annotated image: ``image`` (H, W, 3) uint8 RGB upright, ``mask`` (H, W) uint8 class ids."""

    image: np.ndarray
    mask: np.ndarray
    image_bytes: bytes


def _validate_shapes(doc: dict[str, Any], ids: Mapping[str, int]) -> list[dict[str, Any]]:
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise LabelmeError("not a labelme file: no list of shapes")
    for k, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise LabelmeError(f"shape {k} is not an object")
        label, kind, pts = shape.get("label"), shape.get("shape_type") or "polygon", shape.get("points")
        if not isinstance(label, str):
            raise LabelmeError(f"shape {k} has no label")
        if not isinstance(kind, str):
            raise LabelmeError(f"shape {k} ({label}) has a shape_type that is not a string: {kind!r}")
        if label not in ids:
            known = ", ".join(n for n in ids if n != "_background_")
            raise LabelmeError(f"unknown label {label!r} in shape {k} (classes: {known})")
        if not isinstance(pts, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in pts):
            raise LabelmeError(f"shape {k} ({label}) has malformed points")
        try:
            values = [float(v) for p in pts for v in p]
        except (TypeError, ValueError):
            raise LabelmeError(f"shape {k} ({label}) has non-numeric points") from None
        if not all(math.isfinite(v) for v in values):
            raise LabelmeError(f"shape {k} ({label}) has NaN or infinite coordinates")
        need = SHAPE_POINTS.get(kind)
        if kind in ("polygon", "oriented_rectangle"):
            if len(pts) < 3:
                raise LabelmeError(f"polygon {k} ({label}) has {len(pts)} points; a polygon needs at least 3")
        elif kind == "linestrip":
            if len(pts) < 2:
                raise LabelmeError(f"linestrip {k} ({label}) needs at least 2 points")
        elif need is None:
            raise LabelmeError(f"shape {k} ({label}) has unknown shape_type {kind!r}")
        elif len(pts) != need:
            raise LabelmeError(f"{kind} {k} ({label}) has {len(pts)} points; it needs {need}")
    return shapes


def read_annotation(
    raw_json: bytes,
    json_path: str,
    root: str,
    ids: Mapping[str, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Annotation:
    """Read one labelme file (its bytes, its path, the folder it must stay inside).

    Every decode is bounded by ``max_pixels`` (the image, embedded or not, and each mask
    patch, which must also fit in the image); an ``imagePath`` is read only if it is a
    regular file of at most ``max_bytes``.
    """
    try:
        doc = json.loads(raw_json)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelmeError(f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict) or "shapes" not in doc or not ("imagePath" in doc or "imageData" in doc):
        raise LabelmeError("not a labelme file: needs shapes and imagePath or imageData")
    shapes = _validate_shapes(doc, ids)
    image_bytes = _image_bytes(doc, json_path, root, max_bytes)
    try:
        image = np.asarray(load_rgb(image_bytes, max_pixels))
    except BadImage as exc:
        raise LabelmeError(f"image: {exc}") from None
    h, w = image.shape[:2]
    want = (doc.get("imageHeight"), doc.get("imageWidth"))
    if want != (None, None) and want != (h, w):
        raise LabelmeError(f"size mismatch: the file says {want[1]}x{want[0]}, the image is {w}x{h}")
    return Annotation(image, shapes_to_mask(shapes, h, w, ids), image_bytes)


def _image_bytes(doc: dict[str, Any], json_path: str, root: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    data = doc.get("imageData")
    if data:
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise LabelmeError(f"imageData is not base64: {exc}") from None
    rel = doc.get("imagePath")
    if not isinstance(rel, str) or not rel:
        raise LabelmeError("no imageData and no imagePath")
    rel = rel.replace("\\", "/")
    try:
        return read_relative(json_path, rel, root, max_bytes)
    except OutsideFolder as exc:
        if exc.absolute:
            raise LabelmeError(f"imagePath {rel!r} is absolute; it must be relative to the JSON file") from None
        raise LabelmeError(f"imagePath {rel!r} leads outside the folder") from None
    except NotRegularFile as exc:
        raise LabelmeError(f"imagePath {rel!r} refused: {exc}") from None
    except ValueError as exc:  # over the limit
        raise LabelmeError(f"image {rel} refused: {exc}") from None
    except FileNotFoundError:
        raise LabelmeError(f"missing image: {rel}") from None
    except OSError as exc:  # EIO, a permission refused: a fault of the run, not of the annotation
        raise ImageReadError(exc.errno, f"cannot read image {rel}: {exc.strerror or exc}") from exc


class ImageReadError(OSError):
    """Reading an annotation's image failed for a reason outside the file's content (I/O, permissions):
    the shard fails and is done again; the annotation is not quarantined for it."""


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


def mask_to_shapes(mask: np.ndarray, classes: Sequence[str], tolerance: float = 0.0) -> list[dict[str, Any]]:
    """labelme polygons that rasterise back to ``mask`` (``(H, W)`` uint8 class ids).

    Every connected region of every class becomes the polygon of its outer boundary;
    polygons are painted largest first, so a region inside another's hole (an eye in a
    face, a background gap enclosed by hair) is painted after, and over, its encloser.
    ``tolerance`` (pixels) simplifies the boundaries; the default 0 keeps every corner of the
    pixel boundary, and the file rasterises back to the very same mask. 255 becomes
    ``__ignore__``.
    """
    import cv2

    names = {i: name for i, name in enumerate(classes)} | {0: "_background_", IGNORE: "__ignore__"}
    regions: list[tuple[float, str, list[list[float]]]] = []
    for value in np.unique(mask):
        if int(value) not in names:
            raise ValueError(f"class id {int(value)} is not in the class list ({len(classes)} classes)")
        binary = (mask == value).astype(np.uint8)
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        for contour, links in zip(contours, hierarchy[0], strict=True):
            if links[3] != -1:  # a hole: whatever fills it is painted later
                continue
            poly = cv2.approxPolyDP(contour, tolerance, True)[:, 0, :] if tolerance > 0 else contour[:, 0, :]
            points = [[float(x), float(y)] for x, y in poly]
            while len(points) < 3:  # one- or two-pixel regions: a degenerate polygon still paints them
                points.append(points[-1])
            regions.append((float(cv2.contourArea(contour)), names[int(value)], points))
    regions.sort(key=lambda r: -r[0])
    if regions and regions[0][1] == "_background_" and _covers_canvas(regions[0][2], mask.shape):
        regions = regions[1:]  # the background behind everything is labelme's default
    return [
        {
            "label": label,
            "points": pts,
            "group_id": None,
            "description": "",
            "shape_type": "polygon",
            "flags": {},
            "mask": None,
        }
        for _, label, pts in regions
    ]


def _covers_canvas(points: list[list[float]], shape: tuple[int, ...]) -> bool:
    h, w = shape[:2]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs) <= 0 and min(ys) <= 0 and max(xs) >= w - 1 and max(ys) >= h - 1 and len(points) == 4


def mask_to_json(mask: np.ndarray, classes: Sequence[str], image_path: str) -> bytes:
    """A labelme file for ``mask`` that points at ``image_path`` (relative to the JSON file)."""
    h, w = mask.shape
    doc: dict[str, Any] = {
        "version": LABELME_VERSION,
        "flags": {},
        "shapes": mask_to_shapes(mask, classes),
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(h),
        "imageWidth": int(w),
    }
    return json.dumps(doc, indent=1).encode()
