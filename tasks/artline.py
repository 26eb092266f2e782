"""Training the learned line-art model (ArtLine's recipe) on (image, line art) pairs, resumably.

Pairs come from a folder in ``synth``'s layout (``images/`` or ``labelme/`` next to
``lines/<id>.png``) or are drawn by the synth generator, which knows the exact lines.
Held out: 10% of a folder's pairs by id hash, or, for drawn pairs, portraits of another
seed.

Loss (ArtLine / fastai's ``FeatureLoss``): pixel L1, plus for VGG16 relu3_3, relu4_3 and
relu5_3 with weights 5, 15, 2 the L1 of the features and ``5e3 * w**2`` times the L1 of
their Gram matrices. Ink pixels weigh ``ink_weight`` (10) times paper pixels in the L1:
ink is about 3% of a drawing. The fallback without ImageNet VGG16 weights is explicit
and recorded (``vgg`` in the checkpoint's config): the feature and Gram terms are turned
off, because random VGG features do not carry the perceptual meaning the recipe relies
on; measured on 320 synth pairs at 128 px (4/3/4 epochs at 32/64/128), random features
gave a held-out F1 of 0.873 in 218 s against 0.965 in 42 s without them.
``--feature-weight 1`` uses random features anyway. Progressive resizing: the epochs of ``epochs`` run at the sides of
``sizes`` in turn (e.g. 64 -> 128 -> 256), each with its own one-cycle schedule (AdamW).

Each epoch ends with a checkpoint in ``models/artline`` (weights, config, held-out
boundary F1 at the final size) and the optimiser and schedule state of the last one;
every epoch's shuffle comes from a generator seeded by (seed, stage, epoch), so a killed
run resumes at its last epoch and ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from models.registry import create
from storage.checkpoints import (
    Checkpoint,
    checkpoint_metrics,
    commit_train_state,
    has_tag,
    list_checkpoints,
    load_checkpoint,
    read_optimizer,
    resume_train_state,
    save_checkpoint,
)
from storage.workspace import Workspace, WorkspaceError
from tasks.artline_options import LineartTrainOptions
from tasks.device import autocast, pick_device
from tasks.lineart import dataset_f1
from tasks.tensors import to_unit
from tasks.training import (
    held_out_mask,
    load_optimizer_state,
    load_weights,
    optimizer_state,
    seeded_generator,
    weights_bytes,
)

log = logging.getLogger(__name__)

MODEL_DIR = "artline"
PAIR_MAX_BYTES = 200_000_000  # a pair file is read whole; never more than this
FEATURE_LAYERS = ("relu3_3", "relu4_3", "relu5_3")
FEATURE_WEIGHTS = (5.0, 15.0, 2.0)
GRAM_SCALE = 5e3


# -- pairs -----------------------------------------------------------------------------------
def draw_pairs(seed: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` synth portraits: RGB ``(N, size, size, 3)`` uint8 images and ``(N, size, size)`` uint8 drawings."""
    from tasks.synth import draw_portrait

    portraits = [draw_portrait(seed, i, size) for i in range(count)]
    return np.stack([p.image for p in portraits]), np.stack([p.lines for p in portraits])


