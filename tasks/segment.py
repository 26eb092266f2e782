"""Training the segmenter on the workspace's annotations, epoch by epoch, resumably.

Training data: the augmented variants of the *training* parents (or the originals when
nothing is augmented); validation: the original annotations of the held-out parents
(``tasks.augment.validation_split``), never a variant of them. Loss: cross-entropy with
class weights (inverse pixel frequency to the power ``class_weight_power``, so eyes and
mouths count) plus a soft Dice term over classes; AdamW with a one-cycle schedule; bf16
autocast on GPU.

Every epoch ends with a checkpoint in the workspace (``models/unet/epoch-NNNN``:
safetensors weights, config, per-class IoU and mIoU, a PNG of validation predictions),
``latest`` moved to it and ``best`` when its mIoU is the best so far, and the optimiser,
schedule and random-number state committed as the train state
(``storage.checkpoints.commit_train_state``), so a killed run resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from models.registry import create
from storage.checkpoints import (
    commit_train_state,
    load_checkpoint,
    read_optimizer,
    resume_train_state,
    save_checkpoint,
    write_side_file,
)
from storage.items import item_table
from storage.workspace import IGNORE_INDEX, Workspace, WorkspaceError
from tasks.augment import validation_split
from tasks.device import autocast, pick_device
from tasks.training import load_optimizer_state, load_weights, optimizer_state, weights_bytes

log = logging.getLogger(__name__)

MODEL_DIR = "unet"


SMALL_SEGMENTER = "unet-mobilenetv2-small"


class TrainOptions(BaseModel):
    """Hyper-parameters of ``train-unet``; the defaults train on a CPU laptop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        "unet-mobilenetv2-small",
        description="registered segmenter (with --encoder-weights the full-width unet-mobilenetv2)",
    )
    size: int | None = Field(None, ge=32, description="training side (multiple of 32); default: the workspace's")
    crop: int | None = Field(
        None, ge=32, description="train on random crops of this side (multiple of 32), at full scale; default: whole"
    )
    epochs: int = Field(30, ge=1, description="training epochs")
    batch_size: int = Field(8, ge=1, description="images per step")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (one-cycle, AdamW)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    val_fraction: float = Field(
        0.15, ge=0, lt=1, description="share of annotated items held out for validation (by id hash)"
    )
    class_weight_power: float = Field(
        0.5, ge=0, le=1, description="class weights are inverse frequency to this power (0: unweighted)"
    )
    dice_weight: float = Field(0.5, ge=0, description="weight of the soft Dice term beside cross-entropy")
    encoder_weights: str | None = Field(None, description="local file with ImageNet mobilenet_v2 weights")
    seed: int = Field(0, description="seed of the split, the initial weights, the crops and the shuffle")
    device: str = "auto"

    @model_validator(mode="before")
    @classmethod
    def _full_encoder_for_imagenet(cls, data: Any) -> Any:
        """ImageNet weights fit the full-width encoder: the small default becomes ``unet-mobilenetv2``."""
        small = isinstance(data, dict) and data.get("model", SMALL_SEGMENTER) == SMALL_SEGMENTER
        if small and data.get("encoder_weights"):
            data = {**data, "model": "unet-mobilenetv2"}
        return data

    @model_validator(mode="after")
    def _multiples_of_32(self) -> TrainOptions:
        for name in ("size", "crop"):
            value = getattr(self, name)
            if value is not None and value % 32:
                raise ValueError(f"{name} must be a multiple of 32, not {value}")
        return self


@dataclass
class Split:
    train_slots: list[int]  # slots in `train_array`
    train_array: str
    val_slots: list[int]  # slots in annotated/*
    train_parents: list[str]
    val_parents: list[str]


def make_split(ws: Workspace, opts: TrainOptions) -> Split:
    parents = item_table(ws, "annotated")
    if len(parents) < 2:
        raise WorkspaceError(f"{ws.url} has {len(parents)} annotated items; train-unet needs at least 2")
    train_ids, val_ids = validation_split(sorted(parents.by_id), opts.val_fraction, opts.seed)
    if opts.val_fraction == 0:
        val_ids = []
    train_set = set(train_ids)
    augmented = item_table(ws, "augmented")
    if len(augmented):
        slots = sorted(e["slot"] for e in augmented.by_id.values() if e["parent"] in train_set)
        array = "augmented"
    else:
        slots = sorted(parents.by_id[i]["slot"] for i in train_ids)
        array = "annotated"
    val_slots = sorted(parents.by_id[i]["slot"] for i in val_ids)
    return Split(slots, array, val_slots, train_ids, val_ids)


