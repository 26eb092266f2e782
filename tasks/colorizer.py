"""The line-drawing colouriser: line art (and a colour hint) in, the posterised palette class of every pixel out.

Pairs: corpus images (or synth portraits when the corpus is empty); input = the image's
auto-Canny drawing (any line art works at inference: ``corpus/lineart/<method>``), target
= :func:`tasks.npr.posterize_classes` with ``num_values`` levels per channel
(``num_values**3`` classes).

Line art alone does not say which colour a region has: hair, clothes and background
colours are free choices of the artist. Measured on the held-out synth portraits
(``bench/colorizer.py``), even a model that knew every pixel's semantic class (hair,
skin, ...) and painted each class its commonest colour would score 0.400, no better
than painting everything in the commonest colour (0.407).
So by default the colouriser also takes a colour hint, the way line-art colourisation
tools do: the colour layout on ``hint_size`` x ``hint_size`` cells (16: a 16 px cell at
256 px), each cell painted in its commonest palette colour (``hint="mode"``; the first
hinted models used the cells' mean colours, ``hint="mean"``, which turn a cell shared by
hair and background into a third colour). The network's job is then what a colourist does with a rough colour
sketch: put the boundaries on the lines and fill the regions. At render time the hint
comes from each corpus image itself, or from one reference portrait for every image
(``render-style --method colorize --style-image IMG``: colour every drawing like that
portrait). ``hint_size=0`` trains the line-art-only model.

Model: the workspace's U-Net design (MobileNetV2-small encoder, upsampling decoder,
740,716 parameters at 27 colours against the seed's 290M-parameter convolution stack)
with a softmax over palette classes. Its input is the line art multiplied by the hint's
colours (black lines on the hint; white without one), and its logits are added to a
learned multiple of the hint's own palette classes, so training starts from the hint and
learns the corrections. Cross-entropy, AdamW, one-cycle. Held out: 10% of the images by
id hash; the metric is ``palette_accuracy`` (share of held-out pixels whose class is
right), reported with two baselines: ``commonest_colour_accuracy`` (every pixel in the
commonest training colour) and ``hint_accuracy`` (the hint's own palette classes).
Writes ``models/colorizer/<run>`` (weights, config, metrics, ``curves.png`` of loss and
accuracy per epoch).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from models.registry import create
from storage.checkpoints import load_checkpoint, save_checkpoint, write_side_file
from storage.workspace import Workspace
from tasks.device import pick_device
from tasks.npr import palette, posterize_classes
from tasks.training import held_out_mask, options_key, weights_bytes

log = logging.getLogger(__name__)

MODEL_DIR = "colorizer"


class ColorizerOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        "unet-mobilenetv2-small",
        description="registered segmenter used as the colouriser (palette classes out)",
        json_schema_extra={"registry": "segmenter"},
    )
    size: int = Field(256, ge=32, description="training side (multiple of 32)")
    num_values: int = Field(3, ge=2, le=6, description="levels per channel: num_values**3 palette colours")
    epochs: int = Field(8, ge=1, description="training epochs")
    batch_size: int = Field(8, ge=1, description="images per step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (one-cycle, AdamW)")
    max_images: int = Field(2000, ge=4, description="corpus images to train and validate on at most")
    hint_size: int = Field(16, ge=0, description="colour hint cells per side (0: line art only)")
    hint: Literal["mode", "mean"] = Field("mode", description="a cell's commonest palette colour, or its mean colour")
    boundary_weight: float = Field(
        5.0, ge=0, description="loss weight of pixels within 3 px of a colour edge (1: every pixel alike)"
    )
    prior_weight: float = Field(
        4.0, ge=0, description="initial weight of the hint's own classes added to the logits (0: none)"
    )
    prior_blur: int = Field(
        7,
        ge=0,
        description="box blur (px) of the hint's classes before they join the logits, so a cell's border "
        "is no colour edge by itself (0: sharp cells)",
    )
    seed: int = Field(0, description="seed of the initial weights and the shuffle")
    device: str = "auto"

    @model_validator(mode="after")
    def _multiple_of_32(self) -> ColorizerOptions:
        if self.size % 32:
            raise ValueError(f"size must be a multiple of 32, not {self.size}")
        return self

    def run_key(self) -> str:
        return options_key(self.model_dump(exclude={"device"}), LEGACY)


LEGACY: dict[str, Any] = {"boundary_weight": 1.0, "prior_weight": 4.0, "prior_blur": 0}


def _images(ws: Workspace, opts: ColorizerOptions) -> tuple[list[str], np.ndarray]:
    from storage.items import item_table

    table = item_table(ws, "corpus")
    items = sorted(table.by_id.items(), key=lambda kv: kv[1]["slot"])
    if len(items) >= 4:
        if len(items) > opts.max_images:
            step = len(items) / opts.max_images
            items = [items[int(i * step)] for i in range(opts.max_images)]
        slots = [e["slot"] for _, e in items]  # decoded at the training size where JPEG's DCT scaling reaches it
        return [i for i, _ in items], ws.read_items("corpus/images", slots, ws.dct_size("corpus/images", opts.size))
    from tasks.artline import draw_pairs

    log.info("train-colorizer: the corpus has fewer than 4 images; training on 200 synth portraits")
    return [f"synth-{i}" for i in range(200)], draw_pairs(4000 + opts.seed, 200, opts.size)[0]


def _pairs(
    images: np.ndarray, size: int, num_values: int, hint_size: int, hint: str = "mode"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(line art, palette classes, colour hints or None) at ``size``."""
    from PIL import Image

    from tasks.lineart import auto_canny

    xs, ys, hs = [], [], []
    for img in images:
        if img.shape[0] != size:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
        xs.append(auto_canny(img))
        ys.append(posterize_classes(img, num_values))
        if hint_size:
            hs.append(colour_hint(img[None], hint_size, num_values=num_values, kind=hint)[0])
    hints = torch.from_numpy(np.stack(hs)) if hs else None
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64)), hints


