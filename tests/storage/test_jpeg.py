"""JPEG chunks: what mangaka writes is what imagecodecs' zarr v3 JPEG codec reads, and plain
zarr (and xarray) read the pixels through the entry point alone."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import simplejpeg
import zarr
from PIL import Image

from storage.jpeg import JpegCodec, conforming, read_header
from storage.shards import layout_of
from storage.workspace import Workspace, image_spec
from tests.conftest import gradient, jpeg_bytes, rotated_jpeg

S = 64
# The configuration keys imagecodecs' zarr v3 ``Jpeg`` codec (imagecodecs.zarr, 2026) documents and writes.
IMAGECODECS_JPEG_KEYS = {
    "level",
    "bitspersample",
    "tables",
    "header",
    "colorspace_data",
    "colorspace_jpeg",
    "subsampling",
    "optimize",
    "smoothing",
    "lossless",
    "predictor",
}


def imagecodecs_zarr_decode(chunk: bytes, config: dict, chunk_shape: tuple[int, ...]) -> np.ndarray:
    """What ``imagecodecs.zarr.Jpeg._decode_sync`` does with one chunk (its Python 3.12 code, restated)."""
    decoded = imagecodecs.jpeg8_decode(
        chunk, tables=None, colorspace=config.get("colorspace_jpeg"), outcolorspace=config.get("colorspace_data")
    )
    return decoded.reshape(chunk_shape)


def smooth(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:S, 0:S]
    base = rng.integers(0, 120, 3)
    return np.clip(base + x[..., None] * 1.5 + y[..., None], 0, 255).astype(np.uint8)


@pytest.fixture()
def jpeg_array(tmp_path: Path) -> tuple[Workspace, dict[int, np.ndarray], dict[int, bytes]]:
    """A JPEG ``corpus/images`` of 6 slots: encoded by mangaka (0, 4), a colour and a grey
    source JPEG stored as they are (1, 2), a hole (3), slot 5 never written."""
    ws = Workspace(str(tmp_path / "ws"))
    ws.ensure_config(shard_size=4)
    ws.require_array("corpus/images", image_spec(S, "jpeg", 90), length=6)
    pixels = {j: smooth(j) for j in range(6)}
    colour = jpeg_bytes(smooth(11))
    grey = jpeg_bytes(smooth(12)[..., 0])
    data = np.stack([pixels[j] for j in range(4)])
    ws.write_shard("corpus/images", 0, data, holes=[3], encoded={1: colour, 2: grey})
    ws.write_shard("corpus/images", 1, np.stack([pixels[4]]))
    return ws, pixels, {1: colour, 2: grey}


def test_metadata_is_imagecodecs_jpeg_with_no_compressor(jpeg_array) -> None:  # noqa: ANN001
    ws, _, _ = jpeg_array
    meta = json.loads(Path(ws.loc.path("corpus/images/zarr.json")).read_text())
    (sharding,) = meta["codecs"]
    assert sharding["name"] == "sharding_indexed"
    assert sharding["configuration"]["chunk_shape"] == [1, S, S, 3]
    (inner,) = sharding["configuration"]["codecs"]  # the serializer alone: no zstd after it
    assert inner["name"] == "imagecodecs_jpeg"
    assert set(inner["configuration"]) <= IMAGECODECS_JPEG_KEYS
    assert inner["configuration"] == {"level": 90, "colorspace_data": "RGB", "subsampling": "444"}
    assert [c["name"] for c in sharding["configuration"]["index_codecs"]] == ["bytes", "crc32c"]
    assert JpegCodec.from_dict(inner).to_dict() == inner


def test_chunks_are_jpeg_files_that_imagecodecs_decodes_to_the_same_pixels(jpeg_array) -> None:  # noqa: ANN001
    ws, pixels, sources = jpeg_array
    cfg = json.loads(Path(ws.loc.path("corpus/images/zarr.json")).read_text())["codecs"][0]["configuration"]
    inner = cfg["codecs"][0]["configuration"]
    ours = ws.read_items("corpus/images", list(range(6)))
    plain = zarr.open_array(ws.loc.path("corpus/images"), mode="r")[:]
    assert (ours == plain).all()
    chunks = ws.read_chunks("corpus/images", list(range(6)))
    assert chunks[3] is None and chunks[5] is None and (ours[3] == 0).all() and (ours[5] == 0).all()
    for j in (0, 1, 2, 4):
        chunk = chunks[j]
        assert chunk is not None and chunk[:2] == b"\xff\xd8" and chunk[-2:] == b"\xff\xd9"
        theirs = imagecodecs_zarr_decode(chunk, inner, (1, S, S, 3))
        assert (theirs[0] == ours[j]).all(), j
    # stored byte for byte, and read back as a plain libjpeg-turbo decode of the source
    for j, src in sources.items():
        assert chunks[j] == src
        assert (ours[j] == simplejpeg.decode_jpeg(src, "RGB")).all()
        assert (ours[j] == np.asarray(Image.open(io.BytesIO(src)).convert("RGB"))).all()
    assert (ours[2][..., 0] == ours[2][..., 1]).all()  # a grey JPEG reads as three equal channels
    # what mangaka encodes: quality 90, 4:4:4, close to the pixels it was given
    for j in (0, 4):
        assert read_header(chunks[j]).sof == 0xC0  # type: ignore[arg-type, union-attr]
        assert np.abs(ours[j].astype(int) - pixels[j]).mean() < 1.0
    # and imagecodecs' encoder output (what its codec writes) reads back through ours
    theirs = imagecodecs.jpeg8_encode(pixels[0], level=90, subsampling="444")
    out = np.empty((S, S, 3), np.uint8)
    from storage.jpeg import decode_into

    decode_into(bytes(theirs), out)
    assert (out == imagecodecs.jpeg8_decode(theirs)).all()


def test_a_dct_scaled_read_is_a_reduced_decode(jpeg_array) -> None:  # noqa: ANN001
    ws, _, sources = jpeg_array
    half = ws.read_items("corpus/images", [1, 3], size=S // 2)
    assert half.shape == (2, S // 2, S // 2, 3) and (half[1] == 0).all()
    assert (half[0] == simplejpeg.decode_jpeg(sources[1], "RGB", min_height=S // 2, min_width=S // 2)).all()
    assert layout_of(ws.array("corpus/images")).codec == "jpeg"  # type: ignore[union-attr]


def test_a_script_that_imports_only_zarr_or_xarray_reads_the_pixels(jpeg_array, tmp_path: Path) -> None:  # noqa: ANN001
    ws, _, _ = jpeg_array
    expected = ws.read_items("corpus/images", list(range(6)))
    np.save(tmp_path / "expected.npy", expected)
    script = f"""