def read_pairs(folder: str, size: int) -> tuple[list[str], np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """(ids, images, lines, refused) of a folder in synth's layout (local or s3://), squared to ``size``.

    images: RGB ``(N, size, size, 3)`` uint8 in 0..255; lines: ``(N, size, size)`` uint8 drawings (0 ink, 255 paper).
    """
    from storage.location import Location, child_url
    from storage.sources import OutsideFolder, list_folder, read_relative
    from tasks.imageio import BadImage, load_square, open_image, square

    loc = Location(folder)
    if not loc.is_dir("lines"):
        raise WorkspaceError(f"{folder} has no lines/ folder (synth's layout: images/ or labelme/, and lines/)")
    listing = list_folder(child_url(folder, "lines"), ".png", "lines/")
    ids, images, lines = [], [], []
    refused = [(source, "symlink points outside the pairs folder") for source, _ in listing.refused]
    for ref in listing.refs:
        item = ref.relpath[:-4]
        image_rel = next(
            (
                f"../{sub}/{item}{ext}"
                for sub in ("images", "labelme")
                for ext in (".jpg", ".jpeg", ".png", ".webp")
                if loc.is_file(f"{sub}/{item}{ext}")
            ),
            None,
        )
        if image_rel is None:
            refused.append((ref.source, "no image with this id in images/ or labelme/"))
            continue
        try:
            image_bytes = read_relative(ref.source, image_rel, folder, PAIR_MAX_BYTES)
            line_bytes = read_relative(ref.source, ref.relpath, folder, PAIR_MAX_BYTES)
            img = load_square(image_bytes, size)
            line = np.asarray(square(open_image(line_bytes).convert("L").convert("RGB"), size))[..., 0]
        except OutsideFolder:
            refused.append((ref.source, "symlink points outside the pairs folder"))
            continue
        except (BadImage, OSError, ValueError) as exc:
            refused.append((ref.source, f"unreadable pair: {exc}"))
            continue
        ids.append(item)
        images.append(img)
        lines.append(line)
    if not ids:
        raise WorkspaceError(f"no usable (image, lines) pairs in {folder}")
    return ids, np.stack(images), np.stack(lines), refused


def load_training_pairs(ws: Workspace, opts: LineartTrainOptions) -> dict[str, Any]:
    """Training and held-out pairs at the final size, as uint8 arrays.

    ``"train"``/``"val"``: (RGB ``(N, S, S, 3)`` uint8 images, ``(N, S, S)`` uint8 drawings, 0 ink 255 paper).
    """
    from storage.location import Location

    if opts.pairs:
        ids, images, lines, refused = read_pairs(opts.pairs, opts.size)
        for source, reason in refused:
            ws.quarantine(source, "train-lineart", reason)
        held = held_out_mask(ids, "lineart", 0.1)
        # every byte the training reads: changed or added pairs make a new run, never a mixed one
        digest = hashlib.sha1(json.dumps(ids).encode() + images.tobytes() + lines.tobytes()).hexdigest()[:12]
        return {
            "train": (images[~held], lines[~held]),
            "val": (images[held][: opts.val_count], lines[held][: opts.val_count]),
            "source": f"folder:{Location(opts.pairs).url}",
            "digest": digest,
        }
    from tasks import linepairs

    families = list(opts.train_families())
    train = linepairs.draw_pairs(1000 + opts.seed, opts.count, opts.size, families)
    val = linepairs.draw_pairs(2000 + opts.seed, opts.val_count, opts.size, [opts.holdout])
    return {"train": train, "val": val, "source": drawn_source(opts), "digest": "", "holdout": opts.holdout}


def drawn_source(opts: LineartTrainOptions) -> str:
    """What drawn pairs are, known before they are drawn (the options fix every one of them)."""
    families = "+".join(opts.train_families())
    return f"drawn:{families} seed {1000 + opts.seed} x{opts.count}; held out: {opts.holdout}"


def classic_f1(images: np.ndarray, lines: np.ndarray) -> dict[str, float]:
    """Boundary F1 of the training-free methods on the held-out pairs (the figures to beat)."""
    from tasks.lineart import METHODS, render

    return {
        name: dataset_f1([render(name, img) for img in images], list(lines))["f1"]
        for name in ("xdog", "canny")
        if name in METHODS
    }


# -- loss ------------------------------------------------------------------------------------
def gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


class FeatureLoss(torch.nn.Module):
    """Pixel L1 + VGG16 feature L1 (relu3_3/4_3/5_3 at 5, 15, 2) + Gram L1 (``5e3 w**2``)."""

    def __init__(
        self,
        vgg_weights: str | None = None,
        feature_weight: float = 1.0,
        ink_weight: float = 1.0,
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        from models.vgg import VGGFeatures

        self.feature_weight, self.ink_weight, self.dice_weight = feature_weight, ink_weight, dice_weight
        self.vgg = VGGFeatures("vgg16", FEATURE_LAYERS, vgg_weights) if feature_weight > 0 else None
        self.source = self.vgg.source if self.vgg is not None else "off: no ImageNet VGG16 weights (pixel L1 only)"

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``pred``, ``target``: ``(N, 1, H, W)`` float32 drawings in [0, 1] (0 ink, 1 paper) -> (loss, parts).

        ``weight``: ``(N, 1, H, W)`` how much each pixel's truth counts (0: no truth there), or None (1
        everywhere). The VGG terms compare whole images, so they take no ``weight``.
        """
        if self.ink_weight == 1 and weight is None:
            pixel = F.l1_loss(pred, target)
        else:  # ink is ~3% of a drawing: weigh it up, or "all paper" is a strong minimum
            w = 1 + (self.ink_weight - 1) * (1 - target.clamp(0, 1))
            if weight is not None:
                w = w * weight
            pixel = (w * (pred - target).abs()).sum() / w.sum().clamp(min=1e-6)
        parts = {"pixel": pixel}
        if self.dice_weight > 0:  # soft Dice on ink (1 - drawing): overlap, as F1 counts it, per image
            p, t = 1 - pred.clamp(0, 1), 1 - target.clamp(0, 1)
            if weight is not None:
                p, t = p * weight, t * weight
            inter = (p * t).sum(dim=(1, 2, 3))
            parts["dice"] = 1 - ((2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3)) + 1)).mean()
        total = pixel + self.dice_weight * parts["dice"] if "dice" in parts else pixel
        if self.vgg is None or weight is not None:
            return total, {k: float(v.detach()) for k, v in parts.items()}
        fp = self.vgg(pred.expand(-1, 3, -1, -1))
        with torch.no_grad():
            ft = self.vgg(target.expand(-1, 3, -1, -1))
        feat = sum(w * F.l1_loss(a, b) for w, a, b in zip(FEATURE_WEIGHTS, fp, ft, strict=True))
        grams = sum(
            GRAM_SCALE * w**2 * F.l1_loss(gram(a), gram(b)) for w, a, b in zip(FEATURE_WEIGHTS, fp, ft, strict=True)
        )
        total = total + self.feature_weight * (torch.as_tensor(feat) + torch.as_tensor(grams))
        parts.update(feature=torch.as_tensor(feat), gram=torch.as_tensor(grams))
        return total, {k: float(v.detach()) for k, v in parts.items()}


# -- training --------------------------------------------------------------------------------
def _to_tensors(images: np.ndarray, lines: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = to_unit(images)
    y = torch.from_numpy(np.ascontiguousarray(lines))[:, None].float() / 255
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        y = F.interpolate(y, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous(), y.contiguous()


@torch.inference_mode()
def draw_lines(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 8, flip: bool = True
) -> np.ndarray:
    """RGB ``(N, S, S, 3)`` uint8 images in 0..255 -> ``(N, S, S)`` uint8 line art (0 ink, 255 paper).

    ``flip``: the mean of the drawing and the mirrored drawing of the mirrored image (twice
    the compute; measured at 256 px on 64 held-out cel pairs: F1 0.929 against 0.922).
    """
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = to_unit(images[i : i + batch], device)
        s = x.shape[-1]
        pad = (-s) % 16
        if pad:
            x = F.pad(x, (0, pad, 0, pad), mode="replicate")
        with autocast(device):
            y = model(x).float()[:, 0, :s, :s].clamp(0, 1)
            if flip:
                mirrored = model(x.flip(-1)).float().flip(-1)[:, 0, :s, :s].clamp(0, 1)
                y = (y + mirrored) / 2
        out.append((y * 255).round().clamp(0, 255).byte().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), np.uint8)


@dataclass
class _Run:
    """One resumable training run: its key, checkpoint names, epochs and the data of each."""

    key: str
    prefix: str  # checkpoint names: f"{prefix}-{k:04d}"
    plan: list[tuple[int, int]]  # (stage, epoch within the stage)
    stage_epochs: tuple[int, ...]
    sizes: tuple[int, ...]
    samples: int  # training samples per epoch
    lr: float
    # (stage, epoch, size) -> x, y, pixel weights or None: one epoch's samples, in training order
    epoch_data: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    validate: Callable[[torch.nn.Module], dict[str, Any]]  # the epoch's held-out metrics
    config: dict[str, Any]
    base: str = ""  # the checkpoint whose weights the run starts from ("": the seeded initialisation)


def train_lineart(
    ws: Workspace,
    opts: LineartTrainOptions,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the line-art model; returns the last epoch's metrics and checkpoint.

    With ``finetune``, the pre-training run is finished (or found finished) first, and a
    second run fine-tunes its last checkpoint on the workspace's annotated images.
    """
    device = pick_device(opts.device)
    # Drawn pairs are drawn only when an epoch or a score needs them (a finished run re-run
    # needs none); a folder's pairs are read first, since what they hold is part of the run key.
    folder = load_training_pairs(ws, opts) if opts.pairs else None
    source = folder["source"] if folder else drawn_source(opts)
    key = opts.run_key(folder["digest"] if folder else "")

    @functools.cache
    def data() -> dict[str, Any]:
        return folder or load_training_pairs(ws, opts)

    @functools.cache
    def classic() -> dict[str, float]:  # the same held-out images, scored by XDoG and Canny
        return classic_f1(*data()["val"])

    loss_fn = FeatureLoss(opts.vgg_weights, opts.feature_scale(), opts.ink_weight, opts.dice_weight).to(device)
    if loss_fn.vgg is None and not opts.vgg_weights:
        log.warning(
            "train-lineart: no ImageNet VGG16 weights given, so the VGG feature and Gram terms are off (pixel L1 "
            "only); pass --vgg-weights FILE for ArtLine's full loss, or --feature-weight 1 for random VGG features"
        )
    sizes = opts.stage_sizes()

    def pair_epoch(stage: int, epoch: int, size: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        train_img, train_lines = data()["train"]
        x_all, y_all = _to_tensors(train_img, train_lines, size)
        order = torch.randperm(len(x_all), generator=seeded_generator(opts.seed, stage, epoch))
        return x_all[order], y_all[order], None

    def validate_pairs(model: torch.nn.Module) -> dict[str, Any]:
        val_img, val_lines = data()["val"]
        f1 = dataset_f1(list(draw_lines(model, val_img, device)), list(val_lines))
        metrics = {"f1": f1["f1"], "precision": f1["precision"], "recall": f1["recall"], "val_images": f1["images"]}
        metrics.update({f"{name}_f1": v for name, v in classic().items()})
        if data().get("holdout"):
            metrics["holdout"] = data()["holdout"]
        return metrics

    config = {"model": opts.model, "run": key, "options": opts.model_dump(), "pairs": source}
    config.update(vgg=loss_fn.source, sizes=list(sizes))
    pre = _Run(
        key,
        f"{key[:8]}-epoch",
        [(stage, epoch) for stage, n in enumerate(opts.epochs) for epoch in range(n)],
        opts.epochs,
        sizes,
        len(folder["train"][0]) if folder else opts.count,
        opts.lr,
        pair_epoch,
        validate_pairs,
        config,
    )
    result = _train_run(ws, opts, pre, loss_fn, device, on_epoch, on_step)
    result.update(pairs=source, vgg=loss_fn.source)
    if not opts.finetune:
        return result
    pairs = (lambda: data()["train"], pre.samples)
    tuned = _finetune(ws, opts, key, pairs, result["checkpoint"], device, validate_pairs, on_epoch, on_step)
    return {**tuned, "pretrained": result["checkpoint"], "pairs": source, "vgg": loss_fn.source}


def _finetune(
    ws: Workspace,
    opts: LineartTrainOptions,
    base_key: str,
    pairs: tuple[Callable[[], tuple[np.ndarray, np.ndarray]], int],
    base: str,
    device: torch.device,
    validate_pairs: Callable[[torch.nn.Module], dict[str, Any]],
    on_epoch: Callable[[dict[str, Any]], None] | None,
    on_step: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    """Fine-tune checkpoint ``base`` on the annotated images (see :func:`finetune_targets`).

    ``pairs``: the pre-training's pairs (read when first needed) and how many there are.
    """
    from tasks import lineart_finetune as ft

    tune = ft.load_annotated(ws, opts, opts.finetune_size)  # default side: the annotations' own
    size = tune.size
    pre_pairs, n_pairs = pairs
    n_replay = min(n_pairs, round(opts.replay * len(tune.train_images)))
    redraw = size != opts.size and n_replay > 0  # replayed pairs drawn at the fine-tuning's side, not enlarged
    samples = len(tune.train_images) + n_replay
    key = opts.finetune_key(tune.digest, base_key)

    @functools.cache
    def replay_pairs() -> tuple[np.ndarray, np.ndarray]:
        if not redraw:
            return pre_pairs()
        from tasks import linepairs

        return linepairs.draw_pairs(3000 + opts.seed, 2 * n_replay, size, list(opts.train_families()))

    @functools.cache
    def before() -> float:  # the pre-trained model's F1 on the held-out annotated images
        pretrained, _, _ = load_artline(ws, base, str(device))
        return dataset_f1(list(draw_lines(pretrained, tune.val_images, device)), list(tune.val_lines))["f1"]

    def epoch_data(stage: int, epoch: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        train_img, train_lines = replay_pairs()
        g = seeded_generator(opts.seed, 100 + stage, epoch)
        picked = torch.randperm(len(train_img), generator=g)[:n_replay].sort().values.numpy()
        flips = torch.rand(len(tune.train_images), generator=g).numpy() < 0.5  # the annotated images mirrored
        img = np.where(flips[:, None, None, None], tune.train_images[:, :, ::-1], tune.train_images)
        lines = np.where(flips[:, None, None], tune.train_lines[:, :, ::-1], tune.train_lines)
        weight = np.where(flips[:, None, None], tune.train_weights[:, :, ::-1], tune.train_weights)
        x, y = _to_tensors(np.concatenate([img, train_img[picked]]), np.concatenate([lines, train_lines[picked]]), size)
        w = torch.from_numpy(np.concatenate([weight, np.ones((n_replay, *weight.shape[1:]), np.float32)]))[:, None]
        order = torch.randperm(samples, generator=g)
        return x[order], y[order], w[order]

    def validate(model: torch.nn.Module) -> dict[str, Any]:
        f1 = dataset_f1(list(draw_lines(model, tune.val_images, device)), list(tune.val_lines))
        metrics = {"f1": f1["f1"], "precision": f1["precision"], "recall": f1["recall"], "val_images": f1["images"]}
        metrics.update({f"{name}_f1": v for name, v in tune.classic.items()})
        metrics["pretrained_f1"] = before()  # the pre-trained model's, same images
        metrics["holdout"] = "annotated"  # status: "on held-out annotated images"
        family = validate_pairs(model)  # what the drawn pre-training taught, on its held-out family
        metrics.update(family_f1=family["f1"], family=family.get("holdout", "drawn"))
        metrics.update({f"family_{name}_f1": family[f"{name}_f1"] for name in tune.classic if f"{name}_f1" in family})
        return metrics

    config: dict[str, Any] = {"model": opts.model, "run": key, "options": opts.model_dump(), "base": base}
    config.update(annotated=len(tune.train_images), annotated_val=len(tune.val_images), replay=n_replay)
    run = _Run(
        key,
        f"{key[:8]}-tune",
        [(0, epoch) for epoch in range(opts.finetune_epochs)],
        (opts.finetune_epochs,),
        (size,),
        samples,
        opts.finetune_lr,
        epoch_data,
        validate,
        config,
        base,
    )
    loss_fn = FeatureLoss(None, 0.0, opts.ink_weight, opts.dice_weight).to(device)  # masked truth: no VGG terms
    return {**_train_run(ws, opts, run, loss_fn, device, on_epoch, on_step), "finetune": True}


def _finished(ws: Workspace, run: _Run) -> Checkpoint | None:
    """The run's last checkpoint when it is stored (the run finished), else None."""
    name = f"{run.prefix}-{len(run.plan):04d}"
    if name not in list_checkpoints(ws, MODEL_DIR):
        return None
    ckpt = load_checkpoint(ws, MODEL_DIR, name)
    return ckpt if ckpt.config.get("run") == run.key else None


def _train_run(
    ws: Workspace,
    opts: LineartTrainOptions,
    run: _Run,
    loss_fn: FeatureLoss,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    on_step: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    key, plan = run.key, run.plan
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        model = create("lineart", opts.model).to(device)
    if run.base:
        load_weights(model, load_checkpoint(ws, MODEL_DIR, run.base).weights)
    steps = -(-run.samples // opts.batch_size)
    state = resume_train_state(ws, MODEL_DIR, key)
    meta = state.meta if state else None
    start = 0
    ckpt = None if state and meta else _finished(ws, run)  # another run's state came after this one
    if state and meta and int(meta["done"]) >= len(plan):
        ckpt = load_checkpoint(ws, MODEL_DIR, state.checkpoint)
    if ckpt is not None:
        log.info("train-lineart run %s already finished its %d epochs", key, len(plan))
        done = {"last": ckpt.metrics, "history": [], "checkpoint": ckpt.name, "already_done": True}
        return {"run": key, "epochs": len(plan), "resumed_at": len(plan), **done}
    if state and meta:
        start = int(meta["done"])
        load_weights(model, load_checkpoint(ws, MODEL_DIR, state.checkpoint).weights)
        log.info("resuming train-lineart run %s after epoch %d of %d", key, start, len(plan))
    history: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}
    name = meta["checkpoint"] if meta and start else ""
    optimizer = scheduler = None
    for k in range(start, len(plan)):
        stage, epoch = plan[k]
        size = run.sizes[stage]
        if optimizer is None or epoch == 0:
            optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=opts.weight_decay)
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=run.lr, total_steps=run.stage_epochs[stage] * steps
            )
            if k == start and epoch > 0 and state and meta:
                load_optimizer_state({"opt": optimizer}, read_optimizer(ws, state), meta["param_groups"])
                scheduler.load_state_dict(meta["scheduler"])
        assert scheduler is not None
        t0 = time.perf_counter()
        x_all, y_all, w_all = run.epoch_data(stage, epoch, size)
        model.train()
        sums: dict[str, float] = {}
        for b in range(steps):
            sl = slice(b * opts.batch_size, (b + 1) * opts.batch_size)
            x, y = x_all[sl].to(device), y_all[sl].to(device)
            w = w_all[sl].to(device) if w_all is not None else None
            with autocast(device):
                pred = model(x)
            loss, parts = loss_fn(pred.float(), y, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for part, v in parts.items():
                sums[part] = sums.get(part, 0.0) + v
            if on_step:
                on_step(k * steps + b + 1, len(plan) * steps)
        metrics = {"epoch": k + 1, "size": size, **{f"loss_{p}": round(v / steps, 5) for p, v in sums.items()}}
        metrics.update(run.validate(model))
        metrics["seconds"] = round(time.perf_counter() - t0, 1)
        name = f"{run.prefix}-{k + 1:04d}"
        best = has_tag(ws, MODEL_DIR, "best") and k > 0
        best_f1 = float(checkpoint_metrics(ws, MODEL_DIR, "best").get("f1", -1.0)) if best else -1.0
        tags = ("latest", "best") if metrics["f1"] > best_f1 else ("latest",)
        digest = save_checkpoint(ws, MODEL_DIR, name, weights_bytes(model), run.config, metrics, tags=())
        blob, groups = optimizer_state({"opt": optimizer})
        extra = {"param_groups": groups, "scheduler": scheduler.state_dict()}
        commit_train_state(ws, MODEL_DIR, name, blob, {"run": key, "done": k + 1, **extra}, tags, digest)
        history.append(metrics)
        log.info("train-lineart epoch %d/%d at %d px: %s", k + 1, len(plan), size, metrics)
        if on_epoch:
            on_epoch(metrics)
    return {
        "run": key,
        "epochs": len(plan),
        "resumed_at": start,
        "last": metrics,
        "history": history,
        "checkpoint": name,
        "already_done": False,
    }


def load_artline(ws: Workspace, ref: str = "latest", device: str = "cpu") -> tuple[torch.nn.Module, str, str]:
    """The trained line-art model (eval mode), its checkpoint name and digest."""
    ckpt = load_checkpoint(ws, MODEL_DIR, ref)
    model = create("lineart", ckpt.config["model"])
    load_weights(model, ckpt.weights)
    return model.to(pick_device(device)).eval(), ckpt.name, ckpt.digest
