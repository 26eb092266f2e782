"""Rendering ``corpus/styled/<name>`` shard by shard with one of four methods.

- ``npr``: a training-free OpenCV style (``tasks.npr``);
- ``fast``: the Johnson transformer trained for a style image (``tasks.fast_style``);
- ``gatys``: per-image optimisation (``tasks.neural_style``): minutes per image on a CPU,
  meant for small sets;
- ``colorize``: the colouriser on each image's line art (``corpus/lineart/<lines>`` where
  rendered, else auto-Canny of the image), with the colour hint taken from the image
  itself or, given a style image, from that one portrait for every image.

Style images are copied into the workspace (``styles/<digest>.<ext>``) so every worker
reads the same bytes; a shard's producer version hashes the method, its parameters and
the digest of any model it uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.workspace import ArraySpec, Workspace, check_name
from tasks.ingest import ShardResult

log = logging.getLogger(__name__)

IMAGES = "corpus/images"
METHODS = ("npr", "fast", "gatys", "colorize")
_MODELS: dict[str, Any] = {}


def array_name(name: str) -> str:
    return f"corpus/styled/{check_name(name, 'style name (--name)')}"


def style_version(method: str, params: dict[str, Any], digest: str = "") -> str:
    blob = json.dumps(["style-1", method, params, digest], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StyleShardSpec:
    workspace: str
    shard: int
    method: str
    name: str
    version: str
    slots: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"


def prepare_array(ws: Workspace, name: str) -> None:
    length = ws.length(IMAGES)
    size = int(ws.array(IMAGES).shape[1])
    ws.require_array(
        array_name(name), ArraySpec((size, size, 3), "uint8", ("y", "x", "rgb"), 0), length, owner="render-style"
    )


def store_style_image(ws: Workspace, data: bytes, suffix: str) -> str:
    """Copy a style image into the workspace; returns its key (``styles/<digest><suffix>``)."""
    key = f"styles/{hashlib.sha256(data).hexdigest()[:16]}{suffix.lower()}"
    if not ws.loc.exists(key):
        ws.loc.write_bytes(key, data)
    return key


def _style_rgb(ws: Workspace, key: str) -> np.ndarray:
    from tasks.imageio import load_rgb

    return np.asarray(load_rgb(ws.loc.read_bytes(key)))


def _cached(key: str, make: Any) -> Any:
    if key not in _MODELS:
        _MODELS.clear()
        _MODELS[key] = make()
    return _MODELS[key]


def render_images(ws: Workspace, spec: StyleShardSpec, images: np.ndarray, live: list[int]) -> np.ndarray:
    p = spec.params
    if spec.method == "npr":
        from tasks.npr import npr

        return np.stack([npr(img, p["style"]) for img in images])
    if spec.method == "fast":
        from tasks.fast_style import apply_fast_style, load_fast_style
        from tasks.segment import pick_device

        net, _ = _cached(f"{ws.url}|fast|{p['style_key']}", lambda: load_fast_style(ws, p["style_key"], spec.device))
        return apply_fast_style(net, images, pick_device(spec.device))
    if spec.method == "gatys":
        from tasks.neural_style import StyleOptions, stylize

        style = _style_rgb(ws, p["style_image"])
        opts = StyleOptions(**p["options"])
        return np.stack([stylize(img, style, opts)[0] for img in images])
    if spec.method == "colorize":
        from PIL import Image

        from tasks.colorizer import colorize_lines, load_colorizer
        from tasks.imageio import square
        from tasks.lineart import array_name as lineart_array
        from tasks.lineart import auto_canny
        from tasks.segment import pick_device

        model, num_values, _ = _cached(f"{ws.url}|colorizer", lambda: load_colorizer(ws, "latest", spec.device))
        source = p.get("lines", "canny")
        start = spec.shard * ws.shard_size
        rendered = source != "canny" and ws.read_marker(lineart_array(source), spec.shard) is not None
        if rendered:
            lines = ws.read_items(lineart_array(source), [start + j for j in live])
        else:
            lines = np.stack([auto_canny(img) for img in images])
        hints = None
        if model.hint_size:  # the colour layout of each image, or of one reference portrait for all
            if p.get("hint_image"):
                ref = np.asarray(square(Image.fromarray(_style_rgb(ws, p["hint_image"])), images.shape[1]))
                hints = np.repeat(model.hint(ref[None]), len(images), axis=0)
            else:
                hints = model.hint(images)
        return colorize_lines(model, lines, num_values, pick_device(spec.device), hints=hints)
    raise ValueError(f"method must be one of {', '.join(METHODS)}, not {spec.method!r}")


def style_shard(spec: StyleShardSpec) -> ShardResult:
    from tasks.lineart import one_thread_per_worker

    one_thread_per_worker()
    ws = Workspace(spec.workspace)
    array = array_name(spec.name)
    if ws.is_done(array, spec.shard, spec.version, live=spec.slots):
        return ShardResult(array, spec.shard, skipped=True)
    t0 = time.perf_counter()
    start = spec.shard * ws.shard_size
    n = len(ws.shard_slots(spec.shard, ws.length(IMAGES)))
    size = int(ws.array(IMAGES).shape[1])
    live = [s - start for s in spec.slots]
    out = np.zeros((n, size, size, 3), np.uint8)
    if live:
        out[live] = render_images(ws, spec, ws.read_items(IMAGES, spec.slots), live)
    ws.write_shard(array, spec.shard, out, sorted(set(range(n)) - set(live)))
    ws.write_marker(array, spec.shard, spec.version, live=spec.slots, method=spec.method, params=spec.params)
    dt = time.perf_counter() - t0
    log.info("style %s (%s) shard %d: %d images in %.1f s", spec.name, spec.method, spec.shard, len(live), dt)
    return ShardResult(array, spec.shard, False, len(live), 0, dt)
