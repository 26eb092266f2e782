"""Training-free styles (OpenCV non-photorealistic rendering) and vectorised posterisation.

Every style maps an RGB ``(H, W, 3)`` uint8 image to an RGB image of the same shape:

- ``stylization``: OpenCV's edge-preserving stylisation (sigma_s 60, sigma_r 0.45);
- ``pencil``: OpenCV's colour pencil sketch (sigma_s 60, sigma_r 0.07, shade 0.05);
- ``oil``: a Kuwahara filter (radius 4): every pixel takes the mean colour of the least
  varied of its four overlapping quadrants, computed for the whole image with box filters;
- ``toon``: bilateral smoothing, posterisation to 4 values per channel, and auto-Canny
  edges inked on top.

Posterisation (the line-drawing colouriser's targets): ``num_values`` levels per channel
(``linspace(0, 255, num_values)``), so ``num_values**3`` palette colours; a pixel's class is
``r * n**2 + g * n + b`` of its nearest levels. :func:`posterize_classes` does a whole batch
in one array operation; :func:`posterize_loop` is the seed's per-pixel loop, kept as the
benchmark's anchor.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

NPR_STYLES = ("stylization", "pencil", "oil", "toon")


def palette(num_values: int) -> np.ndarray:
    """``(num_values**3, 3)`` uint8 colours, in class order."""
    levels = np.linspace(0, 255, num_values).round().astype(np.uint8)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)


def posterize_classes(images: np.ndarray, num_values: int) -> np.ndarray:
    """Palette class of every pixel of ``(..., 3)`` uint8 images: table lookups over the batch.

    RGB ``(..., 3)`` uint8 in 0..255 -> ``(...)`` class ids in 0..num_values**3 - 1
    (uint8 up to 256 classes, else int32).
    """
    if num_values < 2:
        raise ValueError(f"num_values must be at least 2, not {num_values}")
    n = num_values
    dtype = np.uint8 if n**3 <= 256 else np.int32
    level = np.rint(np.arange(256) * ((n - 1) / 255.0)).astype(dtype)  # nearest level of every byte value
    lut_r, lut_g = level * dtype(n * n), level * dtype(n)
    return lut_r[images[..., 0]] + lut_g[images[..., 1]] + level[images[..., 2]]


def posterize(images: np.ndarray, num_values: int) -> np.ndarray:
    """The nearest palette colour of every pixel: RGB ``(..., 3)`` uint8 in 0..255 in and out."""
    return palette(num_values)[posterize_classes(images, num_values)]


def posterize_loop(image: np.ndarray, num_values: int) -> np.ndarray:
    """The seed's posterisation: a Python loop over pixels and channels (benchmark anchor).

    RGB ``(H, W, 3)`` uint8 in 0..255 in and out.
    """
    values = np.linspace(0, 255, num_values)
    colours = values.round()
    out = np.empty_like(image)
    h, w, _ = image.shape
    for y in range(h):
        for x in range(w):
            for c in range(3):
                out[y, x, c] = colours[np.argmin(np.abs(values - image[y, x, c]))]
    return out


def kuwahara(image: np.ndarray, radius: int = 4) -> np.ndarray:
    """Kuwahara filter: per pixel, the mean of the least varied of its four quadrants.

    RGB ``(H, W, 3)`` uint8 in 0..255 in and out.
    """
    img = image.astype(np.float32)
    k = radius + 1
    mean = cv2.boxFilter(img, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)
    sq = cv2.boxFilter(img * img, -1, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)
    var = (sq - mean * mean).sum(axis=2)
    h, w = var.shape
    pad_m = cv2.copyMakeBorder(mean, radius, radius, radius, radius, cv2.BORDER_REFLECT)
    pad_v = cv2.copyMakeBorder(var, radius, radius, radius, radius, cv2.BORDER_REFLECT)
    # the box of side k centred at (y + dy, x + dx) is one quadrant of the (2r+1) window at (y, x)
    shifts = [
        (-radius // 2, -radius // 2),
        (-radius // 2, radius // 2),
        (radius // 2, -radius // 2),
        (radius // 2, radius // 2),
    ]
    quad_v = np.stack([pad_v[radius + dy : radius + dy + h, radius + dx : radius + dx + w] for dy, dx in shifts])
    quad_m = np.stack([pad_m[radius + dy : radius + dy + h, radius + dx : radius + dx + w] for dy, dx in shifts])
    best = quad_v.argmin(axis=0)
    out = np.take_along_axis(quad_m, best[None, :, :, None], axis=0)[0]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def npr(image: np.ndarray, style: str) -> np.ndarray:
    """One training-free style on one RGB image: ``(H, W, 3)`` uint8 in 0..255 in and out."""
    bgr = np.ascontiguousarray(image[..., ::-1])
    if style == "stylization":
        out = cv2.stylization(bgr, sigma_s=60, sigma_r=0.45)
    elif style == "pencil":
        _, out = cv2.pencilSketch(bgr, sigma_s=60, sigma_r=0.07, shade_factor=0.05)
    elif style == "oil":
        return kuwahara(image, 4)
    elif style == "toon":
        from tasks.lineart import auto_canny

        smooth = cv2.bilateralFilter(np.ascontiguousarray(image), 9, 75, 75)
        out = posterize(smooth, 4)
        edges = auto_canny(image) < 128
        out[cv2.dilate(edges.astype(np.uint8), np.ones((2, 2), np.uint8)) > 0] = 20
        return out
    else:
        raise ValueError(f"npr style must be one of {', '.join(NPR_STYLES)}, not {style!r}")
    return np.ascontiguousarray(out[..., ::-1])


def npr_version(style: str) -> str:
    return hashlib.sha1(f"npr-1|{style}".encode()).hexdigest()[:16]
