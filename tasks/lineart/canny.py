"""``canny``: the seed's "Style transfer for line drawings" recipe, auto-Canny.

Grey, a bilateral filter (d 7, sigma colour 50, sigma space 50), then Canny with
thresholds from the median ``v`` of the filtered image: ``lower = max(0, (1 - 0.33) v)``,
``upper = min(255, (1 + 0.33) v)``.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.lineart import Method, grey, register

CANNY = {"d": 7, "sigma_color": 50.0, "sigma_space": 50.0, "sigma": 0.33}


def auto_canny(
    image: np.ndarray, d: int = 7, sigma_color: float = 50.0, sigma_space: float = 50.0, sigma: float = 0.33
) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 -> ``(H, W)`` uint8 drawing (0 ink): bilateral filter, median-based Canny."""
    filtered = cv2.bilateralFilter(grey(image), d, sigma_color, sigma_space)
    v = float(np.median(filtered))
    lower, upper = int(max(0, (1 - sigma) * v)), int(min(255, (1 + sigma) * v))
    edges = cv2.Canny(filtered, lower, upper)
    return 255 - edges


register(Method("canny", "auto-Canny: bilateral filter, Canny at median-based thresholds", auto_canny, CANNY))
