"""Line art: auto-Canny, XDoG, and the learned ArtLine-style model; boundary F1 against truth.

Every method maps an RGB ``(H, W, 3)`` uint8 image to a ``(H, W)`` uint8 drawing with
0 = ink and 255 = paper, the convention of ``synth``'s ``lines/``.

- ``canny`` (the seed "Style transfer for line drawings"): grey, a bilateral filter
  (d 7, sigma colour 50, sigma space 50), then Canny with thresholds from the median
  ``v`` of the filtered image: ``lower = max(0, (1 - 0.33) v)``, ``upper = min(255, (1 +
  0.33) v)``.
- ``xdog`` (Winnemoeller, Kyprianidis and Olsen 2012, "XDoG: An eXtended
  difference-of-Gaussians compendium"): on grey in [0, 1], ``D = (1 + p) G_sigma - p
  G_{k sigma}``, then ``T = 1`` where ``D >= eps`` else ``1 + tanh(phi (D - eps))``. The
  parameters in :data:`XDOG` were pinned by a grid search on synth portraits (boundary F1
  at 2 px, ``bench/lineart.py --tune``); implementations in the wild use other
  parametrisations (tau instead of p, thresholds on 0..255), so they are stated here in
  full.
- ``artline``: ``models/artline.py``, trained by :mod:`tasks.artline`.

Boundary F1 (:func:`boundary_f1`): ink = pixels darker than 128; precision = share of
predicted ink within ``tolerance`` pixels (Euclidean) of truth ink, recall = share of
truth ink within ``tolerance`` of predicted ink.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from storage.workspace import ArraySpec, Workspace
from tasks.ingest import ShardResult

log = logging.getLogger(__name__)

CANNY = {"d": 7, "sigma_color": 50.0, "sigma_space": 50.0, "sigma": 0.33}
XDOG = {"sigma": 0.8, "k": 1.6, "p": 10.0, "eps": 0.0, "phi": 200.0}
METHODS = ("canny", "xdog", "artline")
INK = 128


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def auto_canny(
    image: np.ndarray, d: int = 7, sigma_color: float = 50.0, sigma_space: float = 50.0, sigma: float = 0.33
) -> np.ndarray:
    """The seed's recipe: bilateral filter, then Canny with median-based thresholds."""
    grey = cv2.bilateralFilter(_grey(image), d, sigma_color, sigma_space)
    v = float(np.median(grey))
    lower, upper = int(max(0, (1 - sigma) * v)), int(min(255, (1 + sigma) * v))
    edges = cv2.Canny(grey, lower, upper)
    return 255 - edges


def xdog(
    image: np.ndarray, sigma: float = 0.8, k: float = 1.6, p: float = 10.0, eps: float = 0.0, phi: float = 200.0
) -> np.ndarray:
    """Winnemoeller's extended difference of Gaussians, thresholded softly (see module docstring)."""
    grey = _grey(image).astype(np.float32) / 255
    g1 = cv2.GaussianBlur(grey, (0, 0), sigma)
    g2 = cv2.GaussianBlur(grey, (0, 0), sigma * k)
    d = (1 + p) * g1 - p * g2
    t = np.where(d >= eps, 1.0, 1 + np.tanh(phi * (d - eps)))
    return np.clip(t * 255 + 0.5, 0, 255).astype(np.uint8)


def render(method: str, image: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """One training-free method on one image (``artline`` needs a model: see tasks.artline)."""
    if method == "canny":
        return auto_canny(image, **(params or CANNY))
    if method == "xdog":
        return xdog(image, **(params or XDOG))
    raise ValueError(f"method must be one of canny, xdog (artline runs a model), not {method!r}")


def method_version(method: str, digest: str = "") -> str:
    """The producer version of ``corpus/lineart/<method>``: its parameters or model digest."""
    params = {"canny": CANNY, "xdog": XDOG}.get(method, {})
    blob = f"lineart-1|{method}|{sorted(params.items())}|{digest}"
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> dict[str, float]:
    """Precision, recall and F1 of ``pred`` ink against ``truth`` ink at ``tolerance`` pixels."""
    p_ink, t_ink = pred < INK, truth < INK
    tp_p, tp_t, n_p, n_t = _matches(p_ink, t_ink, tolerance)
    return _prf(tp_p, tp_t, n_p, n_t)


def _matches(p_ink: np.ndarray, t_ink: np.ndarray, tolerance: float) -> tuple[int, int, int, int]:
    # distance of every pixel to the nearest ink pixel of the other drawing
    dist_t = cv2.distanceTransform((~t_ink).astype(np.uint8), cv2.DIST_L2, 5) if t_ink.any() else None
    dist_p = cv2.distanceTransform((~p_ink).astype(np.uint8), cv2.DIST_L2, 5) if p_ink.any() else None
    tp_p = int((dist_t[p_ink] <= tolerance).sum()) if dist_t is not None else 0
    tp_t = int((dist_p[t_ink] <= tolerance).sum()) if dist_p is not None else 0
    return tp_p, tp_t, int(p_ink.sum()), int(t_ink.sum())


def _prf(tp_p: int, tp_t: int, n_p: int, n_t: int) -> dict[str, float]:
    precision = tp_p / n_p if n_p else (1.0 if not n_t else 0.0)
    recall = tp_t / n_t if n_t else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}


