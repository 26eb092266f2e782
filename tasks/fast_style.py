"""Fast (feed-forward) style: train a Johnson transformer for one style image, then apply it.

Training (Johnson et al. 2016): corpus images (or synth portraits when the corpus is
empty) at ``size``, batch ``batch_size``; loss = ``content_weight`` x MSE of VGG16 relu2_2
features + ``style_weight`` x the sum over relu1_2, relu2_2, relu3_3, relu4_3 of the MSE of
Gram matrices (normalised by C*H*W) against the style image's + ``tv_weight`` x TV; Adam.
VGG16 ImageNet weights come from a local file, else fixed-seed random features (logged,
recorded in the checkpoint's config). Batches are drawn from a generator seeded by
(seed, step), so the result depends only on the options and the data.

A model is kept per style image under ``models/fast-style/<style digest>`` (``latest``
tag), so ``render-style --method fast --style-image IMG`` finds the one trained for IMG, or
trains it first.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from models.registry import create
from storage.checkpoints import has_tag, load_checkpoint, save_checkpoint
from storage.workspace import Workspace
from tasks.device import autocast, pick_device, use_bf16
from tasks.neural_style import gram, tv
from tasks.tensors import to_unit
from tasks.training import load_weights, weights_bytes

log = logging.getLogger(__name__)

STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
CONTENT_LAYER = "relu2_2"
STYLE_SCALE = 1e4


class FastStyleOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        "johnson-fast", description="registered transformer network", json_schema_extra={"registry": "style"}
    )
    size: int = Field(256, ge=16, description="training side (multiple of 4)")
    steps: int = Field(300, ge=1, description="training steps")
    batch_size: int = Field(4, ge=1, description="corpus images per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    content_weight: float = Field(1.0, ge=0, description="weight of the VGG16 relu2_2 content loss")
    style_weight: float = Field(5.0, ge=0, description="weight of the Gram-matrix style loss over relu1_2..relu4_3")
    tv_weight: float = Field(1e-2, ge=0, description="weight of the total-variation loss")
    max_images: int = Field(2000, ge=1, description="corpus images to train on (evenly spaced)")
    vgg_weights: str | None = Field(None, description="local file with ImageNet VGG16 weights")
    seed: int = Field(0, description="seed of the shuffle and the initial weights")
    device: str = "auto"


def style_key(style_bytes: bytes) -> str:
    return hashlib.sha256(style_bytes).hexdigest()[:16]


def model_dir(key: str) -> str:
    return f"fast-style/{key}"


def _training_images(ws: Workspace, opts: FastStyleOptions) -> np.ndarray:
    from storage.items import item_table

    table = item_table(ws, "corpus")
    slots = sorted(e["slot"] for e in table.by_id.values())
    if slots:
        if len(slots) > opts.max_images:
            step = len(slots) / opts.max_images
            slots = [slots[int(i * step)] for i in range(opts.max_images)]
        return ws.read_items("corpus/images", slots, ws.dct_size("corpus/images", opts.size))  # DCT-scaled if it can
    from tasks.artline import draw_pairs

    log.info("train-style: the corpus is empty; training on 64 synth portraits")
    return draw_pairs(3000 + opts.seed, 64, opts.size)[0]


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def train_fast_style(
    ws: Workspace,
    style_image: np.ndarray,
    style_bytes: bytes,
    opts: FastStyleOptions,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train a transformer for ``style_image``; returns its checkpoint name and losses.

    ``style_image``: RGB ``(H, W, 3)`` uint8 in 0..255.
    """
    from models.vgg import VGGFeatures

    device = pick_device(opts.device)
    key = style_key(style_bytes)
    images = _training_images(ws, opts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        net = create("style", opts.model).to(device)
    vgg = VGGFeatures("vgg16", STYLE_LAYERS, opts.vgg_weights).to(device)
    style = to_unit(np.array(style_image)[None])
    with torch.no_grad():
        targets = [gram(f) for f in vgg(_resize(style, opts.size).to(device))]
    optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr)
    content_index = STYLE_LAYERS.index(CONTENT_LAYER)
    t0 = time.perf_counter()
    history: list[dict[str, float]] = []
    for step in range(opts.steps):
        g = torch.Generator().manual_seed(opts.seed * 1_000_003 + step)
        idx = torch.randint(len(images), (opts.batch_size,), generator=g).tolist()
        x = to_unit(images[idx])
        x = _resize(x, opts.size).to(device)
        y = net(x)
        fy = vgg(y)
        with torch.no_grad():
            fx = vgg(x)
        l_content = F.mse_loss(fy[content_index], fx[content_index])
        l_style = STYLE_SCALE * sum(
            F.mse_loss(gram(f), t.expand(len(f), -1, -1)) for f, t in zip(fy, targets, strict=True)
        )
        loss = opts.content_weight * l_content + opts.style_weight * l_style + opts.tv_weight * tv(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 25 == 0 or step + 1 == opts.steps:
            history.append(
                {
                    "step": step + 1,
                    "content": float(l_content.detach()),
                    "style": float(torch.as_tensor(l_style).detach()),
                }
            )
        if on_step:
            on_step(step + 1, opts.steps)
    name = f"{key}-steps-{opts.steps:06d}"
    config = {"model": opts.model, "style": key, "options": opts.model_dump(), "vgg": vgg.source}
    metrics = {"seconds": round(time.perf_counter() - t0, 1), "history": history}
    save_checkpoint(ws, model_dir(key), name, weights_bytes(net), config, metrics)
    return {"checkpoint": name, "style": key, "vgg": vgg.source, "seconds": metrics["seconds"], "history": history}


def has_model(ws: Workspace, key: str) -> bool:
    return has_tag(ws, model_dir(key))


def load_fast_style(ws: Workspace, key: str, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    ckpt = load_checkpoint(ws, model_dir(key), "latest")
    net = create("style", ckpt.config["model"])
    load_weights(net, ckpt.weights)
    return net.to(pick_device(device)).eval(), ckpt.digest


@torch.inference_mode()
def apply_fast_style(net: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 8) -> np.ndarray:
    """``(N, S, S, 3)`` uint8 -> stylised ``(N, S, S, 3)`` uint8 (sides padded to 4 inside).

    RGB ``(N, H, W, 3)`` uint8 in 0..255 in and out (the network sees unit tensors).

    bf16 autocast on GPUs and on CPUs with native bf16; channels-last where the network
    prefers it (``StyleTransformer.prefers_channels_last``).
    """
    bf16 = use_bf16("auto", device)
    prefers = getattr(net, "prefers_channels_last", None)
    layout = torch.channels_last if prefers is None or prefers(device) else torch.contiguous_format
    net = net.to(memory_format=layout)
    out = []
    for i in range(0, len(images), batch):
        x = to_unit(images[i : i + batch], device)
        h, w = x.shape[2:]
        x = F.pad(x, (0, (-w) % 4, 0, (-h) % 4), mode="replicate").contiguous(memory_format=layout)
        with autocast(device, bf16):
            y = net(x).float()[:, :, :h, :w]
        out.append((y.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros_like(images)
