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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from storage.workspace import Workspace, check_name
from tasks.shards import MODELS, ShardResult, corpus_cell, one_thread_per_worker, prepare_rendering, render_shard

IMAGES = "corpus/images"


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


Draw = Callable[[Workspace, StyleShardSpec, np.ndarray, list[int]], np.ndarray]


@dataclass(frozen=True)
class StyleMethod:
    """A style method: ``draw(ws, spec, images, rows)`` maps a shard's ``(B, S, S, 3)`` uint8 RGB
    corpus images (at shard rows ``rows``) to ``(B, S, S, 3)`` uint8 RGB renderings."""

    name: str
    about: str
    draw: Draw
    gpu: bool = True  # pinned to GPU workers where the cluster has them
    palette: bool = False  # draws palette colours only: stored lossless, whatever the workspace's codec


STYLE_METHODS: dict[str, StyleMethod] = {}


def style_method(name: str, about: str, gpu: bool = True, palette: bool = False) -> Callable[[Draw], Draw]:
    """Register ``draw`` as style method ``name`` (its parameters come in ``spec.params``)."""

    def wrap(draw: Draw) -> Draw:
        if name in STYLE_METHODS:
            raise ValueError(f"style method {name!r} is registered twice")
        STYLE_METHODS[name] = StyleMethod(name, about, draw, gpu, palette)
        return draw

    return wrap


def array_name(name: str) -> str:
    return f"corpus/styled/{check_name(name, 'style name (--name)')}"


def producer_version(method: str, params: dict[str, Any], digest: str = "") -> str:
    blob = json.dumps(["style-1", method, params, digest], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def prepare_array(ws: Workspace, name: str, method: str) -> None:
    """Create or grow ``corpus/styled/<name>``: stored like the workspace's images (JPEG or
    lossless), except a palette method's, which keeps its exact palette colours (lossless)."""
    spec = corpus_cell(ws, 3, 0)
    if STYLE_METHODS[method].palette:
        spec = replace(spec, codec="raw")
    prepare_rendering(ws, array_name(name), spec, owner="render-style")


def store_style_image(ws: Workspace, data: bytes, suffix: str) -> str:
    """Copy a style image into the workspace; returns its key (``styles/<digest><suffix>``)."""
    key = f"styles/{hashlib.sha256(data).hexdigest()[:16]}{suffix.lower()}"
    if not ws.loc.exists(key):
        ws.loc.write_bytes(key, data)
    return key


def _style_rgb(ws: Workspace, key: str) -> np.ndarray:
    from tasks.imageio import load_rgb

    return np.asarray(load_rgb(ws.loc.read_bytes(key)))


@style_method("npr", "a training-free OpenCV style (npr styles: stylization, pencil, oil, toon)", gpu=False)
def _npr(ws: Workspace, spec: StyleShardSpec, images: np.ndarray, rows: list[int]) -> np.ndarray:
    from tasks.npr import npr

    return np.stack([npr(img, spec.params["style"]) for img in images])


@style_method("fast", "the fast (feed-forward) transformer trained for a style image")
def _fast(ws: Workspace, spec: StyleShardSpec, images: np.ndarray, rows: list[int]) -> np.ndarray:
    from tasks.device import pick_device
    from tasks.fast_style import apply_fast_style, load_fast_style

    key = spec.params["style_key"]
    net, _ = MODELS.get(lambda: load_fast_style(ws, key, spec.device), ws.url, "fast", key)
    return apply_fast_style(net, images, pick_device(spec.device))


@style_method("gatys", "Gatys et al. per image (minutes per image on a CPU: small sets)")
def _gatys(ws: Workspace, spec: StyleShardSpec, images: np.ndarray, rows: list[int]) -> np.ndarray:
    from tasks.neural_style import StyleOptions, stylize

    style = _style_rgb(ws, spec.params["style_image"])
    opts = StyleOptions(**spec.params["options"])
    return np.stack([stylize(img, style, opts)[0] for img in images])


@style_method(
    "colorize", "the colouriser on each image's line art, coloured like the image or a portrait", palette=True
)
def _colorize(ws: Workspace, spec: StyleShardSpec, images: np.ndarray, rows: list[int]) -> np.ndarray:
    from PIL import Image

    from tasks.colorizer import colorize_lines, load_colorizer
    from tasks.device import pick_device
    from tasks.imageio import square
    from tasks.lineart import array_name as lineart_array
    from tasks.lineart import auto_canny

    p = spec.params
    model, num_values, _ = MODELS.get(lambda: load_colorizer(ws, "latest", spec.device), ws.url, "colorizer")
    source = p.get("lines", "canny")
    start = spec.shard * ws.shard_size
    rendered = source != "canny" and ws.read_marker(lineart_array(source), spec.shard) is not None
    if rendered:
        lines = ws.read_items(lineart_array(source), [start + j for j in rows])
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


METHODS = tuple(STYLE_METHODS)


def render_images(ws: Workspace, spec: StyleShardSpec, images: np.ndarray, live: list[int]) -> np.ndarray:
    """``spec.method`` on a shard's live images (rows ``live``)."""
    if spec.method not in STYLE_METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {spec.method!r}")
    return STYLE_METHODS[spec.method].draw(ws, spec, images, live)


def style_shard(spec: StyleShardSpec) -> ShardResult:
    """Render one corpus shard into ``corpus/styled/<name>``, the whole shard at once."""
    one_thread_per_worker()
    ws = Workspace(spec.workspace)
    return render_shard(
        ws,
        array_name(spec.name),
        spec.shard,
        spec.version,
        spec.slots,
        lambda images, rows: render_images(ws, spec, images, rows),
        batch=None,
        method=spec.method,
        params=spec.params,
    )
