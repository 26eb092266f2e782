"""The line-drawing colouriser: line art in, the posterised palette class of every pixel out.

Pairs: corpus images (or synth portraits when the corpus is empty); input = the image's
auto-Canny drawing (any line art works at inference: ``corpus/lineart/<method>``), target
= :func:`tasks.npr.posterize_classes` with ``num_values`` levels per channel
(``num_values**3`` classes). Model: the workspace's U-Net design (MobileNetV2-small
encoder, upsampling decoder, 740,715 parameters at 27 colours against the seed's 290M-parameter
convolution stack) with a softmax over palette classes; the line channel is repeated to
RGB. Cross-entropy, AdamW, one-cycle. Held out: 10% of the images by id hash; the metric
is ``palette_accuracy`` (share of held-out pixels whose class is right), reported with
``commonest_colour_accuracy``, the score of painting every pixel in the commonest
training colour. Writes
``models/colorizer/<run>`` (weights, config, metrics, ``curves.png`` of loss and accuracy
per epoch).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from models.registry import create
from storage.checkpoints import load_checkpoint, save_checkpoint
from storage.workspace import Workspace
from tasks.npr import palette, posterize_classes
from tasks.segment import pick_device

log = logging.getLogger(__name__)

MODEL_DIR = "colorizer"


class ColorizerOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "unet-mobilenetv2-small"
    size: int = Field(256, ge=32, description="training side (multiple of 32)")
    num_values: int = Field(3, ge=2, le=6)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0)
    max_images: int = Field(2000, ge=4)
    seed: int = 0
    device: str = "auto"

    def run_key(self) -> str:
        return hashlib.sha1(json.dumps(self.model_dump(exclude={"device"}), sort_keys=True).encode()).hexdigest()[:12]


def _images(ws: Workspace, opts: ColorizerOptions) -> tuple[list[str], np.ndarray]:
    from storage.items import item_table

    table = item_table(ws, "corpus")
    items = sorted(table.by_id.items(), key=lambda kv: kv[1]["slot"])
    if len(items) >= 4:
        if len(items) > opts.max_images:
            step = len(items) / opts.max_images
            items = [items[int(i * step)] for i in range(opts.max_images)]
        return [i for i, _ in items], ws.read_items("corpus/images", [e["slot"] for _, e in items])
    from tasks.artline import draw_pairs

    log.info("train-colorizer: the corpus has fewer than 4 images; training on 200 synth portraits")
    return [f"synth-{i}" for i in range(200)], draw_pairs(4000 + opts.seed, 200, opts.size)[0]


def _pairs(images: np.ndarray, size: int, num_values: int) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    from tasks.lineart import auto_canny

    xs, ys = [], []
    for img in images:
        if img.shape[0] != size:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
        xs.append(auto_canny(img))
        ys.append(posterize_classes(img, num_values))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


def _input(lines: torch.Tensor) -> torch.Tensor:
    return (lines.float() / 255)[:, None].expand(-1, 3, -1, -1).contiguous()


def curves_png(history: list[dict[str, Any]]) -> bytes:
    """Loss and held-out accuracy per epoch, drawn side by side."""
    from PIL import Image, ImageDraw

    w, h, pad = 320, 200, 30
    im = Image.new("RGB", (2 * w, h + 20), "white")
    draw = ImageDraw.Draw(im)
    for k, (key, title) in enumerate((("loss", "training loss"), ("palette_accuracy", "held-out palette accuracy"))):
        values = [float(e[key]) for e in history]
        x0 = k * w
        draw.text((x0 + pad, 4), title, fill="black")
        draw.rectangle((x0 + pad, 20, x0 + w - 10, h - 10), outline="black")
        if not values:
            continue
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        pts = [
            (x0 + pad + (w - pad - 10) * (i / max(1, len(values) - 1)), h - 10 - (h - 30) * ((v - lo) / span))
            for i, v in enumerate(values)
        ]
        draw.line(pts, fill=(200, 30, 30), width=2) if len(pts) > 1 else draw.point(pts, fill=(200, 30, 30))
        draw.text((x0 + pad, h + 2), f"{lo:.3f} .. {hi:.3f}", fill="black")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def train_colorizer(
    ws: Workspace, opts: ColorizerOptions, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    from safetensors.torch import save

    device = pick_device(opts.device)
    ids, images = _images(ws, opts)
    held = np.array([int(hashlib.sha256(f"colorizer\0{i}".encode()).hexdigest()[:8], 16) / 2**32 < 0.1 for i in ids])
    if held.all() or not held.any():
        held = np.arange(len(ids)) >= int(len(ids) * 0.9)
    x_all, y_all = _pairs(images, opts.size, opts.num_values)
    tx, ty, vx, vy = x_all[~held], y_all[~held], x_all[held], y_all[held]
    n_classes = opts.num_values**3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        model = create("segmenter", opts.model, num_classes=n_classes).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=1e-4)
    batch = min(opts.batch_size, len(tx))
    steps = max(1, len(tx) // batch)  # whole batches only: batch norm needs more than one sample
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, total_steps=opts.epochs * steps)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for epoch in range(opts.epochs):
        order = torch.randperm(len(tx), generator=torch.Generator().manual_seed(opts.seed * 7919 + epoch))
        model.train()
        total = 0.0
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            logits = model(_input(tx[idx]).to(device))
            loss = F.cross_entropy(logits.float(), ty[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        acc = palette_accuracy(model, vx, vy, device)
        entry = {"epoch": epoch + 1, "loss": round(total / steps, 4), "palette_accuracy": round(acc, 4)}
        history.append(entry)
        log.info("train-colorizer epoch %d/%d: %s", epoch + 1, opts.epochs, entry)
        if on_epoch:
            on_epoch(entry)
    name = f"{opts.run_key()[:8]}-epoch-{opts.epochs:04d}"
    config = {
        "model": opts.model,
        "num_classes": n_classes,
        "num_values": opts.num_values,
        "options": opts.model_dump(),
    }
    # What the accuracy means: the share of held-out pixels of the commonest training colour
    # (a model that paints everything in it scores this).
    commonest = int(torch.bincount(ty.flatten(), minlength=n_classes).argmax())
    baseline = float((vy == commonest).float().mean()) if len(vy) else 0.0
    metrics = {
        **history[-1],
        "commonest_colour_accuracy": round(baseline, 4),
        "parameters": params,
        "history": history,
        "held_out_images": int(held.sum()),
    }
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(ws, MODEL_DIR, name, save(state), config, metrics)
    ws.loc.write_bytes(f"models/{MODEL_DIR}/{name}/curves.png", curves_png(history))
    return {"checkpoint": name, **metrics}


@torch.inference_mode()
def palette_accuracy(model: torch.nn.Module, lines: torch.Tensor, classes: torch.Tensor, device: torch.device) -> float:
    model.eval()
    right = total = 0
    for i in range(0, len(lines), 16):
        pred = model(_input(lines[i : i + 16]).to(device)).argmax(1).cpu()
        right += int((pred == classes[i : i + 16]).sum())
        total += pred.numel()
    model.train()
    return right / max(1, total)


def load_colorizer(ws: Workspace, ref: str = "latest", device: str = "cpu") -> tuple[torch.nn.Module, int, str]:
    from safetensors.torch import load

    ckpt = load_checkpoint(ws, MODEL_DIR, ref)
    model = create("segmenter", ckpt.config["model"], num_classes=ckpt.config["num_classes"])
    model.load_state_dict(load(ckpt.weights))
    return model.to(pick_device(device)).eval(), int(ckpt.config["num_values"]), ckpt.digest


@torch.inference_mode()
def colorize_lines(
    model: torch.nn.Module, lines: np.ndarray, num_values: int, device: torch.device, batch: int = 8
) -> np.ndarray:
    """``(N, S, S)`` uint8 line art -> ``(N, S, S, 3)`` posterised colour (S padded to 32 inside)."""
    colours = palette(num_values)
    out = []
    for i in range(0, len(lines), batch):
        x = _input(torch.from_numpy(np.ascontiguousarray(lines[i : i + batch]))).to(device)
        h, w = x.shape[2:]
        x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32), mode="replicate")
        out.append(colours[model(x).argmax(1)[:, :h, :w].cpu().numpy()])
    return np.concatenate(out) if out else np.zeros((0, *lines.shape[1:], 3), np.uint8)