class Colorizer(torch.nn.Module):
    """A segmenter over palette classes whose logits start from the colour hint's classes."""

    def __init__(
        self,
        net: torch.nn.Module,
        num_classes: int,
        hint_size: int,
        num_values: int = 3,
        hint: str = "mode",
        prior_weight: float = 4.0,
        prior_blur: int = 0,
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.hint_size = hint_size
        self.num_values = num_values
        self.hint_kind = hint
        self.prior_weight = torch.nn.Parameter(torch.tensor(prior_weight if hint_size else 0.0))
        self.prior_blur = prior_blur

    def forward(self, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Unit ``(N, 3, H, W)`` float32 in [0, 1] (prior: ``(N, H, W)`` int64 classes) -> ``(N, C, H, W)`` logits."""
        logits = self.net(x)
        if prior is None or not self.hint_size:
            return logits
        p = F.one_hot(prior, self.num_classes).permute(0, 3, 1, 2).to(logits.dtype)
        if self.prior_blur:
            k = 2 * (self.prior_blur // 2) + 1
            p = F.avg_pool2d(p, k, stride=1, padding=k // 2, count_include_pad=False)
        return logits + self.prior_weight * p

    def hint(self, images: np.ndarray, size: int | None = None) -> np.ndarray:
        """The colour hint of ``images`` that this model was trained with (see :func:`colour_hint`).

        RGB ``(N, H, W, 3)`` uint8 in 0..255 -> RGB ``(N, size, size, 3)`` uint8 (``(N, H, W, 3)`` if no ``size``).
        """
        return colour_hint(images, self.hint_size, size, num_values=self.num_values, kind=self.hint_kind)


def colour_hint(
    images: np.ndarray, hint_size: int, size: int | None = None, *, num_values: int = 3, kind: str = "mode"
) -> np.ndarray:
    """``(N, H, W, 3)`` images -> their colour layout on ``hint_size``² cells, at side ``size``.

    RGB ``(N, H, W, 3)`` uint8 in 0..255 -> RGB ``(N, size, size, 3)`` uint8 (``(N, H, W, 3)`` if no ``size``).

    ``mode`` (the default): each cell in its commonest palette colour (``num_values`` levels),
    upsampled nearest; on the held-out synth portraits at 16 cells this alone gets 0.85 of
    the pixels' colours right. ``mean``: the cell means, upsampled bilinearly (the first
    hinted models); where a cell straddles hair and background its mean is a third colour
    that posterises to neither (0.74).
    """
    from PIL import Image

    if kind == "mode":
        return _mode_hint(images, hint_size, size, num_values)
    if kind != "mean":
        raise ValueError(f"kind must be 'mode' or 'mean', not {kind!r}")
    out = []
    for img in images:
        h, w = size or img.shape[0], size or img.shape[1]
        cells = Image.fromarray(img).resize((hint_size, hint_size), Image.Resampling.BOX)
        out.append(np.asarray(cells.resize((w, h), Image.Resampling.BILINEAR)))
    return np.stack(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


def _mode_hint(images: np.ndarray, cells: int, size: int | None, num_values: int) -> np.ndarray:
    """Each of ``cells``² cells in its commonest palette class (ties: the lowest class), as colours."""
    n, h, w = images.shape[:3]
    k = num_values**3
    cy, cx = np.arange(h) * cells // h, np.arange(w) * cells // w  # the cell of every row and column
    cell = (cy[:, None] * cells + cx[None, :]) * k  # per pixel, the first count of its cell
    oh, ow = (size, size) if size else (h, w)
    up_y, up_x = (np.arange(oh) * cells // oh)[:, None], (np.arange(ow) * cells // ow)[None, :]
    colours = palette(num_values)
    out = np.empty((n, oh, ow, 3), np.uint8)
    for i in range(n):  # one image at a time: memory stays that of one image, whatever the batch
        counts = np.bincount((cell + posterize_classes(images[i], num_values)).ravel(), minlength=cells * cells * k)
        out[i] = colours[counts.reshape(cells, cells, k).argmax(-1)[up_y, up_x]]
    return out


def _input(lines: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
    """Black lines on the hint's colours (on white without a hint), as a 3-channel image."""
    x = (lines.float() / 255)[:, None]
    if hints is None:
        return x.expand(-1, 3, -1, -1).contiguous()
    return (x * (hints.float() / 255).permute(0, 3, 1, 2)).contiguous()


def _prior(hints: torch.Tensor | None, num_values: int) -> torch.Tensor | None:
    """The hint's own palette classes (one table lookup over the batch)."""
    return None if hints is None else torch.from_numpy(posterize_classes(hints.numpy(), num_values).astype(np.int64))


def held_out(ids: list[str]) -> np.ndarray:
    """The held-out 10% of ``ids`` by id hash (the last 10% when the hash picks none or all)."""
    return held_out_mask(ids, "colorizer", 0.1, nbytes=4, byteorder="big")


def _forward(model: Colorizer, lines: torch.Tensor, hints: torch.Tensor | None, priors: torch.Tensor | None,
             device: torch.device) -> torch.Tensor:  # fmt: skip
    return model(_input(lines, hints).to(device), None if priors is None else priors.to(device))


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
    device = pick_device(opts.device)
    ids, images = _images(ws, opts)
    held = held_out(ids)
    x_all, y_all, h_all = _pairs(images, opts.size, opts.num_values, opts.hint_size, opts.hint)
    p_all = _prior(h_all, opts.num_values)
    tx, ty, vx, vy = x_all[~held], y_all[~held], x_all[held], y_all[held]
    th, vh = (None, None) if h_all is None else (h_all[~held], h_all[held])
    tp, vp = (None, None) if p_all is None else (p_all[~held], p_all[held])
    n_classes = opts.num_values**3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        net = create("segmenter", opts.model, num_classes=n_classes)
        model = Colorizer(
            net, n_classes, opts.hint_size, opts.num_values, opts.hint, opts.prior_weight, opts.prior_blur
        )
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=1e-4)
    batch = min(opts.batch_size, len(tx))
    steps = max(1, len(tx) // batch)  # whole batches only: batch norm needs more than one sample
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, total_steps=opts.epochs * steps)
    history: list[dict[str, Any]] = []
    # the pixels within 3 px of a colour edge, once for the whole training set (bool)
    near_edge = _dilate(colour_edges(ty), 3) if opts.boundary_weight != 1.0 else None
    t0 = time.perf_counter()
    for epoch in range(opts.epochs):
        order = torch.randperm(len(tx), generator=torch.Generator().manual_seed(opts.seed * 7919 + epoch))
        model.train()
        total = 0.0
        for b in range(steps):
            idx = order[b * batch : (b + 1) * batch]
            logits = _forward(model, tx[idx], _take(th, idx), _take(tp, idx), device)
            target = ty[idx].to(device)
            if near_edge is not None:
                per_pixel = F.cross_entropy(logits.float(), target, reduction="none")
                weight = 1 + (opts.boundary_weight - 1) * near_edge[idx].to(device).float()
                loss = (per_pixel * weight).sum() / weight.sum()
            else:
                loss = F.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        figures = held_out_figures(model, vx, vy, device, vh, vp)
        entry = {"epoch": epoch + 1, "loss": round(total / steps, 4), "palette_accuracy": round(figures.pop("acc"), 4)}
        history.append(entry)
        log.info("train-colorizer epoch %d/%d: %s", epoch + 1, opts.epochs, entry)
        if on_epoch:
            on_epoch(entry)
    name = f"{opts.run_key()[:8]}-epoch-{opts.epochs:04d}"
    config = {
        "model": opts.model,
        "num_classes": n_classes,
        "num_values": opts.num_values,
        "hint_size": opts.hint_size,
        "hint": opts.hint,
        "prior_blur": opts.prior_blur,
        "options": opts.model_dump(),
    }
    # What the accuracy means: the share of held-out pixels of the commonest training colour
    # (a model that paints everything in it scores this), and the share the hint gets right.
    commonest = int(torch.bincount(ty.flatten(), minlength=n_classes).argmax())
    baseline = float((vy == commonest).float().mean()) if len(vy) else 0.0
    hint_figures = boundary_figures(vp, vy, vx) if vp is not None and len(vy) else {}
    metrics = {
        **history[-1],
        **figures,
        **{f"hint_{k}": v for k, v in hint_figures.items()},
        "commonest_colour_accuracy": round(baseline, 4),
        "hint_accuracy": round(float((vp == vy).float().mean()), 4) if vp is not None and len(vy) else None,
        "parameters": params,
        "history": history,
        "held_out_images": int(held.sum()),
    }
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    save_checkpoint(ws, MODEL_DIR, name, weights_bytes(model), config, metrics)
    write_side_file(ws, MODEL_DIR, name, "curves.png", curves_png(history))
    return {"checkpoint": name, **metrics}


