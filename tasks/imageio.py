"""Decoding untrusted image bytes into square RGB arrays, safely and correctly.

Contract of :func:`load_square`: bytes in, ``uint8`` array of shape ``(size, size, 3)``,
RGB, HWC out, or :class:`BadImage` with a reason a person can act on. Never anything else:
every failure of the decoder (truncated data, unknown format, corrupt headers, oversized
text chunks, ...) becomes a ``BadImage``.

- :func:`open_image` is the only way mangaka opens untrusted image bytes: it tries only
  the raster formats of ``ALLOWED_FORMATS`` (by their magic bytes, whatever the file is
  named: an EPS named ``.jpg`` never reaches Ghostscript), and checks the pixel count
  from the header *before* decoding (``max_pixels``), so a decompression bomb costs a
  header read, not gigabytes. Pillow's own limit (``Image.MAX_IMAGE_PIXELS``) is left at
  its default, as a backstop for the rest of the process.
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
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from storage.jpeg import exif_orientation

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
"""Images with more pixels than this are refused before decoding (about 7000 x 7000)."""

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
"""The Pillow formats mangaka opens: those the corpus suffixes name. (The JPEG of phones
and cameras, with extra frames, opens as JPEG and reports itself as MPO.) Pillow knows many
more, some handled by other programs (EPS by Ghostscript); none of them is ever tried."""

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
    """Decode ``data`` into an RGB image ``(size, size, 3)`` uint8 in 0..255 (see module docstring).

    ``fit="crop"`` keeps the centre square; ``fit="pad"`` keeps everything and pads the
    short side with white. ``min_size`` refuses images whose shorter side is smaller.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, not {fit!r}")
    return np.asarray(square(load_rgb(data, max_pixels, min_size, draft_size=size), size, fit))


_DECODER_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    MemoryError,
)


def _decoder_error(exc: BaseException) -> BadImage:
    msg = str(exc) or type(exc).__name__
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return BadImage(f"truncated image: {msg}")
    return BadImage(f"undecodable image: {msg}")


def source_format(data: bytes) -> str:
    """The image format ``data``'s magic bytes name (``JPEG``, ``PNG``, ...), ``unknown`` if none."""
    return _sniff_format(data) or "unknown"


def _sniff_format(data: bytes) -> str | None:
    """The Pillow format whose magic bytes ``data`` starts with (nothing is parsed), if any."""
    try:
        Image.init()
        prefix = data[:16]
        for name, (_, accept) in Image.OPEN.items():
            if accept is not None and accept(prefix) is True:
                return name
    except Exception:  # only for a better message: never let it fail the refusal
        return None
    return None


def open_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = ALLOWED_FORMATS,
    *,
    fit_in: tuple[int, int] | None = None,
) -> Image.Image:
    """Open untrusted image bytes with Pillow, header only; the one way mangaka opens them.

    Only ``formats`` are tried; the width and height the header declares are checked
    against ``fit_in`` (the largest ``(width, height)`` allowed, if given) and
    ``max_pixels`` before any pixel is decoded. Returns the image not yet loaded, or
    raises :class:`BadImage` saying why.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit; whether that is too many pixels is ours to say
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data), formats=tuple(formats))
    except UnidentifiedImageError:
        found = _sniff_format(data)
        allowed = ", ".join(formats)
        if found is not None and found not in formats:
            raise BadImage(
                f"not an image: unrecognised format (it looks like {found}, which is not an allowed format; "
                f"mangaka opens {allowed})"
            ) from None
        raise BadImage(f"not an image: unrecognised format (mangaka opens {allowed})") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"decompression bomb refused: {exc}") from None
    except _DECODER_ERRORS as exc:
        raise _decoder_error(exc) from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise BadImage(f"image has no pixels ({w}x{h})")
    if fit_in is not None and (w > fit_in[0] or h > fit_in[1]):
        raise BadImage(f"decompression bomb refused: {w}x{h} does not fit in {fit_in[0]}x{fit_in[1]}")
    if w * h > max_pixels:
        raise BadImage(
            f"decompression bomb refused: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (--max-pixels)"
        )
    return im


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int = 0, draft_size: int = 0) -> Image.Image:
    """Decode ``data`` to an upright 8-bit RGB Pillow image at full size, or raise BadImage.

    ``draft_size`` > 0 lets a large JPEG decode at a reduced scale that keeps at least that
    many pixels on its shorter side.
    """
    im = open_image(data, max_pixels)
    w, h = im.size
    if min(w, h) < min_size:
        raise BadImage(f"too small: {w}x{h}, shorter side under --min-size {min_size}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if (
                draft_size
                and im.format == "JPEG"
                and min(w, h) >= 2 * draft_size
                and isinstance(im, ImageFile.ImageFile)
            ):
                im.draft("RGB", _draft_target(w, h, draft_size))
            im.load()
            if im.getexif().get(0x0112, 1) != 1:  # transposing copies: only when needed
                im = ImageOps.exif_transpose(im) or im
            return to_rgb(im)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb refused: {exc}") from None
    except _DECODER_ERRORS as exc:
        raise _decoder_error(exc) from None


def load_square_into(
    data: bytes,
    out: np.ndarray,
    fit: str = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 0,
) -> None:
    """:func:`load_square` writing into ``out`` (RGB ``(size, size, 3)`` uint8 in 0..255, C-contiguous).

    A baseline JPEG that already is ``size`` x ``size``, upright and in YCbCr or grey (the
    Danbooru case) is decoded by libjpeg-turbo straight into ``out``: no intermediate
    image, no copies. Everything else, and anything the fast path dislikes, takes the
    general path, which also produces the error message for broken files.
    """
    if not _jpeg_direct(data, out, max_pixels, min_size):
        out[...] = load_square(data, out.shape[0], fit, max_pixels, min_size)


def _jpeg_direct(data: bytes, out: np.ndarray, max_pixels: int, min_size: int) -> bool:
    import simplejpeg

    size = out.shape[0]
    if len(data) < 4 or data[:2] != b"\xff\xd8" or size * size > max_pixels or size < min_size:
        return False
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return False
    if (h, w) != (size, size) or colorspace not in ("YCbCr", "Gray") or exif_orientation(data) != 1:
        return False
    try:
        simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, strict=True)
    except ValueError:
        return False
    return True


def square(im: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """Centre-crop (or pad with white) to a square, then resize to ``size`` with Lanczos.

    ``im`` and the result are 8-bit RGB Pillow images (the result ``size`` x ``size``).
    """
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


def square_mask(mask: np.ndarray, size: int, fit: str = "crop", pad_value: int = 255) -> np.ndarray:
    """:func:`square` for class-id masks: same crop or pad (with ``pad_value``), nearest resize.

    ``mask`` ``(H, W)`` uint8 class ids (255 = ignore) -> ``(size, size)`` uint8 class ids, C-contiguous.
    """
    h, w = mask.shape
    if fit == "crop":
        side = min(w, h)
        top, left = (h - side) // 2, (w - side) // 2
        mask = mask[top : top + side, left : left + side]
    else:
        side = max(w, h)
        canvas = np.full((side, side), pad_value, dtype=mask.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top : top + h, left : left + w] = mask
        mask = canvas
    if mask.shape != (size, size):
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return np.ascontiguousarray(mask)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` RGB or ``(H, W)`` class-id/grey ``uint8`` array (0..255)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 HxW or HxWx3 array, got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
