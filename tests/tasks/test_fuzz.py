"""Hostile input, fuzzed: the labelme reader and the image decoder never crash.

Every input either reads or raises the one error type whose message becomes a quarantine
entry (``LabelmeError``, ``BadImage``); paths never leave their folder; decompression
bombs are refused from the header, before any pixel is decoded.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tasks.imageio import BadImage, load_rgb, load_square
from tasks.labelme import LabelmeError, class_ids, read_annotation

CLASSES = ("background", "skin", "face", "eye", "mouth", "hair", "clothes")
IDS = class_ids(CLASSES)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def png(w: int = 12, h: int = 10) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(w: int = 16, h: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


VALID_IMAGES = [png(), jpeg()]


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        im = load_rgb(data)
    except BadImage:
        return
    assert im.mode == "RGB"


@FUZZ
@given(
    st.sampled_from(VALID_IMAGES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
    st.one_of(st.none(), st.integers(0, 2000)),
    st.sampled_from(["crop", "pad"]),
)
def test_mutated_images_decode_or_are_refused(
    base: bytes, edits: list[tuple[int, int]], cut: int | None, fit: str
) -> None:
    try:
        out = load_square(mutate(base, edits, cut), 8, fit)
    except BadImage as exc:
        assert str(exc)  # a reason a person can act on
        return
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with a tiny (bogus) IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@FUZZ
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_decompression_bombs_are_refused_before_decoding(w: int, h: int) -> None:
    limit = 10_000
    try:
        load_rgb(_png_header_only(w, h), max_pixels=limit)
    except BadImage as exc:
        if w * h > limit:
            assert "bomb" in str(exc) or "pixels" in str(exc), exc
        return
    assert w * h <= limit


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
json_values = st.recursive(
    json_leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=20,
)
points = st.lists(
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-50, 50), st.text(max_size=2)), max_size=3
    ),
    max_size=6,
)
shape = st.fixed_dictionaries(
    {},
    optional={
        "label": st.one_of(st.sampled_from(CLASSES), st.text(max_size=6), json_values),
        "points": st.one_of(points, json_values),
        "shape_type": st.one_of(
            st.sampled_from(
                ["polygon", "rectangle", "circle", "line", "linestrip", "point", "mask", "oriented_rectangle"]
            ),
            json_values,
        ),
        "mask": st.one_of(st.none(), st.text(max_size=16), st.just(base64.b64encode(png(3, 3)).decode())),
        "group_id": json_values,
    },
)
labelme_doc = st.fixed_dictionaries(
    {},
    optional={
        "shapes": st.one_of(st.lists(shape, max_size=5), json_values),
        "imagePath": st.one_of(
            st.sampled_from(["img.png", "../escape.png", "/etc/passwd", "sub/../../x.png", "missing.png", ""]),
            json_values,
        ),
        "imageData": st.one_of(st.none(), st.just(base64.b64encode(png()).decode()), st.text(max_size=20), json_values),
        "imageHeight": st.one_of(st.just(10), st.integers(-5, 100), json_values),
        "imageWidth": st.one_of(st.just(12), st.integers(-5, 100), json_values),
        "version": st.just("5.4.1"),
    },
)


@FUZZ
@given(labelme_doc)
def test_fuzzed_labelme_files_read_or_are_quarantined(tmp_path_factory: Any, doc: dict[str, Any]) -> None:
    root = Path(tmp_path_factory.mktemp("labelme"))
    (root / "img.png").write_bytes(png())
    (root.parent / "escape.png").write_bytes(png())
    try:
        raw = json.dumps(doc, allow_nan=True).encode()
    except (TypeError, ValueError):
        return
    try:
        ann = read_annotation(raw, str(root / "a.json"), str(root), IDS)
    except LabelmeError as exc:
        assert str(exc)
        return
    # what reads is a real annotation of the image inside the folder, never one outside it
    assert doc.get("imagePath") not in ("../escape.png", "/etc/passwd", "sub/../../x.png") or doc.get("imageData")
    assert ann.mask.shape == ann.image.shape[:2]
    assert ann.mask.dtype == np.uint8 and int(ann.mask.max()) < len(CLASSES) or int(ann.mask.max()) == 255


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_as_labelme_files_are_quarantined(tmp_path_factory: Any, raw: bytes) -> None:
    root = Path(tmp_path_factory.mktemp("labelme"))
    try:
        read_annotation(raw, str(root / "a.json"), str(root), IDS)
    except LabelmeError:
        return