def _take(t: torch.Tensor | None, idx: torch.Tensor | slice) -> torch.Tensor | None:
    return None if t is None else t[idx]


@torch.inference_mode()
def held_out_figures(
    model: Colorizer,
    lines: torch.Tensor,
    classes: torch.Tensor,
    device: torch.device,
    hints: torch.Tensor | None = None,
    priors: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Pixel accuracy (``acc``) and :func:`boundary_figures` of the model's palette classes.

    ``lines``: ``(N, H, W)`` uint8 drawings; ``classes``: ``(N, H, W)`` int64 palette classes;
    ``hints``: RGB uint8 colour hints and ``priors`` their classes, for a hinted model.
    """
    model.eval()
    preds = []
    for i in range(0, len(lines), 16):
        part = slice(i, i + 16)
        preds.append(_forward(model, lines[part], _take(hints, part), _take(priors, part), device).argmax(1).cpu())
    model.train()
    pred = torch.cat(preds) if preds else torch.zeros_like(classes)
    return {
        "acc": float((pred == classes).float().mean()) if pred.numel() else 0.0,
        **boundary_figures(pred, classes, lines),
    }


def colour_edges(classes: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` palette classes -> bool ``(N, H, W)``: pixels whose right or lower neighbour differs."""
    e = torch.zeros(classes.shape, dtype=torch.bool)
    e[:, :, :-1] |= classes[:, :, 1:] != classes[:, :, :-1]
    e[:, :-1, :] |= classes[:, 1:, :] != classes[:, :-1, :]
    return e


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0


def boundary_figures(
    pred: torch.Tensor, truth: torch.Tensor, lines: torch.Tensor, band: int = 3, on_line: int = 1
) -> dict[str, float | None]:
    """Where the colours stop: ``boundary_accuracy``, the share of pixels within ``band`` px of
    a truth colour edge that are right, and ``edges_on_lines``, the share of predicted colour-edge
    pixels within ``on_line`` px of ink (line art darker than 128); None where there is no such pixel.

    ``pred``, ``truth``: ``(N, H, W)`` palette classes; ``lines``: ``(N, H, W)`` uint8 line art (0 ink).
    """
    near = _dilate(colour_edges(truth), band)
    ink = _dilate(lines < 128, on_line)
    edges = colour_edges(pred)
    return {
        "boundary_accuracy": _ratio(int(((pred == truth) & near).sum()), int(near.sum())),
        "edges_on_lines": _ratio(int((edges & ink).sum()), int(edges.sum())),
    }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def load_colorizer(ws: Workspace, ref: str = "latest", device: str = "cpu") -> tuple[Colorizer, int, str]:
    """(model, num_values, digest); ``model.hint_size`` says whether it wants a colour hint."""
    from safetensors.torch import load

    ckpt = load_checkpoint(ws, MODEL_DIR, ref)
    n = ckpt.config["num_classes"]
    hint_size, num_values = int(ckpt.config.get("hint_size", 0)), int(ckpt.config["num_values"])
    hint = ckpt.config.get("hint", "mean")  # hinted checkpoints from before "hint" existed used cell means
    if hint not in ("mode", "mean"):
        raise ValueError(f"colouriser checkpoint {ckpt.name}: unknown hint kind {hint!r}")
    net = create("segmenter", ckpt.config["model"], num_classes=n)
    blur = int(ckpt.config.get("prior_blur", 0))
    model = Colorizer(net, n, hint_size, num_values, hint, prior_blur=blur)
    state = load(ckpt.weights)
    if "prior_weight" in state:
        model.load_state_dict(state)
    else:  # a line-art-only checkpoint written before hints existed: the bare segmenter
        model.net.load_state_dict(state)
    return model.to(pick_device(device)).eval(), int(ckpt.config["num_values"]), ckpt.digest


@torch.inference_mode()
def colorize_lines(
    model: Colorizer,
    lines: np.ndarray,
    num_values: int,
    device: torch.device,
    batch: int = 8,
    hints: np.ndarray | None = None,
) -> np.ndarray:
    """``(N, S, S)`` uint8 line art -> ``(N, S, S, 3)`` posterised colour (S padded to 32 inside).

    ``lines``: ``(N, H, W)`` uint8 drawings (0 ink, 255 paper); returns RGB ``(N, H, W, 3)`` uint8 palette colours.
    ``hints``: RGB ``(N, S, S, 3)`` uint8 colour hints (:func:`colour_hint`) for a model trained with
    them (required then; ignored by a line-art-only model).
    """
    colours = palette(num_values)
    if model.hint_size and hints is None:
        raise ValueError("this colouriser was trained with colour hints: pass hints (tasks.colorizer.colour_hint)")
    h, w = lines.shape[1:]
    pad = ((0, 0), (0, (-h) % 32), (0, (-w) % 32))  # edge-replicated up to a multiple of 32
    if h % 32 or w % 32:
        lines = np.pad(lines, pad, mode="edge")
        hints = None if hints is None else np.pad(hints, (*pad, (0, 0)), mode="edge")
    hint_all = torch.from_numpy(np.ascontiguousarray(hints)) if model.hint_size and hints is not None else None
    out = []
    for i in range(0, len(lines), batch):
        hint = _take(hint_all, slice(i, i + batch))
        part = torch.from_numpy(np.ascontiguousarray(lines[i : i + batch]))
        logits = _forward(model, part, hint, _prior(hint, num_values), device)
        out.append(colours[logits.argmax(1)[:, :h, :w].cpu().numpy()])
    return np.concatenate(out) if out else np.zeros((0, h, w, 3), np.uint8)
