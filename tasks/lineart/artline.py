"""``artline``: the learned ArtLine-style U-Net (``models/artline.py``), trained by ``train-lineart``.

Its checkpoints live in ``models/artline``; the producer version of its drawings is the
checkpoint's digest, so a new model renders the corpus again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage.workspace import Workspace
from tasks.lineart import METHODS, Method, register


def _load(ws: Workspace, checkpoint: str, device: str) -> tuple[Any, Any]:
    from tasks.artline import load_artline
    from tasks.device import pick_device

    model, _, _ = load_artline(ws, checkpoint, device)
    return model, pick_device(device)


def _draw(loaded: tuple[Any, Any], images: np.ndarray, batch_size: int) -> np.ndarray:
    from tasks.artline import draw_lines

    model, device = loaded
    return draw_lines(model, images, device, batch_size, flip=METHODS["artline"].params["flip"])


register(
    Method(
        "artline",
        "the learned ArtLine-style U-Net (train-lineart)",
        params={"flip": True},  # draw_lines' mirrored mean: part of the producer version
        model="artline",
        load=_load,
        draw_batch=_draw,
    )
)