def dataset_f1(preds: list[np.ndarray], truths: list[np.ndarray], tolerance: float = 2.0) -> dict[str, Any]:
    """Boundary F1 over a set of drawings: matched pixels summed over images (micro average)."""
    totals = np.zeros(4, np.int64)
    for p, t in zip(preds, truths, strict=True):
        totals += _matches(p < INK, t < INK, tolerance)
    return {**_prf(*(int(v) for v in totals)), "images": len(preds)}


# -- rendering the corpus ----------------------------------------------------------------------
IMAGES = "corpus/images"
_MODELS: dict[str, Any] = {}


def array_name(method: str) -> str:
    return f"corpus/lineart/{method}"


@dataclass(frozen=True)
class LineartShardSpec:
    workspace: str
    shard: int
    method: str
    version: str
    checkpoint: str  # artline only: the resolved checkpoint name
    slots: list[int]  # live corpus items in this shard
    device: str = "auto"
    batch_size: int = 16


def prepare_array(ws: Workspace, method: str) -> None:
    """Create or grow ``corpus/lineart/<method>`` to the corpus's length."""
    length = ws.length(IMAGES)
    size = int(ws.array(IMAGES).shape[1])
    ws.require_array(
        array_name(method), ArraySpec((size, size), "uint8", ("y", "x"), 255), length, owner="render-lineart"
    )


def _artline(ws: Workspace, checkpoint: str, device: str) -> tuple[Any, Any]:
    from tasks.artline import load_artline
    from tasks.segment import pick_device

    key = f"{ws.url}|{checkpoint}|{device}"
    if key not in _MODELS:
        _MODELS.clear()
        model, _, _ = load_artline(ws, checkpoint, device)
        _MODELS[key] = (model, pick_device(device))
    return _MODELS[key]


def one_thread_per_worker() -> None:
    """Inside a Dask worker (one per core), keep OpenCV to one thread: no oversubscription."""
    distributed = sys.modules.get("distributed")  # loaded in every Dask worker; never imported here
    if distributed is None:
        return
    try:
        distributed.get_worker()
    except ValueError:
        return
    cv2.setNumThreads(1)


def lineart_shard(spec: LineartShardSpec) -> ShardResult:
    """Render one corpus shard with one method; the marker carries the method's version."""
    one_thread_per_worker()
    ws = Workspace(spec.workspace)
    array = array_name(spec.method)
    if ws.is_done(array, spec.shard, spec.version, live=spec.slots):
        return ShardResult(array, spec.shard, skipped=True)
    t0 = time.perf_counter()
    start = spec.shard * ws.shard_size
    n = len(ws.shard_slots(spec.shard, ws.length(IMAGES)))
    size = int(ws.array(IMAGES).shape[1])
    live = [s - start for s in spec.slots]
    out = np.full((n, size, size), 255, np.uint8)
    step = 32  # a batch at a time: memory bounded by a batch, not a shard
    for b in range(0, len(live), step):
        rows = live[b : b + step]
        images = ws.read_items(IMAGES, [start + j for j in rows])
        if spec.method == "artline":
            from tasks.artline import draw_lines

            model, device = _artline(ws, spec.checkpoint, spec.device)
            out[rows] = draw_lines(model, images, device, spec.batch_size)
        else:
            for j, img in zip(rows, images, strict=True):
                out[j] = render(spec.method, img)
    ws.write_shard(array, spec.shard, out, sorted(set(range(n)) - set(live)))
    ws.write_marker(array, spec.shard, spec.version, live=spec.slots, checkpoint=spec.checkpoint or None)
    dt = time.perf_counter() - t0
    log.info("lineart %s shard %d: %d images in %.1f s", spec.method, spec.shard, len(live), dt)
    return ShardResult(array, spec.shard, False, len(live), 0, dt)


def lineart_against(ws: Workspace, method: str, truth: dict[str, np.ndarray], tolerance: float = 2.0) -> dict[str, Any]:
    """Boundary F1 of ``corpus/lineart/<method>`` against truth line art by item id."""
    from storage.items import item_table

    table = item_table(ws, "corpus")
    array = array_name(method)
    done = set(ws.markers(array))
    items = [(e["slot"], i) for i, e in table.by_id.items() if i in truth and e["slot"] // ws.shard_size in done]
    items.sort()
    preds = list(ws.read_items(array, [s for s, _ in items])) if items else []
    return dataset_f1(preds, [truth[i] for _, i in items], tolerance)
