"""Decoding untrusted image bytes into square RGB arrays, safely and correctly.

Contract of :func:`load_square`: bytes in, ``uint8`` array of shape ``(size, size, 3)``,
RGB, HWC out, or :class:`BadImage` with a reason a person can act on. Never anything else:
every failure of the decoder (truncated data, unknown format, corrupt headers, oversized
text chunks, ...) becomes a ``BadImage``.

- The pixel count is checked from the header *before* decoding (``max_pixels``), so a
  decompression bomb costs a header read, not gigabytes.
- EXIF orientation is applied: what a person sees in a viewer is what is stored.
- Every mode becomes RGB the way a viewer shows it: grey and palette expanded, alpha
  composited over white, CMYK through its ICC profile when it has one, 16-bit values
  scaled to 8 bits (not clipped), float images scaled from [0, 1].
- JPEGs larger than twice the target are decoded at a reduced DCT scale (``draft``) that
  still leaves at least ``size`` pixels on the shorter side, then resized with Lanczos:
  the same quality for a fraction of the decode time.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
"""Images with more pixels than this are refused before decoding (about 7000 x 7000)."""

# Our own limit is checked first; Pillow's stays as a second line of defence.
Image.MAX_IMAGE_PIXELS = 4 * DEFAULT_MAX_PIXELS

PAD_COLOR = (255, 255, 255)
FITS = ("crop", "pad")


class BadImage(ValueError):
    """The bytes are not an image mangaka can use; ``str(exc)`` says why."""


def _srgb_from_icc(im: Image.Image) -> Image.Image | None:
    icc = im.info.get("icc_profile")
    if not icc:
        return None
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        log.info("ignoring an unusable ICC profile (%s)", exc)
        return None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB as a viewer would display it."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        # 16-bit data scaled by 255/65535; an "I" image holding 8-bit values stays as is.
        scale = 257.0 if (mode.startswith("I;16") or a.max(initial=0) > 255) else 1.0
        im = Image.fromarray(np.clip(np.rint(a / scale), 0, 255).astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        a = np.asarray(im).astype(np.float64)
        a = np.nan_to_num(a)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*PAD_COLOR, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "CMYK":
        managed = _srgb_from_icc(im)
        if managed is not None:
            return managed
    return im if mode == "RGB" else im.convert("RGB")


def _draft_target(w: int, h: int, size: int) -> tuple[int, int]:
    short = min(w, h)
    return (-(-w * size // short), -(-h * size // short))


def load_square(
    data: bytes,
    size: int,
    fit: str = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 0,
) -> np.ndarray:
    """Decode ``data`` into a ``(size, size, 3)`` uint8 RGB array (see module docstring).

    ``fit="crop"`` keeps the centre square; ``fit="pad"`` keeps everything and pads the
    short side with white. ``min_size`` refuses images whose shorter side is smaller.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0:
                raise BadImage(f"image has no pixels ({w}x{h})")
            if w * h > max_pixels:
                raise BadImage(
                    f"decompression bomb refused: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"
                )
            if min(w, h) < min_size:
                raise BadImage(f"too small: {w}x{h}, shorter side under --min-size {min_size}")
            if im.format == "JPEG" and min(w, h) >= 2 * size and isinstance(im, ImageFile.ImageFile):
                im.draft("RGB", _draft_target(w, h, size))
            im.load()
            im = ImageOps.exif_transpose(im) or im
            rgb = to_rgb(im)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image: unrecognised format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb refused: {exc}") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        EOFError,
        struct.error,
        MemoryError,
    ) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise BadImage(f"truncated image: {msg}") from None
        raise BadImage(f"undecodable image: {msg}") from None
    return np.asarray(square(rgb, size, fit))


def square(im: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """Centre-crop (or pad with white) to a square, then resize to ``size`` with Lanczos."""
    w, h = im.size
    if fit == "crop":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        if (w, h) != (side, side):
            im = im.crop((left, top, left + side, top + side))
    else:
        side = max(w, h)
        if (w, h) != (side, side):
            canvas = Image.new("RGB", (side, side), PAD_COLOR)
            canvas.paste(im, ((side - w) // 2, (side - h) // 2))
            im = canvas
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return im


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` RGB or ``(H, W)`` class-id/grey ``uint8`` array."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWx3 array, got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
