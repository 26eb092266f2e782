"""What every shard task shares: its result, thread pinning, a model cache, one render writer.

A shard task owns one Zarr shard of one array (see ``docs/ARCHITECTURE.md``). The corpus
renderings (line art, styles) differ only in how they draw a batch of images, so
:func:`render_shard` does the rest for all of them: skip a shard already done for this
version, read the live images a batch at a time, write the shard whole with its holes
empty, then its marker, and say how long it took.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from storage.workspace import ArraySpec, Workspace

log = logging.getLogger(__name__)

IMAGES = "corpus/images"
T = TypeVar("T")


@dataclass(frozen=True)
class ShardResult:
    """What a shard task returns: small, so results travel cheaply from the workers."""

    array: str
    shard: int
    skipped: bool
    ok: int = 0
    quarantined: int = 0
    seconds: float = 0.0
    as_is: int = 0  # ingestion: items stored byte for byte from their source


def one_thread_per_worker() -> None:
    """Inside a Dask worker (one per core), keep OpenCV to one thread: no oversubscription."""
    import cv2

    distributed = sys.modules.get("distributed")  # loaded in every Dask worker; never imported here
    if distributed is None:
        return
    try:
        distributed.get_worker()
    except ValueError:
        return
    cv2.setNumThreads(1)


class ModelCache:
    """One loaded model per process, kept for the next shard with the same key.

    A worker renders shard after shard with the same model: loading it once saves a
    checkpoint read per shard. The key is made of its parts (workspace url, checkpoint,
    device, ...); a new key drops the model held before, so a worker never holds two.
    """

    def __init__(self) -> None:
        self._held: dict[str, Any] = {}

    def get(self, make: Callable[[], T], *parts: object) -> T:
        key = "|".join(str(p) for p in parts)
        if key not in self._held:
            self._held.clear()
            self._held[key] = make()
        value: T = self._held[key]
        return value

    def clear(self) -> None:
        self._held.clear()


MODELS = ModelCache()


def corpus_cell(ws: Workspace, channels: int | None, fill: int) -> ArraySpec:
    """The spec of a per-image rendering of the corpus: the corpus's side, ``channels`` or a plane."""
    size = int(ws.array(IMAGES).shape[1])
    if channels is None:
        return ArraySpec((size, size), "uint8", ("y", "x"), fill)
    if channels == 3:  # an RGB rendering is stored like the workspace's images (JPEG or lossless)
        codec, quality = ws.image_codec()
        return ArraySpec((size, size, 3), "uint8", ("y", "x", "rgb"), fill, codec, quality)
    return ArraySpec((size, size, channels), "uint8", ("y", "x", "rgb"), fill)


def prepare_rendering(ws: Workspace, array: str, spec: ArraySpec, owner: str) -> None:
    """Create or grow ``array`` (one item per corpus slot) to the corpus's length."""
    ws.require_array(array, spec, ws.length(IMAGES), owner=owner)


def render_shard(
    ws: Workspace,
    array: str,
    shard: int,
    version: str,
    slots: list[int],
    draw: Callable[[np.ndarray, list[int]], np.ndarray],
    batch: int | None = 32,
    **marker: Any,
) -> ShardResult:
    """Render the live corpus ``slots`` of ``shard`` into ``array`` with ``draw``; mark it ``version``.

    ``draw(images, rows)`` maps ``(B, S, S, 3)`` uint8 RGB corpus images (at shard rows
    ``rows``) to ``(B, *item_shape)`` uint8 items of ``array``. ``batch`` images at a time
    (``None``: the whole shard at once) bound memory by a batch. ``marker`` goes into the
    shard's marker beside the version.
    """
    if ws.is_done(array, shard, version, live=slots):
        # done by an attempt of this run whose worker was lost (flows plan only shards
        # without a matching marker): its images were rendered by this run
        return ShardResult(array, shard, skipped=True, ok=len(slots))
    t0 = time.perf_counter()
    start = shard * ws.shard_size
    n = len(ws.shard_slots(shard, ws.length(IMAGES)))
    arr = ws.array(array)
    out = np.full((n, *arr.shape[1:]), arr.fill_value, arr.dtype)
    live = [s - start for s in slots]
    step = batch or max(1, len(live))
    for b in range(0, len(live), step):
        rows = live[b : b + step]
        out[rows] = draw(ws.read_items(IMAGES, [start + j for j in rows]), rows)
    ws.write_shard(array, shard, out, sorted(set(range(n)) - set(live)))
    ws.write_marker(array, shard, version, live=slots, **marker)
    dt = time.perf_counter() - t0
    log.info("%s shard %d: %d images in %.1f s", array, shard, len(live), dt)
    return ShardResult(array, shard, False, len(live), 0, dt)
