"""``xdog``: Winnemoeller, Kyprianidis and Olsen 2012, "XDoG: An eXtended difference-of-Gaussians compendium".

On grey in [0, 1], ``D = (1 + p) G_sigma - p G_{k sigma}``, then ``T = 1`` where ``D >=
eps`` else ``1 + tanh(phi (D - eps))``. The parameters in :data:`XDOG` were pinned by a
grid search on synth portraits (boundary F1 at 2 px, ``bench/lineart.py --tune``);
implementations in the wild use other parametrisations (tau instead of p, thresholds on
0..255), so they are stated here in full.
"""

from __future__ import annotations

import cv2
import numpy as np

from tasks.lineart import Method, grey, register

XDOG = {"sigma": 0.8, "k": 1.6, "p": 10.0, "eps": 0.0, "phi": 200.0}


def xdog(
    image: np.ndarray, sigma: float = 0.8, k: float = 1.6, p: float = 10.0, eps: float = 0.0, phi: float = 200.0
) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 -> ``(H, W)`` uint8 drawing (0 ink): XDoG, thresholded softly."""
    g = grey(image).astype(np.float32) / 255
    g1 = cv2.GaussianBlur(g, (0, 0), sigma)
    g2 = cv2.GaussianBlur(g, (0, 0), sigma * k)
    d = (1 + p) * g1 - p * g2
    t = np.where(d >= eps, 1.0, 1 + np.tanh(phi * (d - eps)))
    return np.clip(t * 255 + 0.5, 0, 255).astype(np.uint8)


register(Method("xdog", "extended difference of Gaussians (Winnemoeller 2012), soft threshold", xdog, XDOG))
