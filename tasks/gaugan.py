"""Training GauGAN on the workspace's (image, mask) pairs, in two phases, resumably and exactly.

Phase 1 (``vae``) pretrains the style encoder as a VAE with a small decoder of its own
(ELBO with an L1 likelihood); phase 2 (``gan``) trains the SPADE generator and the
multiscale discriminator with z sampled from that encoder, which keeps training with a KL
term: hinge GAN + feature matching (10) + VGG19 perceptual (10) + KL (0.05), TTUR (G
1e-4, D 4e-4, Adam betas 0 and 0.9), bf16 autocast on GPU.

Data: the augmented variants of the annotations (the originals when nothing is
augmented), plus corpus images whose pseudo-label confidence reaches
``min_confidence``. Held out (never trained on, used for evaluation and sample sheets):
the annotations ``train-unet`` validates on and a stable 10% of the corpus, by id hash.

Exactness: every step draws its batch, flips and noise from a generator seeded by
``(seed, phase, step)``, so the run's randomness needs no saved state. A checkpoint holds
the networks and the optimisers; a second call continues from the last one and, on CPU,
ends bit-identical to an uninterrupted run. ``--steps`` is not part of a run's identity:
asking for more steps continues the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from models.spade import (
    ConvEncoder,
    MultiscaleDiscriminator,
    SPADEGenerator,
    VAEDecoder,
    feature_matching_loss,
    hinge_g_loss,
    kl_divergence,
    one_hot,
    reparameterize,
)
from storage.checkpoints import load_checkpoint, resolve, save_checkpoint
from storage.items import item_table
from storage.workspace import Workspace, WorkspaceError
from tasks.augment import validation_split
from tasks.segment import pick_device
from tasks.training import load_optimizer_state, optimizer_state, seeded_generator

log = logging.getLogger(__name__)

MODEL_DIR = "gaugan"
STATE_KEY = f"models/{MODEL_DIR}/train-state.json"
HELD_OUT_FRACTION = 0.1
PRELOAD_BYTES = 1 << 30  # pairs smaller than this are read once into memory


class GauganOptions(BaseModel):
    """Hyper-parameters of ``train-gaugan``; the defaults are sized for a CPU laptop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(256, ge=32, description="training side, a multiple of 2**num_upsampling")
    steps: int = Field(2000, ge=1, description="GAN steps (phase 2); more steps continue the same run")
    vae_steps: int = Field(400, ge=0, description="encoder pretraining steps (phase 1)")
    batch_size: int = Field(4, ge=1)
    ngf: int = Field(16, ge=1, description="generator width (SPADE's default is 64)")
    ndf: int = Field(64, ge=1)
    nef: int = Field(32, ge=1, description="encoder width")
    z_dim: int = Field(256, ge=1)
    num_upsampling: Literal["normal", "more", "most"] = "normal"
    spade_hidden: int = Field(128, ge=1)
    num_d: int = Field(2, ge=1)
    n_layers_d: int = Field(4, ge=1)
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    lr_vae: float = Field(1e-3, gt=0)
    lambda_feat: float = Field(10.0, ge=0)
    lambda_vgg: float = Field(10.0, ge=0)
    lambda_kld: float = Field(0.05, ge=0)
    min_confidence: float = Field(0.8, ge=0, le=1, description="corpus pseudo-labels at least this confident")
    checkpoint_every: int = Field(200, ge=1)
    eval_count: int = Field(32, ge=0, description="held-out masks evaluated at every checkpoint")
    vgg_weights: str | None = Field(None, description="local file with ImageNet VGG19 weights")
    seed: int = 0
    device: str = "auto"

    def run_key(self) -> str:
        """Identity of a training run; options that only say how long or how often are not part of it."""
        fields = self.model_dump(exclude={"steps", "checkpoint_every", "eval_count", "device"})
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


# -- data ------------------------------------------------------------------------------------
def _score(item: str) -> float:
    return int.from_bytes(hashlib.sha256(f"gaugan\0{item}".encode()).digest()[:8], "little") / 2**64


