"""Line art of every corpus image: a registry of methods, boundary F1, and the shard renderer.

Every method maps an RGB ``(H, W, 3)`` uint8 image to a ``(H, W)`` uint8 drawing with
0 = ink and 255 = paper, the convention of ``synth``'s ``lines/``. Each method is one
module of this package that calls :func:`register` when imported; the package imports
all of its modules, so the command line, ``build``, ``serve``'s forms, ``status`` and the
report know a method the moment its file exists. The built-in ones:

- ``canny``: auto-Canny (:mod:`tasks.lineart.canny`);
- ``xdog``: Winnemoeller's extended difference of Gaussians (:mod:`tasks.lineart.xdog`);
- ``sobel``: Sobel gradients thinned by non-maximum suppression (:mod:`tasks.lineart.sobel`);
- ``artline``: the learned ArtLine-style model (:mod:`tasks.lineart.artline`, trained by
  :mod:`tasks.artline`).

Boundary F1 (:func:`boundary_f1`): ink = pixels darker than 128; precision = share of
predicted ink within ``tolerance`` pixels (Euclidean) of truth ink, recall = share of
truth ink within ``tolerance`` of predicted ink.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from storage.workspace import Workspace
from tasks.shards import MODELS, ShardResult, corpus_cell, one_thread_per_worker, prepare_rendering, render_shard

log = logging.getLogger(__name__)

INK = 128
IMAGES = "corpus/images"


@dataclass(frozen=True)
class Method:
    """A line-art method, training-free (``draw``) or learned (``model``, ``load``, ``draw_batch``).

    ``draw(image, **params)``: one RGB ``(H, W, 3)`` uint8 image to a ``(H, W)`` uint8
    drawing (0 ink, 255 paper). ``params`` are the pinned parameters: they are part of the
    producer version, so changing one renders the corpus again. A learned method names its
    model directory (``models/<model>``); ``load(ws, checkpoint, device)`` returns what
    ``draw_batch(loaded, images, batch_size)`` needs to draw ``(B, H, W, 3)`` images.
    """

    name: str
    about: str
    draw: Callable[..., np.ndarray] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    load: Callable[[Workspace, str, str], Any] | None = None
    draw_batch: Callable[[Any, np.ndarray, int], np.ndarray] | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a module of this package calls it when imported)."""
    if method.name in METHODS:
        raise ValueError(f"line-art method {method.name!r} is registered twice")
    if (method.draw is None) == (method.model is None):
        raise ValueError(f"line-art method {method.name!r} needs either draw or a model")
    METHODS[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """Every registered method, training-free ones first, in registration order."""
    return tuple(sorted(METHODS, key=lambda m: METHODS[m].model is not None))


def grey(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 luma of an RGB ``(H, W, 3)`` uint8 image (a ``(H, W)`` image as is)."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def render(method: str, image: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """One training-free method on one image, with its pinned parameters unless ``params`` are given."""
    m = METHODS.get(method)
    if m is None or m.draw is None:
        free = ", ".join(n for n in method_names() if METHODS[n].draw is not None)
        raise ValueError(f"method must be one of {free} (learned methods run a model), not {method!r}")
    return m.draw(image, **(params if params is not None else m.params))


def producer_version(method: str, digest: str = "") -> str:
    """The producer version of ``corpus/lineart/<method>``: its parameters or model digest."""
    params = dict(METHODS[method].params) if method in METHODS else {}
    blob = f"lineart-1|{method}|{sorted(params.items())}|{digest}"
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# -- boundary F1 -------------------------------------------------------------------------------
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
def array_name(method: str) -> str:
    return f"corpus/lineart/{method}"


@dataclass(frozen=True)
class LineartShardSpec:
    workspace: str
    shard: int
    method: str
    version: str
    checkpoint: str  # learned methods only: the resolved checkpoint name
    slots: list[int]  # live corpus items in this shard
    device: str = "auto"
    batch_size: int = 16


def prepare_array(ws: Workspace, method: str) -> None:
    """Create or grow ``corpus/lineart/<method>`` to the corpus's length."""
    prepare_rendering(ws, array_name(method), corpus_cell(ws, None, 255), owner="render-lineart")


def lineart_shard(spec: LineartShardSpec) -> ShardResult:
    """Render one corpus shard with one method; the marker carries the method's version."""
    one_thread_per_worker()
    ws = Workspace(spec.workspace)
    m = METHODS[spec.method]
    if m.draw is not None:
        draw, params = m.draw, dict(m.params)

        def lines(images: np.ndarray, rows: list[int]) -> np.ndarray:
            return np.stack([draw(img, **params) for img in images])

    else:
        assert m.load is not None and m.draw_batch is not None
        load, draw_batch = m.load, m.draw_batch

        def lines(images: np.ndarray, rows: list[int]) -> np.ndarray:
            loaded = MODELS.get(
                lambda: load(ws, spec.checkpoint, spec.device), ws.url, m.name, spec.checkpoint, spec.device
            )
            return draw_batch(loaded, images, spec.batch_size)

    return render_shard(
        ws, array_name(spec.method), spec.shard, spec.version, spec.slots, lines, checkpoint=spec.checkpoint or None
    )


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


def _discover() -> None:
    """Import every module of this package: each registers its method."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")


_discover()

# The primitives other stages draw with (the colouriser's inputs, npr's toon edges).
from tasks.lineart.canny import CANNY, auto_canny  # noqa: E402
from tasks.lineart.xdog import XDOG, xdog  # noqa: E402

__all__ = ["CANNY", "XDOG", "METHODS", "Method", "auto_canny", "register", "xdog"]
