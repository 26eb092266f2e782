"""JPEG chunks in Zarr v3: the codec, the header checks and the encoder mangaka uses.

A corpus image is stored as one JPEG file per inner chunk, the way its source stores it.
The array's serializer is :class:`JpegCodec`, registered with zarr under the name
``imagecodecs_jpeg`` through this package's ``zarr.codecs`` entry point, so a script that
imports only ``zarr`` (or xarray) reads pixels. The name, the configuration keys and the
chunk bytes are those of imagecodecs' own zarr v3 JPEG codec (``imagecodecs.zarr.Jpeg``,
Python 3.12 and later): a chunk is a complete baseline JPEG (JFIF) stream, no compressor
follows the serializer, and the configuration says ``colorspace_data: "RGB"`` so that a
greyscale JPEG stored byte for byte decodes to three equal channels with either codec.
``tests/storage/test_jpeg.py`` checks both against ``imagecodecs.jpeg8_decode``.

Decoding is libjpeg-turbo through simplejpeg (accurate DCT, fancy upsampling: the same
pixels as Pillow, imagecodecs and a plain ``djpeg``), strict, so a stream that ends early
is an error rather than grey rows.

:func:`conforming` decides whether a source JPEG can be stored as it is: one baseline
(SOF0) 8-bit frame of ``size x size``, greyscale or YCbCr, no EXIF rotation, and an
entropy-coded stream that decodes to its end (walked at 1/8 DCT scale, which still reads
every coefficient). This module must never import Prefect, Dask or torch.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import simplejpeg
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

NAME = "imagecodecs_jpeg"
DEFAULT_QUALITY = 95
SUBSAMPLING = "444"
"""Chroma subsampling of what mangaka encodes: none, so coloured line work keeps its edges."""

_CONFIG_KEYS = (
    "level",
    "bitspersample",
    "colorspace_data",
    "colorspace_jpeg",
    "subsampling",
    "optimize",
    "smoothing",
    "lossless",
    "predictor",
)


class JpegError(ValueError):
    """JPEG bytes that cannot be decoded (truncated, corrupt, or not JPEG at all)."""


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """``imagecodecs_jpeg``: each chunk is one JPEG file; uint8, ``(..., H, W, 3)`` or ``(..., H, W)``.

    ``level`` is the quality mangaka encodes with (chunks stored byte for byte from their
    source keep the source's own quality). The other keys are kept and written back as
    given, so metadata written by imagecodecs round-trips; only what libjpeg-turbo decodes
    through simplejpeg is read (``tables``/``header`` streams, lossless and 12-bit JPEG are
    refused when the array is opened).
    """

    is_fixed_size = False

    level: int | None = DEFAULT_QUALITY
    colorspace_data: str | None = "RGB"
    subsampling: str | None = SUBSAMPLING
    extra: tuple[tuple[str, Any], ...] = ()

    def __init__(
        self,
        *,
        level: int | None = DEFAULT_QUALITY,
        colorspace_data: str | int | None = "RGB",
        subsampling: str | None = SUBSAMPLING,
        **extra: Any,
    ) -> None:
        for key in extra:
            if key not in _CONFIG_KEYS and key not in ("tables", "header"):
                raise ValueError(f"{NAME}: unknown configuration key {key!r}")
        if extra.get("lossless") or extra.get("tables") or extra.get("header"):
            raise ValueError(f"{NAME}: lossless JPEG and abbreviated streams (tables/header) are not supported here")
        if extra.get("bitspersample") not in (None, 8):
            raise ValueError(f"{NAME}: only 8-bit JPEG is supported here")
        if isinstance(colorspace_data, int):
            colorspace_data = {1: "GRAY", 2: "RGB"}.get(colorspace_data, str(colorspace_data))
        object.__setattr__(self, "level", None if level is None else int(level))
        object.__setattr__(self, "colorspace_data", colorspace_data)
        object.__setattr__(self, "subsampling", None if subsampling is None else str(subsampling))
        object.__setattr__(self, "extra", tuple(sorted(extra.items())))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, parsed = parse_named_configuration(data, NAME, require_configuration=False)
        cfg: dict[str, Any] = dict(parsed or {})
        for key in ("tables", "header"):
            value = cfg.get(key)
            if isinstance(value, str):
                cfg[key] = base64.b64decode(value.encode())
        return cls(
            level=cfg.pop("level", None),
            colorspace_data=cfg.pop("colorspace_data", None),
            subsampling=cfg.pop("subsampling", None),
            **cfg,
        )

    def to_dict(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        for key in ("level", "colorspace_data", "subsampling"):
            value = getattr(self, key)
            if value is not None:
                cfg[key] = value
        cfg.update(dict(self.extra))
        return {"name": NAME, "configuration": cfg} if cfg else {"name": NAME}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        if str(dtype.to_native_dtype()) != "uint8":
            raise ValueError(f"{NAME} stores uint8 images, not {dtype}")

    @property
    def quality(self) -> int:
        return DEFAULT_QUALITY if self.level is None else self.level

    # -- one chunk -------------------------------------------------------------------
    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        out = np.empty(chunk_spec.shape, dtype=np.uint8)
        decode_into(chunk_bytes.as_numpy_array().tobytes(), out)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(out)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        blob = encode(chunk_array.as_numpy_array(), self.quality, self.subsampling or SUBSAMPLING)
        return chunk_spec.prototype.buffer.from_bytes(blob)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


def encode(image: np.ndarray, quality: int = DEFAULT_QUALITY, subsampling: str = SUBSAMPLING) -> bytes:
    """Baseline JPEG of a uint8 image: ``(..., H, W, 3)`` RGB or ``(..., H, W)`` grey (leading 1s dropped)."""
    a = np.asarray(image)
    while a.ndim > 2 and a.shape[0] == 1 and not (a.ndim == 3 and a.shape[-1] in (1, 3)):
        a = a[0]
    if a.ndim == 2:
        return bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(a)[..., None], quality, "GRAY", "Gray"))
    if a.ndim != 3 or a.shape[-1] != 3 or a.dtype != np.uint8:
        raise ValueError(f"a JPEG chunk is a uint8 (H, W, 3) or (H, W) image, not {a.shape} {a.dtype}")
    return bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(a), int(quality), "RGB", subsampling))


def decode_into(blob: bytes, out: np.ndarray) -> None:
    """Decode ``blob`` into ``out`` (uint8, ``(..., H, W, 3)`` RGB or ``(..., H, W)`` grey) in place.

    The image's size must be ``out``'s, or one its DCT scaling reaches exactly (1/2, 1/4,
    1/8 of it): a 512 px chunk decodes into a 256 px row at a quarter of the work.
    """
    rgb = out.ndim >= 3 and out.shape[-1] == 3
    h, w = out.shape[-3:-1] if rgb else out.shape[-2:]
    direct = out.flags.c_contiguous  # decode straight into ``out``: no copy of the pixels
    try:
        got = simplejpeg.decode_jpeg(
            blob,
            "RGB" if rgb else "GRAY",
            min_height=h,
            min_width=w,
            buffer=out if direct else None,
            strict=True,
        )
    except ValueError as exc:
        raise JpegError(f"undecodable JPEG chunk: {exc}") from None
    if got.shape[0] != h or got.shape[1] != w:
        raise JpegError(f"a JPEG chunk of {got.shape[1]}x{got.shape[0]} does not fit an item of {w}x{h}")
    if not direct:
        out[...] = got.reshape(out.shape)


# -- header checks -----------------------------------------------------------------------
@dataclass(frozen=True)
class JpegHeader:
    """What the markers before the first scan say about a JPEG."""

    sof: int  # the frame marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
    precision: int
    height: int
    width: int
    components: int
    component_ids: tuple[int, ...]
    orientation: int  # EXIF orientation, 1 when absent, 0 when unsure (XMP, a strange tag)
    adobe_transform: int | None  # APP14 Adobe colour transform, None when absent
    frames: int  # SOF markers seen before the first scan (more than one: not a plain JPEG)


def exif_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) of a JPEG (from :func:`read_header`), 1 if absent or not a
    readable JPEG, 0 if unsure: XMP metadata (which may also carry an orientation) or an
    orientation tag of a strange type, which send the file down the general decoder."""
    head = read_header(data)
    return 1 if head is None else head.orientation


def _tiff_orientation(tiff: bytes) -> int:
    try:
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
        for k in range(count):
            entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
            tag, kind = struct.unpack(endian + "HH", entry[:4])
            if tag == 0x0112:
                (value,) = struct.unpack(endian + "H", entry[8:10])
                return value if kind == 3 and 1 <= value <= 8 else 0
    except (KeyError, struct.error, IndexError):
        return 0
    return 1


def read_header(data: bytes) -> JpegHeader | None:
    """Parse the markers of ``data`` up to its first scan; ``None`` if it is not a JPEG
    whose header can be read. Reads only headers: it never fails on hostile bytes."""
    try:
        return _read_header(data)
    except (struct.error, IndexError, ValueError):
        return None


def _read_header(data: bytes) -> JpegHeader | None:
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    sof: tuple[int, int, int, int, tuple[int, ...]] | None = None
    marker_sof = 0
    frames = 0
    orientation = 1
    adobe: int | None = None
    n = len(data)
    while at + 4 <= n:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill bytes
            at += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        if marker == 0xD9:  # EOI before any scan
            return None
        (length,) = struct.unpack_from(">H", data, at + 2)
        if length < 2 or at + 2 + length > n:
            return None
        payload = data[at + 4 : at + 2 + length]
        if marker == 0xDA:  # start of scan: the header is over
            if sof is None:
                return None
            precision, height, width, comps, ids = sof
            return JpegHeader(marker_sof, precision, height, width, comps, ids, orientation, adobe, frames)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frames += 1
            marker_sof = marker
            precision, height, width, comps = struct.unpack_from(">BHHB", payload, 0)
            ids = tuple(payload[6 + 3 * c] for c in range(comps))
            sof = (precision, height, width, comps, ids)
        elif marker == 0xE1 and payload[:6] == b"Exif\x00\x00":
            value = _tiff_orientation(payload[6:])
            orientation = value if orientation == 1 else orientation
        elif marker == 0xE1 and b"ns.adobe.com/xap" in payload[:64]:
            orientation = 0 if orientation == 1 else orientation  # XMP may rotate: unsure
        elif marker == 0xEE and payload[:5] == b"Adobe" and len(payload) >= 12:
            adobe = payload[11]
        at += 2 + length
    return None


def conforming(data: bytes, size: int) -> str | None:
    """``None`` if ``data`` is a JPEG the workspace can store byte for byte at ``size``;
    otherwise why not (the source is then decoded and re-encoded, or quarantined by the
    decoder if it is broken).

    Stored as is: one baseline 8-bit frame of ``size x size``, greyscale or YCbCr (not an
    RGB-coded, CMYK or YCCK JPEG), EXIF orientation 1 or none, and an entropy-coded stream
    that decodes to its end without a warning (truncated or corrupt data is refused here
    and then quarantined by the full decoder).
    """
    head = read_header(data)
    if head is None:
        return "not a JPEG with a readable header"
    if head.frames != 1:
        return "more than one frame"
    if head.sof != 0xC0:
        return "not baseline" if head.sof != 0xC2 else "progressive"
    if head.precision != 8:
        return f"{head.precision}-bit samples"
    if (head.width, head.height) != (size, size):
        return f"{head.width}x{head.height}, not {size}x{size}"
    if head.components == 3:
        if head.adobe_transform == 0 or head.component_ids == (82, 71, 66):  # 'R', 'G', 'B'
            return "RGB-coded, not YCbCr"
    elif head.components != 1:
        return f"{head.components} colour components"
    if head.orientation != 1:
        return f"EXIF orientation {head.orientation}"
    try:
        eighth = max(1, -(-size // 8))  # the smallest DCT scale: every coefficient is still decoded
        simplejpeg.decode_jpeg(
            data, "GRAY" if head.components == 1 else "RGB", min_height=eighth, min_width=eighth, strict=True
        )
    except ValueError as exc:
        return f"its entropy-coded data does not decode: {exc}"
    return None
