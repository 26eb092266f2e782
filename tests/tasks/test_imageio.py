"""Decoding of every mode and every hostile kind, on tiny images drawn here."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tasks.imageio import BadImage, encode_png, load_square, open_image, to_rgb
from tests.conftest import HOSTILE, gradient, jpeg_bytes, png_bytes, png_header_only


def test_rgb_jpeg_is_cropped_and_resized() -> None:
    out = load_square(jpeg_bytes(gradient(200, 300)), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_crop_keeps_centre_and_pad_keeps_everything() -> None:
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, 100:200] = 200  # the centre square is grey, the sides black
    cropped = load_square(png_bytes(Image.fromarray(a)), 50, fit="crop")
    assert np.abs(cropped.astype(int) - 200).max() <= 2
    padded = load_square(png_bytes(Image.fromarray(a)), 60, fit="pad")
    assert (padded[0] == 255).all() and (padded[-1] == 255).all()  # white bands top and bottom
    assert padded[30, 0].max() < 10 and abs(int(padded[30, 30, 0]) - 200) <= 2


def test_grey_palette_and_rgba_over_white() -> None:
    grey = load_square(png_bytes(Image.new("L", (32, 32), 77)), 16)
    assert (grey == 77).all()
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red
    assert (load_square(png_bytes(rgba), 16) == 255).all()
    half = Image.new("RGBA", (32, 32), (0, 0, 0, 128))
    assert abs(int(load_square(png_bytes(half), 16)[0, 0, 0]) - 127) <= 1
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert tuple(load_square(png_bytes(pal), 16)[5, 5]) == (10, 200, 30)
    pal.info["transparency"] = 1
    assert (load_square(png_bytes(pal), 16) == 255).all()


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    a = np.array([[0, 32896], [65535, 257 * 10]], dtype=np.uint16).repeat(8, 0).repeat(8, 1)
    im = Image.fromarray(a)  # mode I;16
    out = np.asarray(to_rgb(im))
    assert out[0, 0, 0] == 0 and out[0, 8, 0] == 128 and out[8, 0, 0] == 255 and out[8, 8, 0] == 10
    assert load_square(png_bytes(im), 16).max() == 255


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    out = load_square(buf.getvalue(), 16)
    r, g, b = (int(v) for v in out[8, 8])
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied() -> None:
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = 255  # left half white in stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = jpeg_bytes(a, exif=exif.tobytes())
    out = load_square(data, 40, fit="pad")
    # displayed image is 40 wide, 80 tall: the white half is now on top
    assert out[5, 20].mean() > 200 and out[35, 20].mean() < 60


def test_large_jpeg_uses_reduced_decode_with_same_result_shape() -> None:
    data = jpeg_bytes(gradient(1024, 1536))
    out = load_square(data, 128)
    assert out.shape == (128, 128, 3)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_raise_bad_image_with_reason(name: str) -> None:
    expected = {
        "empty.jpg": "empty",
        "truncated.jpg": "truncated",
        "notanimage.png": "not an image",
        "bomb.png": "bomb",
    }
    with pytest.raises(BadImage, match=expected[name]):
        load_square(HOSTILE[name](), 64)


def test_pixel_limit_and_min_size() -> None:
    data = jpeg_bytes(gradient(100, 100))
    with pytest.raises(BadImage, match="bomb"):
        load_square(data, 32, max_pixels=5000)
    with pytest.raises(BadImage, match="too small"):
        load_square(data, 32, min_size=200)


def test_encode_png_round_trip() -> None:
    m = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert (np.asarray(Image.open(io.BytesIO(encode_png(m)))) == m).all()
    with pytest.raises(ValueError):
        encode_png(m.astype(np.float32))


@pytest.mark.parametrize(
    ("fmt", "mode", "save"),
    [
        ("WEBP", "RGB", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {}),
        ("TIFF", "CMYK", {}),
        ("PNG", "LA", {}),
        ("PNG", "1", {}),
        ("JPEG", "L", {}),
        ("JPEG", "RGB", {"progressive": True}),
    ],
)
def test_common_formats_and_modes_decode(fmt: str, mode: str, save: dict) -> None:
    im = Image.fromarray(gradient(48, 64)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    out = load_square(buf.getvalue(), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.std() > 1


def test_direct_jpeg_path_equals_the_general_path() -> None:
    from tasks.imageio import exif_orientation, load_square_into

    data = jpeg_bytes(gradient(64, 64, 3))
    direct = np.zeros((64, 64, 3), np.uint8)
    load_square_into(data, direct)
    assert exif_orientation(data) == 1
    assert np.abs(direct.astype(int) - load_square(data, 64).astype(int)).max() <= 1
    exif = Image.Exif()
    exif[0x0112] = 3
    rotated = jpeg_bytes(gradient(64, 64, 3), exif=exif.tobytes())
    assert exif_orientation(rotated) == 3
    out = np.zeros((64, 64, 3), np.uint8)
    load_square_into(rotated, out)  # orientation 3 = 180 degrees: the general path applies it
    assert np.abs(out.astype(int) - load_square(rotated, 64).astype(int)).max() == 0
    assert np.abs(out[::-1, ::-1].astype(int) - direct.astype(int)).mean() < 3


# -- hostile formats and sizes (issue 18, items 9 and 13) -------------------------------------------
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nnewpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n"


def test_an_eps_named_jpg_never_reaches_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    called = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: called.append(a))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")  # as on a machine that has it
    with pytest.raises(BadImage, match="not an image: unrecognised format .*EPS.* not an allowed format"):
        load_square(EPS, 32)
    assert called == []


@pytest.mark.parametrize("fmt", ["PCX", "TGA", "ICO", "PPM", "SGI"])
def test_formats_outside_the_allow_list_are_not_images(fmt: str) -> None:
    """Pillow can decode these; mangaka refuses them whatever they are named."""
    buf = io.BytesIO()
    Image.fromarray(gradient(32, 32)).save(buf, format=fmt)
    with pytest.raises(BadImage, match="not an image: unrecognised format"):
        load_square(buf.getvalue(), 16)
    with pytest.raises(BadImage, match="mangaka opens JPEG, PNG, WEBP, BMP, GIF, TIFF"):
        open_image(buf.getvalue())


def test_a_phone_jpeg_with_extra_frames_opens_as_jpeg() -> None:
    im = Image.fromarray(gradient(32, 32))
    buf = io.BytesIO()
    im.save(buf, format="MPO", save_all=True, append_images=[im.copy()])
    assert open_image(buf.getvalue()).format == "MPO"
    assert load_square(buf.getvalue(), 16).shape == (16, 16, 3)


def test_open_image_checks_the_header_and_leaves_pillow_alone() -> None:
    import tasks.imageio

    assert Image.MAX_IMAGE_PIXELS is not None and tasks.imageio.Image.MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
    with pytest.raises(BadImage, match="7100x7100 = 50410000 pixels exceeds the limit of 50000000"):
        open_image(png_header_only(7100, 7100))
    with pytest.raises(BadImage, match="decompression bomb refused"):  # past Pillow's own ceiling too
        open_image(png_header_only(16000, 16000))
    with pytest.raises(BadImage, match="5000x3000 does not fit in 6000x2000"):
        open_image(png_header_only(5000, 3000), fit_in=(6000, 2000))
    # a limit above Pillow's warning band is ours to set: a 100 MP header opens, not decoded
    assert open_image(png_header_only(10000, 10000), max_pixels=200_000_000).size == (10000, 10000)
    with pytest.raises(BadImage, match="empty"):
        open_image(b"")