import sys, numpy as np, zarr, xarray as xr
a = zarr.open_array({ws.loc.path("corpus/images")!r}, mode="r")
got = a[:]
x = xr.open_zarr({ws.loc.path("corpus")!r}, consolidated=False)["images"].values
want = np.load({str(tmp_path / "expected.npy")!r})
assert (got == want).all() and (x == want).all()
assert not any(m.split(".")[0] in ("flows", "tasks", "models") for m in sys.modules), "mangaka code was imported"
print("ok", got.shape)
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok (6, 64, 64, 3)")


def test_plain_zarr_writes_jpeg_chunks_too(tmp_path: Path) -> None:
    arr = zarr.create_array(
        str(tmp_path / "a"),
        shape=(2, S, S, 3),
        chunks=(1, S, S, 3),
        dtype="uint8",
        serializer=JpegCodec(level=95),
        compressors=None,
    )
    arr[:] = np.stack([smooth(0), smooth(1)])
    raw = (tmp_path / "a" / "c" / "0" / "0" / "0" / "0").read_bytes()
    assert raw[:2] == b"\xff\xd8" and (imagecodecs.jpeg8_decode(raw) == arr[0]).all()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: jpeg_bytes(gradient(S, S, 1)), None),
        (lambda: jpeg_bytes(gradient(S, S, 1)[..., 0]), None),
        (lambda: jpeg_bytes(gradient(S, S, 1), subsampling=0), None),
        (lambda: jpeg_bytes(gradient(S, S, 1), progressive=True), "progressive"),
        (lambda: jpeg_bytes(gradient(S, 2 * S, 1)), "not 64x64"),
        (lambda: rotated_jpeg(gradient(S, S, 1), 6), "orientation 6"),
        (lambda: jpeg_bytes(gradient(S, S, 1))[:-400], "does not decode"),  # truncated mid-stream
        (lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF", "readable header"),
    ],
    ids=["colour", "grey", "444", "progressive", "other-size", "exif-rotated", "truncated-stream", "bad-header"],
)
def test_which_sources_are_stored_as_they_are(make, why: str | None) -> None:  # noqa: ANN001
    data = make()
    got = conforming(data, S)
    assert got is None if why is None else (got is not None and why in got), got


def test_cmyk_and_rgb_coded_jpegs_are_not_stored_as_they_are() -> None:
    buf = io.BytesIO()
    Image.fromarray(gradient(S, S, 2)).convert("CMYK").save(buf, "JPEG")
    assert "colour components" in str(conforming(buf.getvalue(), S))
    rgb = imagecodecs.jpeg8_encode(gradient(S, S, 2), level=95, outcolorspace="RGB")
    assert "RGB-coded" in str(conforming(bytes(rgb), S))