def load_pairs(ws: Workspace, family: str, slots: list[int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 images and (N, S, S) uint8 masks of ``slots``, resized to ``size``.

    Images: RGB ``(N, 3, size, size)`` uint8 tensors in 0..255; masks ``(N, size, size)`` uint8 ids (255 = ignore).
    """
    images_arr, masks_arr = ws.array(f"{family}/images"), ws.array(f"{family}/masks")
    images = torch.from_numpy(np.stack([np.asarray(images_arr[s]) for s in slots])).permute(0, 3, 1, 2)
    masks = torch.from_numpy(np.stack([np.asarray(masks_arr[s]) for s in slots]))
    if images.shape[-1] != size:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).round().byte()
        masks = F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].byte()
    return images.contiguous(), masks.contiguous()


def class_weights(masks: torch.Tensor, num_classes: int, power: float) -> torch.Tensor:
    """``(num_classes,)`` float32 weights (mean 1) from uint8 class-id ``masks`` of any shape (255 = ignore)."""
    counts = torch.bincount(masks[masks != IGNORE_INDEX].long().flatten(), minlength=num_classes)[:num_classes]
    freq = counts.float() / counts.sum().clamp(min=1)
    w = (1.0 / freq.clamp(min=1e-4)) ** power
    return w / w.mean()


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Weighted cross-entropy (+ dice) of ``(N, C, H, W)`` logits against ``(N, H, W)`` int64 ids (255 = ignore)."""
    ce = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE_INDEX)
    if dice_weight == 0:
        return ce
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1).long(), logits.shape[1]).permute(0, 3, 1, 2) * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    dice = 1 - (2 * inter + 1) / (denom + 1)
    return ce + dice_weight * dice[present].mean()


def confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts [truth, prediction] of same-shape class-id masks (``target`` 255 = ignore)."""
    keep = target != IGNORE_INDEX
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(conf: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    per_class = {c: round(float(iou[i]), 4) for i, c in enumerate(classes) if present[i]}
    return {
        "miou": round(float(iou[present].mean()), 4) if present.any() else 0.0,
        "pixel_accuracy": round(float(tp.sum() / conf.sum().clamp(min=1)), 4),
        "iou": per_class,
    }


def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch: int = 16) -> torch.Tensor:
    """Class ids ``(N, S, S)`` uint8 for uint8 ``(N, 3, S, S)`` images.

    ``images``: RGB ``(N, 3, S, S)`` uint8 tensor in 0..255 (the model sees unit tensors); returns class ids on the CPU.
    """
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device).float() / 255
            with autocast(device):
                out.append(model(x).argmax(1).byte().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def _preview(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor, n: int = 6) -> bytes:
    from PIL import Image

    from tasks.report import colorize

    rows = []
    for i in range(min(n, len(images))):
        img = images[i].permute(1, 2, 0).numpy()
        rows.append(np.concatenate([img, colorize(masks[i].numpy()), colorize(preds[i].numpy())], axis=1))
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buf, format="PNG")
    return buf.getvalue()


def run_key(opts: TrainOptions, split: Split, classes: list[str], size: int) -> str:
    """Identity of a training run: a resume continues only the very same run."""
    blob = json.dumps(
        [
            opts.model_dump(exclude={"device"} | ({"crop"} if opts.crop is None else set())),
            split.train_parents,
            split.val_parents,
            split.train_array,
            len(split.train_slots),
            classes,
            size,
        ]
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def name_of(key: str, epoch: int) -> str:
    """The checkpoint of epoch ``epoch`` (0-based) of run ``key``."""
    return f"{key[:8]}-epoch-{epoch + 1:04d}"


def train_unet(
    ws: Workspace,
    opts: TrainOptions,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the segmenter; returns the last epoch's metrics and checkpoint."""
    device = pick_device(opts.device)
    classes = ws.classes
    size = opts.size or int(ws.config().get("image_size", 512))
    if size % 32:
        raise WorkspaceError(f"the training size must be a multiple of 32, not {size}: pass --size")
    crop = opts.crop if opts.crop and opts.crop < size else None
    if crop and crop % 32:
        raise WorkspaceError(f"the crop must be a multiple of 32, not {crop}")
    split = make_split(ws, opts)
    key = run_key(opts, split, classes, size)
    torch.manual_seed(opts.seed)
    train_x, train_y = load_pairs(ws, split.train_array, split.train_slots, size)
    val_x, val_y = load_pairs(ws, "annotated", split.val_slots, size) if split.val_slots else (train_x[:0], train_y[:0])
    weights = class_weights(train_y, len(classes), opts.class_weight_power).to(device)
    model = create("segmenter", opts.model, num_classes=len(classes), encoder_weights=opts.encoder_weights).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps = -(-len(train_x) // opts.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, total_steps=opts.epochs * steps)
    start, best = 0, -1.0
    best_checkpoint: str | None = None
    state = resume_train_state(ws, MODEL_DIR, key)
    if state is not None:
        meta = state.meta
        if meta["epoch"] >= opts.epochs:
            last = load_checkpoint(ws, MODEL_DIR, state.checkpoint).metrics
            log.info("train-unet: run %s already finished its %d epochs; nothing to do", key, opts.epochs)
            return {
                "run": key,
                "epochs": opts.epochs,
                "resumed_at": opts.epochs,
                "last": last,
                "best_miou": float(meta.get("best", -1.0)),
                "history": [],
                "train_samples": len(train_x),
                "val_images": len(val_x),
                "already_done": True,
            }
        # The state names its own checkpoint and optimiser file: a run killed between
        # writes resumes from one consistent epoch, whatever the tags said.
        load_weights(model, load_checkpoint(ws, MODEL_DIR, state.checkpoint).weights)
        groups = meta["param_groups"]
        load_optimizer_state({"opt": optimizer}, read_optimizer(ws, state), groups, unnamed=state.legacy)
        scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(torch.tensor(meta["rng"], dtype=torch.uint8))
        start = int(meta["epoch"])
        best = float(meta.get("best", -1.0))
        best_checkpoint = meta.get("best_checkpoint")
        log.info("resuming train-unet at epoch %d of %d (run %s)", start + 1, opts.epochs, key)
    history: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    for epoch in range(start, opts.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x))
        total = 0.0
        for b in range(steps):
            idx = order[b * opts.batch_size : (b + 1) * opts.batch_size]
            x, y = train_x[idx], train_y[idx]
            if crop:  # one window per batch, from a generator of (seed, epoch, batch): resumes draw the same
                g = torch.Generator().manual_seed(opts.seed * 1_000_003 + epoch * 10_007 + b)
                top, left = (int(v) for v in torch.randint(0, size - crop + 1, (2,), generator=g))
                x, y = x[:, :, top : top + crop, left : left + crop], y[:, top : top + crop, left : left + crop]
            x = (x.to(device).float() / 255).contiguous(memory_format=torch.channels_last)
            y = y.to(device).long()
            with autocast(device):
                logits = model(x)
            loss = loss_fn(logits.float(), y, weights, opts.dice_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            if on_step:
                on_step(epoch * steps + b + 1, opts.epochs * steps)
        preds = predict(model, val_x, device)
        metrics = iou_from_confusion(confusion(preds, val_y, len(classes)), classes) if len(val_x) else {}
        metrics.update(epoch=epoch + 1, loss=round(total / steps, 4), seconds=round(time.perf_counter() - t0, 1))
        miou = float(metrics.get("miou", -total))
        tags = ("latest", "best") if miou > best else ("latest",)
        best = max(best, miou)
        best_checkpoint = name_of(key, epoch) if "best" in tags else best_checkpoint
        name = name_of(key, epoch)  # runs never overwrite each other
        config = {
            "model": opts.model,
            "num_classes": len(classes),
            "classes": classes,
            "size": size,
            "run": key,
            "options": opts.model_dump(),
            "train_parents": len(split.train_parents),
            "val_parents": split.val_parents,
            "encoder_weights": opts.encoder_weights,
        }
        # Order: the checkpoint and its optimiser state (new keys, invisible until named),
        # then the train state that names them (the commit), then the tags.
        digest = save_checkpoint(ws, MODEL_DIR, name, weights_bytes(model), config, metrics, tags=())
        if len(val_x):
            write_side_file(ws, MODEL_DIR, name, "validation.png", _preview(val_x, val_y, preds))
        blob, groups = optimizer_state({"opt": optimizer})
        state_meta = {"run": key, "epoch": epoch + 1, "param_groups": groups, "scheduler": scheduler.state_dict()}
        state_meta.update(rng=torch.get_rng_state().tolist(), best=best, best_checkpoint=best_checkpoint)
        commit_train_state(ws, MODEL_DIR, name, blob, state_meta, tags, digest)
        history.append(metrics)
        log.info("epoch %d/%d: %s", epoch + 1, opts.epochs, {k: v for k, v in metrics.items() if k != "iou"})
        if on_epoch:
            on_epoch(metrics)
    return {
        "run": key,
        "epochs": opts.epochs,
        "resumed_at": start,
        "last": metrics,
        "best_miou": best,
        "history": history,
        "train_samples": len(train_x),
        "val_images": len(val_x),
        "already_done": False,
    }


def load_segmenter(
    ws: Workspace, ref: str = "latest", device: str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The trained segmenter (eval mode), its config and its digest (the producer version)."""
    ckpt = load_checkpoint(ws, MODEL_DIR, ref)
    cfg = ckpt.config
    model = create("segmenter", cfg["model"], num_classes=cfg["num_classes"])
    load_weights(model, ckpt.weights)
    return model.to(pick_device(device)).eval(), cfg, ckpt.digest
