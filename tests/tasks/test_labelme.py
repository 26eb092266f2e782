"""The labelme reader on every shape type and every hostile kind, and the writer's round trip."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storage.workspace import DEFAULT_CLASSES
from tasks.labelme import (
    LabelmeError,
    class_ids,
    mask_to_json,
    mask_to_shapes,
    parse_labels,
    read_annotation,
    shape_to_mask,
    shapes_to_mask,
)
from tasks.synth import draw_portrait
from tests.conftest import gradient, png_bytes, png_header_only

IDS = class_ids(DEFAULT_CLASSES)


def doc(shapes: list[dict], image: str = "img.png", h: int = 40, w: int = 60, **extra: object) -> dict:
    return {
        "version": "5.5.0",
        "shapes": shapes,
        "imagePath": image,
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
        **extra,
    }


def poly(label: str, pts: list[list[float]], kind: str = "polygon", **extra: object) -> dict:
    return {"label": label, "points": pts, "shape_type": kind, "group_id": None, "flags": {}, **extra}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    Image.fromarray(gradient(40, 60)).save(tmp_path / "img.png")
    return tmp_path


def read(folder: Path, d: dict | bytes, name: str = "a.json") -> np.ndarray:
    raw = d if isinstance(d, bytes) else json.dumps(d).encode()
    (folder / name).write_bytes(raw)
    return read_annotation(raw, str(folder / name), str(folder), IDS).mask


def test_labels_txt_format() -> None:
    assert parse_labels("__ignore__\n_background_\nskin\nface\n") == ["background", "skin", "face"]
    assert class_ids(["background", "skin"])["__ignore__"] == 255
    with pytest.raises(LabelmeError):
        parse_labels("skin\nface\n")


def test_every_shape_type_paints(folder: Path) -> None:
    patch = np.zeros((6, 8), np.uint8)
    patch[1:5, 2:6] = 1
    b64 = base64.b64encode(png_bytes(Image.fromarray(patch))).decode()
    shapes = [
        poly("skin", [[2, 2], [20, 2], [20, 12], [2, 12]]),
        poly("face", [[30, 5], [40, 15]], "rectangle"),
        poly("eye", [[50, 10], [53, 10]], "circle"),
        poly("mouth", [[0, 30], [20, 30]], "line"),
        poly("hair", [[30, 30], [40, 35], [50, 30]], "linestrip"),
        poly("clothes", [[10, 20]], "point"),
        poly("face", [[44, 20], [50, 22], [48, 28], [42, 26]], "oriented_rectangle"),
        poly("__ignore__", [[52, 30], [59, 35]], "mask", mask=b64),
    ]
    m = read(folder, doc(shapes))
    assert m[7, 10] == 1 and m[10, 35] == 2 and m[10, 50] == 3 and m[30, 10] == 4
    assert m[32, 40] == 5 and m[20, 10] == 6 and m[24, 46] == 2
    assert m[32, 55] == 255 and m[30, 52] == 0  # the mask patch's own zeros stay unpainted
    assert m[39, 0] == 0


def test_later_shapes_paint_over_earlier(folder: Path) -> None:
    m = read(
        folder,
        doc([poly("face", [[0, 0], [59, 0], [59, 39], [0, 39]]), poly("eye", [[10, 10], [20, 20]], "rectangle")]),
    )
    assert m[15, 15] == 3 and m[30, 40] == 2


def test_points_outside_the_canvas_are_clipped(folder: Path) -> None:
    far = [[-1e9, -1e9], [1e9, -5], [30, 1e12]]
    m = read(folder, doc([poly("skin", far)]))
    assert m.shape == (40, 60) and m.sum() > 0
    moderate = [[-50, -30], [110, 10], [30, 90]]
    clipped = shape_to_mask(40, 60, moderate, "polygon")
    canvas = Image.new("1", (60, 40))
    from PIL import ImageDraw

    ImageDraw.Draw(canvas).polygon([tuple(p) for p in moderate], outline=1, fill=1)
    assert (clipped == np.asarray(canvas)).all()


def test_exif_rotated_image_is_read_in_display_coordinates(tmp_path: Path) -> None:
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    d = doc([poly("skin", [[0, 0], [39, 0], [39, 29], [0, 29]])], image="r.jpg", h=60, w=40)
    raw = json.dumps(d).encode()
    ann = read_annotation(raw, str(tmp_path / "r.json"), str(tmp_path), IDS)
    assert ann.image.shape == (60, 40, 3) and ann.image[10, 20].mean() > 200 and ann.image[50, 20].mean() < 50


def test_embedded_image_data(tmp_path: Path) -> None:
    data = base64.b64encode(png_bytes(Image.fromarray(gradient(40, 60)))).decode()
    d = doc([poly("hair", [[0, 0], [10, 0], [10, 10]])], image="nowhere.png", imageData=data)
    assert read(tmp_path, d)[2, 5] == 5


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d["shapes"].append(poly("tail", [[0, 0], [5, 0], [5, 5]])), "unknown label"),
        (lambda d: d["shapes"].append(poly("skin", [[0, 0], [5, 0]])), "at least 3"),
        (lambda d: d["shapes"].append(poly("skin", [[0, 0], [float("nan"), 0], [5, 5]])), "NaN"),
        (lambda d: d["shapes"].append(poly("skin", [[0, 0], [float("inf"), 0], [5, 5]])), "infinite"),
        (lambda d: d.update(imageHeight=41), "size mismatch"),
        (lambda d: d.update(imagePath="missing.png"), "missing image"),
        (lambda d: d.update(imagePath="../outside.png"), "outside the folder"),
        (lambda d: d.update(imagePath="/etc/passwd"), "absolute"),
        (lambda d: d["shapes"].append(poly("skin", [[0, 0], [1, 1]], "hexagon")), "unknown shape_type"),
        (lambda d: d["shapes"].append(poly("skin", [[0, 0]], "rectangle")), "needs 2"),
        # found by the fuzzer: a non-string shape_type was a TypeError, not a quarantine reason
        (lambda d: d["shapes"].append(poly("skin", [[0, 0], [1, 1]], [None])), "not a string"),
    ],
)
def test_hostile_annotations_are_refused_with_a_reason(folder: Path, mutate, reason: str) -> None:  # noqa: ANN001
    (folder.parent / "outside.png").write_bytes(png_bytes(Image.new("RGB", (60, 40))))
    d = doc([poly("skin", [[0, 0], [10, 0], [10, 10]])])
    mutate(d)
    with pytest.raises(LabelmeError, match=reason):
        read(folder, d)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"hello": 1}', "not a labelme file"),
        (b"[1, 2]", "not a labelme file"),
        (b"\xff\xfe\x00", "invalid JSON"),
    ],
)
def test_non_labelme_files_are_refused(folder: Path, raw: bytes, reason: str) -> None:
    with pytest.raises(LabelmeError, match=reason):
        read(folder, raw)


def test_writer_round_trip_is_exact_per_class(tmp_path: Path) -> None:
    for i in range(6):
        mask = draw_portrait(2, i, 160).mask.copy()
        mask[3:12, 100:140] = 255  # an ignore band
        mask[60:64, 60:64] = 0  # a background hole inside the face
        raw = mask_to_json(mask, DEFAULT_CLASSES, "x.png")
        d = json.loads(raw)
        assert d["imagePath"] == "x.png" and (d["imageHeight"], d["imageWidth"]) == (160, 160)
        back = shapes_to_mask(d["shapes"], 160, 160, IDS)
        for c in np.unique(mask):
            a, b = mask == c, back == c
            assert (a & b).sum() / (a | b).sum() >= 0.99, (i, c)


def test_writer_simplifies_when_asked() -> None:
    mask = draw_portrait(2, 0, 160).mask
    exact = sum(len(s["points"]) for s in mask_to_shapes(mask, DEFAULT_CLASSES))
    simple = sum(len(s["points"]) for s in mask_to_shapes(mask, DEFAULT_CLASSES, tolerance=1.0))
    assert simple < exact


def test_mask_patch_must_be_a_png(folder: Path) -> None:
    bad = poly("skin", [[0, 0], [5, 5]], "mask", mask=base64.b64encode(b"nope").decode())
    with pytest.raises(LabelmeError, match="base64 PNG"):
        read(folder, doc([bad]))


def test_image_bytes_are_kept_for_hashing(folder: Path) -> None:
    d = doc([poly("skin", [[0, 0], [10, 0], [10, 10]])])
    raw = json.dumps(d).encode()
    ann = read_annotation(raw, str(folder / "a.json"), str(folder), IDS)
    assert Image.open(io.BytesIO(ann.image_bytes)).size == (60, 40)


# -- hostile files found by the audit (issue 18, items 9 and 10) ------------------------------------
def test_a_mask_patch_bomb_is_refused_from_its_header(folder: Path) -> None:
    """42 bytes of PNG claiming 16000 x 16000: refused before decoding, like any larger patch."""
    bomb = base64.b64encode(png_header_only(16000, 16000)).decode()
    with pytest.raises(LabelmeError, match="mask shape's patch must fit in its 60x40 image: decompression bomb"):
        read(folder, doc([poly("skin", [[0, 0], [5, 5]], "mask", mask=bomb)]))
    wide = base64.b64encode(png_bytes(Image.new("L", (61, 4), 1))).decode()  # real, one column too wide
    with pytest.raises(LabelmeError, match="61x4 does not fit in 60x40"):
        read(folder, doc([poly("skin", [[0, 0], [60, 3]], "mask", mask=wide)]))
    whole = base64.b64encode(png_bytes(Image.new("L", (60, 40), 1))).decode()  # the whole image: fine
    assert (read(folder, doc([poly("skin", [[0, 0], [59, 39]], "mask", mask=whole)])) == 1).all()


def test_embedded_image_data_is_bounded_by_the_pixel_limit(tmp_path: Path) -> None:
    bomb = base64.b64encode(png_header_only(16000, 16000)).decode()
    d = doc([poly("hair", [[0, 0], [10, 0], [10, 10]])], image="nowhere.png", imageData=bomb)
    with pytest.raises(LabelmeError, match="image: decompression bomb"):
        read(tmp_path, d)
    data = base64.b64encode(png_bytes(Image.fromarray(gradient(40, 60)))).decode()
    raw = json.dumps(doc([poly("hair", [[0, 0], [10, 0], [10, 10]])], imageData=data)).encode()
    with pytest.raises(LabelmeError, match="exceeds the limit of 2399"):
        read_annotation(raw, str(tmp_path / "a.json"), str(tmp_path), IDS, max_pixels=2399)


@pytest.mark.timeout(60)
def test_an_image_path_that_is_a_fifo_is_refused_without_blocking(folder: Path) -> None:
    import os

    os.mkfifo(folder / "pipe.png")
    with pytest.raises(LabelmeError, match="imagePath 'pipe.png' refused: not a regular file but a FIFO"):
        read(folder, doc([poly("skin", [[0, 0], [10, 0], [10, 10]])], image="pipe.png"))
    with pytest.raises(LabelmeError, match="imagePath '.' refused: not a regular file but a folder"):
        read(folder, doc([poly("skin", [[0, 0], [10, 0], [10, 10]])], image="."))


def test_an_image_path_is_read_up_to_max_bytes(folder: Path) -> None:
    d = doc([poly("skin", [[0, 0], [10, 0], [10, 10]])])
    raw = json.dumps(d).encode()
    size = (folder / "img.png").stat().st_size
    with pytest.raises(LabelmeError, match=f"image img.png refused: file is {size} bytes, over the {size - 1}-byte"):
        read_annotation(raw, str(folder / "a.json"), str(folder), IDS, max_bytes=size - 1)
    assert read_annotation(raw, str(folder / "a.json"), str(folder), IDS, max_bytes=size).image.shape == (40, 60, 3)
