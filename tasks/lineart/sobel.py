"""``sobel``: Sobel gradients thinned by non-maximum suppression, one threshold.

Grey, a Gaussian blur (``sigma``), Sobel derivatives (3x3); the gradient magnitude is kept
only where it is a maximum across the edge (its direction quantised to 0, 45, 90 or 135
degrees, as in Canny's thinning step), and that ridge is ink where it reaches
``threshold`` times the 99th percentile of the image's magnitudes. Unlike Canny there is
no hysteresis: faint continuations of strong edges are not followed, so lines are thin and
broken where the contrast drops; unlike XDoG it draws one line per edge, not a band.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.lineart import Method, grey, register

SOBEL = {"sigma": 0.7, "threshold": 0.4}


def sobel_nms(image: np.ndarray, sigma: float = 0.7, threshold: float = 0.4) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 -> ``(H, W)`` uint8 drawing (0 ink, 255 paper): thinned Sobel edges."""
    g = (grey(image).astype(np.float32) / 255).astype(np.float32)
    if sigma > 0:
        g = np.asarray(cv2.GaussianBlur(g, (0, 0), sigma), np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    # direction of the gradient in [0, 180), quantised to the four neighbour pairs
    angle = (np.degrees(np.arctan2(gy, gx)) + 180.0) % 180.0
    sector = ((angle + 22.5) // 45).astype(np.int8) % 4  # 0: -, 1: /, 2: |, 3: \
    p = np.pad(mag, 1, mode="edge")
    h, w = mag.shape
    # (dy, dx) of the neighbours across the edge for each sector (image rows grow downwards)
    offsets = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros(mag.shape, bool)
    for s, (dy, dx) in offsets.items():
        ahead = p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = p[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (sector == s) & (mag >= ahead) & (mag >= behind)
    scale = float(np.percentile(mag, 99)) if mag.any() else 0.0
    ink = keep & (mag >= max(threshold * scale, 1e-3))
    return np.where(ink, 0, 255).astype(np.uint8)


register(Method("sobel", "Sobel gradients thinned by non-maximum suppression", sobel_nms, SOBEL))