@dataclass
class Pairs:
    """(family, slot, id) of training and held-out pairs, and a reader of them at one size."""

    ws: Workspace
    size: int
    train: list[tuple[str, int, str]]
    held_out: list[tuple[str, int, str]]
    _cache: dict[str, tuple[np.ndarray, np.ndarray, dict[int, int]]] = field(default_factory=dict)

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(self.train).encode()).hexdigest()[:12]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for fam, _, _ in self.train:
            out[fam] = out.get(fam, 0) + 1
        return out

    def _arrays(self, family: str) -> tuple[str, str]:
        return f"{family}/images", ("corpus/masks" if family == "corpus" else f"{family}/masks")

    def preload(self) -> None:
        """Read every pair once when they fit in memory (same values as reading on demand)."""
        everything = self.train + self.held_out
        if not everything:
            return
        side = int(self.ws.array(self._arrays(everything[0][0])[0]).shape[1])
        if len(everything) * side * side * 4 > PRELOAD_BYTES:
            return
        by_family: dict[str, list[int]] = {}
        for fam, slot, _ in everything:
            by_family.setdefault(fam, []).append(slot)
        for fam, slots in by_family.items():
            slots = sorted(set(slots))
            img_name, mask_name = self._arrays(fam)
            images = self.ws.read_items(img_name, slots)
            masks = self.ws.read_items(mask_name, slots)
            self._cache[fam] = (images, masks, {s: i for i, s in enumerate(slots)})

    def read(
        self, entries: list[tuple[str, int, str]], flips: list[bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, 3, S, S)`` in [-1, 1] and masks ``(N, S, S)`` int64 at ``size``."""
        imgs, masks = [], []
        for fam, slot, _ in entries:
            if fam in self._cache:
                images, ms, where = self._cache[fam]
                img, mask = images[where[slot]], ms[where[slot]]
            else:
                img_name, mask_name = self._arrays(fam)
                img = self.ws.read_items(img_name, [slot])[0]
                mask = self.ws.read_items(mask_name, [slot])[0]
            imgs.append(img)
            masks.append(mask)
        return to_model_inputs(np.stack(imgs), np.stack(masks), self.size, flips)


def to_model_inputs(
    images: np.ndarray, masks: np.ndarray, size: int, flips: list[bool] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, H, W, 3)`` images and ``(N, H, W)`` masks -> model inputs at ``size``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    y = torch.from_numpy(np.ascontiguousarray(masks)).long()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if y.shape[-1] != size:
        y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    if flips is not None:
        f = torch.tensor(flips)
        x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.where(f.view(-1, 1, 1), y.flip(-1), y)
    return (x / 127.5 - 1).contiguous(), y.contiguous()


def collect_pairs(ws: Workspace, opts: GauganOptions) -> Pairs:
    """The training and held-out pairs of the workspace (see the module docstring)."""
    train: list[tuple[str, int, str]] = []
    held: list[tuple[str, int, str]] = []
    parents = item_table(ws, "annotated")
    if len(parents) >= 2:
        train_ids, val_ids = validation_split(sorted(parents.by_id), 0.15, 0)
    else:
        train_ids, val_ids = sorted(parents.by_id), []
    held += [("annotated", parents.by_id[i]["slot"], i) for i in val_ids]
    augmented = item_table(ws, "augmented")
    keep = set(train_ids)
    if len(augmented):
        train += sorted(("augmented", e["slot"], i) for i, e in augmented.by_id.items() if e["parent"] in keep)
    else:
        train += sorted(("annotated", parents.by_id[i]["slot"], i) for i in train_ids)
    if ws.has_array("corpus/masks") and ws.has_array("corpus/confidence"):
        corpus = item_table(ws, "corpus")
        done = set(ws.markers("corpus/masks"))
        confidence = np.asarray(ws.array("corpus/confidence")[:])
        s = ws.shard_size
        for item, e in sorted(corpus.by_id.items(), key=lambda kv: kv[1]["slot"]):
            slot = e["slot"]
            if slot // s not in done or slot >= len(confidence):
                continue
            if _score(item) < HELD_OUT_FRACTION:
                held.append(("corpus", slot, item))
            elif confidence[slot] >= opts.min_confidence:
                train.append(("corpus", slot, item))
    if not train:
        raise WorkspaceError(
            f"{ws.url} has no (image, mask) pairs to train GauGAN on: ingest annotations (ingest-labelme) "
            "or pseudo-label the corpus first"
        )
    return Pairs(ws, opts.size, train, held)


# -- networks and their state --------------------------------------------------------------------
@dataclass
class Nets:
    encoder: ConvEncoder
    decoder: VAEDecoder
    generator: SPADEGenerator
    discriminator: MultiscaleDiscriminator

    def named(self) -> dict[str, torch.nn.Module]:
        return {"E": self.encoder, "dec": self.decoder, "G": self.generator, "D": self.discriminator}


def build_nets(opts: GauganOptions, num_classes: int) -> Nets:
    """The four networks, initialised from ``opts.seed`` (the same on every call)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        encoder = ConvEncoder(_pow2_at_least(opts.size), opts.nef, opts.z_dim)
        decoder = VAEDecoder(_pow2_at_least(opts.size), opts.nef, opts.z_dim)
        generator = SPADEGenerator(num_classes, opts.size, opts.ngf, opts.z_dim, opts.num_upsampling, opts.spade_hidden)
        discriminator = MultiscaleDiscriminator(num_classes, opts.ndf, opts.n_layers_d, opts.num_d)
    return Nets(encoder, decoder, generator, discriminator)


def _pow2_at_least(n: int) -> int:
    return 1 << max(3, (n - 1).bit_length())


def _weights_blob(nets: dict[str, torch.nn.Module]) -> bytes:
    from safetensors.torch import save

    state = {}
    for prefix, net in nets.items():
        for k, v in net.state_dict().items():
            state[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
    return save(state)


def _load_weights(nets: dict[str, torch.nn.Module], blob: bytes) -> None:
    from safetensors.torch import load

    tensors = load(blob)
    for prefix, net in nets.items():
        part = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}
        if part:
            net.load_state_dict(part)


def _batch(
    pairs: Pairs, opts: GauganOptions, phase: str, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    g = seeded_generator(opts.seed, phase, step)
    idx = torch.randint(len(pairs.train), (opts.batch_size,), generator=g).tolist()
    flips = (torch.rand(opts.batch_size, generator=g) < 0.5).tolist()
    x, y = pairs.read([pairs.train[i] for i in idx], flips)
    return x, y, g


# -- evaluation ------------------------------------------------------------------------------
def latent_noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def generate_images(
    generator: SPADEGenerator, masks: torch.Tensor, z: torch.Tensor, device: torch.device, batch: int = 8
) -> torch.Tensor:
    """uint8 ``(N, 3, S, S)`` images for int ``(N, S, S)`` masks and latents ``(N, z_dim)``."""
    generator.eval()
    out = []
    for i in range(0, len(masks), batch):
        seg = one_hot(masks[i : i + batch].to(device), generator.label_nc)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            fake = generator(seg, z[i : i + batch].to(device))
        out.append(((fake.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu())
    generator.train()
    return torch.cat(out) if out else torch.zeros(0, 3, generator.size, generator.size, dtype=torch.uint8)


def semantic_consistency(
    segmenter: torch.nn.Module,
    seg_size: int,
    images: torch.Tensor,
    masks: torch.Tensor,
    classes: list[str],
    device: torch.device,
) -> dict[str, Any]:
    """SPADE's protocol: segment ``images`` (uint8) and score the result against ``masks``."""
    from tasks.segment import confusion, iou_from_confusion, predict

    if images.shape[-1] != seg_size:
        images = F.interpolate(images.float(), size=(seg_size, seg_size), mode="bilinear", align_corners=False)
        images = images.round().clamp(0, 255).byte()
    if masks.shape[-1] != seg_size:
        masks = F.interpolate(masks[:, None].float(), size=(seg_size, seg_size), mode="nearest")[:, 0].long()
    preds = predict(segmenter, images, device)
    m = iou_from_confusion(confusion(preds, masks.byte(), len(classes)), classes)
    return {"semantic_miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"], "iou": m["iou"], "images": len(images)}


def evaluate(
    ws: Workspace,
    generator: SPADEGenerator,
    pairs: Pairs,
    count: int,
    device: torch.device,
    seed: int = 0,
    segmenter_ref: str = "latest",
    with_real: bool = False,
) -> dict[str, Any]:
    """Semantic mIoU and pixel accuracy of images generated (random latents) for held-out masks."""
    from tasks.segment import load_segmenter

    entries = pairs.held_out[:count] if count else pairs.held_out
    if not entries:
        raise WorkspaceError("no held-out masks to evaluate on (the workspace needs annotations or a labelled corpus)")
    segmenter, cfg, digest = load_segmenter(ws, segmenter_ref, str(device))
    seg_size = int(cfg["size"])
    real, masks = pairs.read(entries)
    fake = generate_images(generator, masks, latent_noise(len(masks), generator.z_dim, seed), device)
    out = semantic_consistency(segmenter, seg_size, fake, masks, ws.classes, device)
    out["segmenter"] = digest
    if with_real:
        real_u8 = ((real + 1) * 127.5).round().byte()
        out["real"] = semantic_consistency(segmenter, seg_size, real_u8, masks, ws.classes, device)
    return out


def _sample_sheet(
    generator: SPADEGenerator, encoder: ConvEncoder, pairs: Pairs, device: torch.device, n: int = 6
) -> bytes:
    """Rows of mask | real | styled by the real image | two random latents."""
    from tasks.imageio import encode_png
    from tasks.report import colorize

    entries = (pairs.held_out or pairs.train)[:n]
    real, masks = pairs.read(entries)
    with torch.inference_mode():
        encoder.eval()
        mu, _ = encoder(real.to(device))
        encoder.train()
    columns = [generate_images(generator, masks, mu.cpu(), device)]
    for s in (1, 2):
        columns.append(generate_images(generator, masks, latent_noise(len(masks), generator.z_dim, s), device))
    rows = []
    real_u8 = ((real + 1) * 127.5).round().byte()
    for i in range(len(entries)):
        tiles = [colorize(masks[i].numpy().astype(np.uint8)), real_u8[i].permute(1, 2, 0).numpy()]
        tiles += [c[i].permute(1, 2, 0).numpy() for c in columns]
        rows.append(np.concatenate(tiles, axis=1))
    return encode_png(np.concatenate(rows, axis=0))


# -- training --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run: str
    phase: str
    step: int
    resumed_at: dict[str, int] | None
    checkpoint: str | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    train_pairs: dict[str, int]
    held_out: int
    vgg: str
    already_done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _config(opts: GauganOptions, classes: list[str], vgg: str, pairs: Pairs) -> dict[str, Any]:
    return {
        "model": "spade",
        "run": opts.run_key(),
        "classes": classes,
        "num_classes": len(classes),
        "size": opts.size,
        "encoder_size": _pow2_at_least(opts.size),
        "options": opts.model_dump(),
        "vgg": vgg,
        "train_pairs": pairs.counts(),
        "data_digest": pairs.digest(),
    }


def train_gaugan(
    ws: Workspace,
    opts: GauganOptions,
    on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """Train (or resume) GauGAN: phase 1 up to ``vae_steps``, then phase 2 up to ``steps``."""
    from models.vgg import VGGLoss

    device = pick_device(opts.device)
    classes = ws.classes
    n_up = {"normal": 5, "more": 6, "most": 7}[opts.num_upsampling]
    if opts.size % 2**n_up:
        raise WorkspaceError(
            f"--size {opts.size} must be a multiple of {2**n_up} (num_upsampling {opts.num_upsampling})"
        )
    pairs = collect_pairs(ws, opts)
    pairs.preload()
    key = opts.run_key()
    nets = build_nets(opts, len(classes))
    for net in nets.named().values():
        net.to(device).train()
    vae_params = list(nets.encoder.parameters()) + list(nets.decoder.parameters())
    opt_vae = torch.optim.Adam(vae_params, lr=opts.lr_vae, betas=(0.5, 0.999))
    g_params = list(nets.generator.parameters()) + list(nets.encoder.parameters())
    opt_g = torch.optim.Adam(g_params, lr=opts.lr_g, betas=(opts.beta1, opts.beta2))
    opt_d = torch.optim.Adam(nets.discriminator.parameters(), lr=opts.lr_d, betas=(opts.beta1, opts.beta2))
    vgg = VGGLoss(opts.vgg_weights).to(device) if opts.lambda_vgg > 0 else None
    vgg_source = vgg.source if vgg is not None else "unused"

    phase, step, resumed = "vae", 0, None
    meta = ws.loc.read_json(STATE_KEY) if ws.loc.exists(STATE_KEY) else None
    if meta and meta.get("run") == key:
        ckpt = load_checkpoint(ws, MODEL_DIR, meta["checkpoint"])
        _load_weights(nets.named(), ckpt.weights)
        phase, step = meta["phase"], int(meta["step"])
        blob = ws.loc.read_bytes(f"models/{MODEL_DIR}/{meta['checkpoint']}/optimizer.safetensors")
        load_optimizer_state(
            {"vae": opt_vae} if phase == "vae" else {"G": opt_g, "D": opt_d}, blob, meta["param_groups"]
        )
        resumed = {"phase": phase, "step": step}
        if ckpt.config.get("data_digest") != pairs.digest():
            log.warning("the training data changed since step %d of run %s: continuing on the current data", step, key)
        log.info("resuming train-gaugan run %s at %s step %d", key, phase, step)
    elif meta:
        log.info("options differ from run %s in the workspace: starting run %s", meta.get("run"), key)
    config = _config(opts, classes, vgg_source, pairs)
    history: list[dict[str, Any]] = []
    last_ckpt: str | None = meta["checkpoint"] if meta and resumed else None
    metrics: dict[str, Any] = {}

    def checkpoint(phase_now: str, step_now: int, losses: dict[str, float], t0: float) -> None:
        nonlocal last_ckpt, metrics
        name = f"{key[:8]}-{'vae' if phase_now == 'vae' else 'step'}-{step_now:06d}"
        m: dict[str, Any] = {"phase": phase_now, "step": step_now, "seconds": round(time.perf_counter() - t0, 1)}
        m.update({k: round(v, 5) for k, v in losses.items()})
        if phase_now == "gan" and opts.eval_count and pairs.held_out and _has_segmenter(ws):
            ev = evaluate(ws, nets.generator, pairs, opts.eval_count, device)
            m.update(semantic_miou=ev["semantic_miou"], pixel_accuracy=ev["pixel_accuracy"], eval_images=ev["images"])
        named = nets.named()
        saved = {k: named[k] for k in (("E", "dec") if phase_now == "vae" else ("E", "dec", "G", "D"))}
        tags: tuple[str, ...] = ("vae",) if phase_now == "vae" else ("latest",)
        save_checkpoint(
            ws, MODEL_DIR, name, _weights_blob(saved), {**config, "phase": phase_now, "step": step_now}, m, tags
        )
        optimizers: dict[str, torch.optim.Optimizer] = (
            {"vae": opt_vae} if phase_now == "vae" else {"G": opt_g, "D": opt_d}
        )
        blob, groups = optimizer_state(optimizers)
        ws.loc.write_bytes(f"models/{MODEL_DIR}/{name}/optimizer.safetensors", blob)
        if phase_now == "gan":
            ws.loc.write_bytes(
                f"models/{MODEL_DIR}/{name}/samples.png", _sample_sheet(nets.generator, nets.encoder, pairs, device)
            )
        ws.loc.write_json(
            STATE_KEY, {"run": key, "phase": phase_now, "step": step_now, "checkpoint": name, "param_groups": groups}
        )
        if last_ckpt and last_ckpt != name:  # optimiser state is needed only to resume from the last one
            ws.loc.delete(f"models/{MODEL_DIR}/{last_ckpt}/optimizer.safetensors")
        last_ckpt, metrics = name, m
        history.append(m)
        log.info("train-gaugan %s step %d: %s", phase_now, step_now, m)
        if on_checkpoint:
            on_checkpoint({**m, "checkpoint": name})

    if phase == "vae" and step < opts.vae_steps:
        _train_vae(nets, opt_vae, pairs, opts, step, device, checkpoint, on_step)
    if phase == "vae":
        phase, step = "gan", 0
    if step < opts.steps:
        _train_gan(nets, opt_g, opt_d, vgg, pairs, opts, step, device, checkpoint, on_step)
    done = not history and resumed is not None
    final = resolve(ws, MODEL_DIR, "latest")
    if not metrics:
        from storage.checkpoints import checkpoint_metrics

        metrics = checkpoint_metrics(ws, MODEL_DIR, "latest")
    return TrainResult(
        key,
        "gan",
        opts.steps,
        resumed,
        final,
        metrics,
        history,
        pairs.counts(),
        len(pairs.held_out),
        vgg_source,
        already_done=done,
    )


def _has_segmenter(ws: Workspace) -> bool:
    return ws.loc.exists("models/unet/tags/latest.json")


def _train_vae(
    nets: Nets,
    opt: torch.optim.Optimizer,
    pairs: Pairs,
    opts: GauganOptions,
    start: int,
    device: torch.device,
    checkpoint: Callable[[str, int, dict[str, float], float], None],
    on_step: Callable[[str, int, int], None] | None,
) -> None:
    """Phase 1: ELBO with a Laplace likelihood (L1), both terms per pixel, summed latent KL."""
    t0, sums, n = time.perf_counter(), {"recon": 0.0, "kl": 0.0}, 0
    pixels = 3 * nets.encoder.size**2
    for step in range(start, opts.vae_steps):
        x, _, g = _batch(pairs, opts, "vae", step)
        x = x.to(device)
        if x.shape[-1] != nets.encoder.size:
            x = F.interpolate(x, size=(nets.encoder.size,) * 2, mode="bilinear", align_corners=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            mu, logvar = nets.encoder(x)
            recon = nets.decoder(reparameterize(mu.float(), logvar.float(), g))
        l_rec = F.l1_loss(recon.float(), x)
        l_kl = kl_divergence(mu.float(), logvar.float()) / pixels
        loss = l_rec + l_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums["recon"] += float(l_rec.detach())
        sums["kl"] += float(l_kl.detach())
        n += 1
        if on_step:
            on_step("vae", step + 1, opts.vae_steps)
        if (step + 1) % opts.checkpoint_every == 0 or step + 1 == opts.vae_steps:
            checkpoint("vae", step + 1, {f"vae_{k}": v / n for k, v in sums.items()}, t0)
            t0, sums, n = time.perf_counter(), dict.fromkeys(sums, 0.0), 0


def _train_gan(
    nets: Nets,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    vgg: torch.nn.Module | None,
    pairs: Pairs,
    opts: GauganOptions,
    start: int,
    device: torch.device,
    checkpoint: Callable[[str, int, dict[str, float], float], None],
    on_step: Callable[[str, int, int], None] | None,
) -> None:
    """Phase 2: one generator step then one discriminator step per batch (SPADE's order)."""
    G, D, E = nets.generator, nets.discriminator, nets.encoder
    num_classes = G.label_nc
    names = ("g_gan", "g_feat", "g_vgg", "g_kld", "d_real", "d_fake")
    t0, sums, n = time.perf_counter(), dict.fromkeys(names, 0.0), 0
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for step in range(start, opts.steps):
        x, y, g = _batch(pairs, opts, "gan", step)
        x, seg = x.to(device), one_hot(y.to(device), num_classes)
        # generator step
        with amp:
            mu, logvar = E(x)
            z = reparameterize(mu.float(), logvar.float(), g)
            fake = G(seg, z)
            pred_fake = D(fake, seg)
            pred_real = D(x, seg)
        l_gan = hinge_g_loss([[t.float() for t in p] for p in pred_fake])
        l_feat = feature_matching_loss(
            [[t.float() for t in p] for p in pred_real], [[t.float() for t in p] for p in pred_fake]
        )
        l_vgg = vgg(fake.float(), x) if vgg is not None else torch.zeros((), device=device)
        l_kld = kl_divergence(mu.float(), logvar.float())
        loss_g = l_gan + opts.lambda_feat * l_feat + opts.lambda_vgg * l_vgg + opts.lambda_kld * l_kld
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        # discriminator step
        with amp:
            d_fake = D(fake.detach(), seg)
            d_real = D(x, seg)
        l_d_fake = sum(F.relu(1 + p[-1].float()).mean() for p in d_fake) / len(d_fake)
        l_d_real = sum(F.relu(1 - p[-1].float()).mean() for p in d_real) / len(d_real)
        loss_d = torch.as_tensor(l_d_fake + l_d_real)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        for k, v in zip(names, (l_gan, l_feat, l_vgg, l_kld, l_d_real, l_d_fake), strict=True):
            sums[k] += float(torch.as_tensor(v).detach())
        n += 1
        if on_step:
            on_step("gan", step + 1, opts.steps)
        if (step + 1) % opts.checkpoint_every == 0 or step + 1 == opts.steps:
            checkpoint("gan", step + 1, {k: v / n for k, v in sums.items()}, t0)
            t0, sums, n = time.perf_counter(), dict.fromkeys(names, 0.0), 0


# -- loading a trained GauGAN ------------------------------------------------------------------
@dataclass
class Trained:
    generator: SPADEGenerator
    encoder: ConvEncoder
    config: dict[str, Any]
    checkpoint: str
    digest: str
    device: torch.device


def load_gaugan(ws: Workspace, ref: str = "latest", device: str = "cpu") -> Trained:
    """The trained generator and encoder (eval mode) of checkpoint ``ref``."""
    ckpt = load_checkpoint(ws, MODEL_DIR, ref)
    cfg = ckpt.config
    if cfg.get("phase") != "gan":
        raise WorkspaceError(f"checkpoint {ckpt.name} is a VAE pretraining checkpoint, not a generator")
    opts = GauganOptions(**{**cfg["options"], "device": "cpu"})
    nets = build_nets(opts, int(cfg["num_classes"]))
    _load_weights({"G": nets.generator, "E": nets.encoder}, ckpt.weights)
    dev = pick_device(device)
    return Trained(nets.generator.to(dev).eval(), nets.encoder.to(dev).eval(), cfg, ckpt.name, ckpt.digest, dev)
