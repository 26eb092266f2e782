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

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from models.spade import (
    ConvEncoder,
    MultiscaleDiscriminator,
    RegionDecoder,
    RegionEncoder,
    SPADEGenerator,
    VAEDecoder,
    one_hot,
)
from storage.checkpoints import (
    checkpoint_metrics,
    commit_train_state,
    has_tag,
    load_checkpoint,
    read_optimizer,
    resolve,
    resume_train_state,
    save_checkpoint,
    write_side_file,
)
from storage.items import item_table
from storage.workspace import Workspace, WorkspaceError
from tasks.augment import validation_split
from tasks.device import autocast, pick_device
from tasks.gaugan_loop import Loop, train_gan, train_vae
from tasks.tensors import from_signed, signed_from_float255, to_float255
from tasks.training import (
    hash_fraction,
    load_optimizer_state,
    load_weights,
    optimizer_state,
    options_key,
    weights_bytes,
)

log = logging.getLogger(__name__)

MODEL_DIR = "gaugan"
HELD_OUT_FRACTION = 0.1
PRELOAD_BYTES = 1 << 30  # pairs smaller than this are read once into memory


class GauganOptions(BaseModel):
    """Hyper-parameters of ``train-gaugan``; the defaults are sized for a CPU laptop."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(256, ge=32, description="training side, a multiple of 2**num_upsampling")
    steps: int = Field(2000, ge=1, description="GAN steps (phase 2); more steps continue the same run")
    vae_steps: int = Field(400, ge=0, description="encoder pretraining steps (phase 1)")
    batch_size: int = Field(4, ge=1, description="masks per step")
    ngf: int = Field(16, ge=1, description="generator width (SPADE's default is 64)")
    ndf: int = Field(64, ge=1, description="discriminator width")
    nef: int = Field(32, ge=1, description="encoder width")
    z_dim: int = Field(256, ge=1, description="latent (style) dimension")
    num_upsampling: Literal["normal", "more", "most"] = Field(
        "normal", description="generator depth: normal 5, more 6, most 7 upsamplings (SPADE's option)"
    )
    spade_hidden: int = Field(128, ge=1, description="hidden channels of every SPADE block")
    num_d: int = Field(2, ge=1, description="discriminators of the multiscale PatchGAN")
    n_layers_d: int = Field(4, ge=1, description="layers of each discriminator")
    lr_g: float = Field(1e-4, gt=0, description="generator learning rate (TTUR)")
    lr_d: float = Field(4e-4, gt=0, description="discriminator learning rate (TTUR)")
    beta1: float = Field(0.0, ge=0, lt=1, description="Adam beta1")
    beta2: float = Field(0.9, ge=0, lt=1, description="Adam beta2")
    lr_vae: float = Field(1e-3, gt=0, description="encoder learning rate in phase 1")
    lambda_feat: float = Field(10.0, ge=0, description="discriminator feature-matching loss weight")
    lambda_vgg: float = Field(10.0, ge=0, description="VGG perceptual loss weight (0: off)")
    lambda_kld: float = Field(0.05, ge=0, description="KL divergence weight of the encoder")
    lambda_rec: float = Field(
        0.0, ge=0, description="L1 between the generated and the real image, both average-pooled to rec_side (0: off)"
    )
    rec_side: int = Field(16, ge=1, description="side the reconstruction term pools both images to")
    lambda_region: float = Field(
        0.0, ge=0, description="L1 between the mean colours of every class region of the generated and the real image"
    )
    style_injection: Literal["spade", "region"] = Field(
        "spade",
        description="how style reaches the generator: spade (one latent, into its first feature map, as in SPADE) "
        "or region (a code per class region, encoded from the region and painted into every SPADE block, as in SEAN)",
    )
    code_dim: int = Field(16, ge=1, description="style code size per class with region styles (z is classes x this)")
    ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="decay of a moving average of the generator's weights that evaluation and generation use (0: off)",
    )
    min_confidence: float = Field(0.8, ge=0, le=1, description="corpus pseudo-labels at least this confident")
    checkpoint_every: int = Field(200, ge=1, description="GAN steps between checkpoints")
    eval_count: int = Field(32, ge=0, description="held-out masks evaluated at every checkpoint")
    vgg_weights: str | None = Field(None, description="local file with ImageNet VGG19 weights")
    seed: int = Field(0, description="seed of the initial weights and of every step's draws")
    device: str = "auto"

    @model_validator(mode="after")
    def _size_fits_the_generator(self) -> GauganOptions:
        from models.spade import NUM_UPSAMPLING

        n_up = NUM_UPSAMPLING[self.num_upsampling]
        if self.size % 2**n_up:
            raise ValueError(f"size must be a multiple of {2**n_up} with num_upsampling {self.num_upsampling}")
        return self

    def run_key(self) -> str:
        """Identity of a training run; options that only say how long or how often are not part of it.

        Options added after runs existed are left out at the value that trains as before
        (``LEGACY``), so those runs keep their key and resume.
        """
        return options_key(self.model_dump(exclude={"steps", "checkpoint_every", "eval_count", "device"}), LEGACY)


# Options a checkpoint written before them did not record, at the value it was trained with.
LEGACY: dict[str, Any] = {
    "lambda_rec": 0.0,
    "rec_side": 16,
    "lambda_region": 0.0,
    "style_injection": "spade",
    "code_dim": 16,
    "ema": 0.0,
}


def options_of(config: dict[str, Any]) -> GauganOptions:
    """The options a checkpoint was trained with (on the CPU), older checkpoints included."""
    return GauganOptions(**{**LEGACY, **config["options"], "device": "cpu"})


# -- data ------------------------------------------------------------------------------------
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
        """Signed RGB images ``(N, 3, S, S)`` float32 in [-1, 1] and masks ``(N, S, S)`` int64 class ids at ``size``."""
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
    """uint8 ``(N, H, W, 3)`` images and ``(N, H, W)`` masks -> model inputs at ``size``.

    RGB ``(N, H, W, 3)`` uint8 in 0..255 and ``(N, H, W)`` uint8 class ids (255 = ignore) -> signed
    ``(N, 3, size, size)`` float32 in [-1, 1] and ``(N, size, size)`` int64 class ids.
    """
    x = to_float255(images)
    y = torch.from_numpy(np.ascontiguousarray(masks)).long()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if y.shape[-1] != size:
        y = F.interpolate(y[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    if flips is not None:
        f = torch.tensor(flips)
        x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.where(f.view(-1, 1, 1), y.flip(-1), y)
    return signed_from_float255(x).contiguous(), y.contiguous()


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
            if hash_fraction("gaugan", item) < HELD_OUT_FRACTION:
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
    encoder: ConvEncoder | RegionEncoder
    decoder: VAEDecoder | RegionDecoder
    generator: SPADEGenerator
    discriminator: MultiscaleDiscriminator
    generator_ema: SPADEGenerator | None = None

    def named(self) -> dict[str, torch.nn.Module]:
        out: dict[str, torch.nn.Module] = {
            "E": self.encoder,
            "dec": self.decoder,
            "G": self.generator,
            "D": self.discriminator,
        }
        if self.generator_ema is not None:
            out["G_ema"] = self.generator_ema
        return out

    def inference(self) -> SPADEGenerator:
        """The generator that evaluation, sample sheets and generation use: the moving average when kept."""
        return self.generator_ema if self.generator_ema is not None else self.generator


def build_nets(opts: GauganOptions, num_classes: int) -> Nets:
    """The four networks, initialised from ``opts.seed`` (the same on every call)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        encoder: ConvEncoder | RegionEncoder
        decoder: VAEDecoder | RegionDecoder
        if opts.style_injection == "region":
            encoder = RegionEncoder(num_classes, opts.nef, opts.code_dim)
            decoder = RegionDecoder(num_classes, opts.code_dim)
        else:
            encoder = ConvEncoder(_pow2_at_least(opts.size), opts.nef, opts.z_dim)
            decoder = VAEDecoder(_pow2_at_least(opts.size), opts.nef, opts.z_dim)
        generator = SPADEGenerator(
            num_classes,
            opts.size,
            opts.ngf,
            encoder.z_dim,
            opts.num_upsampling,
            opts.spade_hidden,
            code_dim=opts.code_dim if opts.style_injection == "region" else None,
        )
        discriminator = MultiscaleDiscriminator(num_classes, opts.ndf, opts.n_layers_d, opts.num_d)
    ema = None
    if opts.ema:
        ema = copy.deepcopy(generator)
        ema.requires_grad_(False)
    return Nets(encoder, decoder, generator, discriminator, ema)


def _pow2_at_least(n: int) -> int:
    return 1 << max(3, (n - 1).bit_length())


# -- evaluation ------------------------------------------------------------------------------
def latent_noise(n: int, z_dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def generate_images(
    generator: SPADEGenerator, masks: torch.Tensor, z: torch.Tensor, device: torch.device, batch: int = 8
) -> torch.Tensor:
    """uint8 ``(N, 3, S, S)`` images for int ``(N, S, S)`` masks and latents ``(N, z_dim)``.

    Returns RGB ``(N, 3, S, S)`` uint8 in 0..255 on the CPU (:func:`~tasks.tensors.from_signed` of the generator).
    """
    generator.eval()
    out = []
    for i in range(0, len(masks), batch):
        seg = one_hot(masks[i : i + batch].to(device), generator.label_nc)
        with autocast(device):
            fake = generator(seg, z[i : i + batch].to(device))
        out.append(from_signed(fake))
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
    """SPADE's protocol: segment ``images`` (uint8) and score the result against ``masks``.

    ``images``: RGB ``(N, 3, H, W)`` uint8 tensor in 0..255; ``masks``: ``(N, H, W)`` int64 class ids (255 = ignore).
    """
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
    z = generator.latent_from_noise(latent_noise(len(masks), generator.z_dim, seed))
    fake = generate_images(generator, masks, z, device)
    out = semantic_consistency(segmenter, seg_size, fake, masks, ws.classes, device)
    out["segmenter"] = digest
    if with_real:
        real_u8 = from_signed(real)
        out["real"] = semantic_consistency(segmenter, seg_size, real_u8, masks, ws.classes, device)
    return out


def style_evaluation(
    generator: SPADEGenerator,
    encoder: ConvEncoder | RegionEncoder,
    pairs: Pairs,
    count: int,
    device: torch.device,
    classes: list[str],
    seed: int = 0,
) -> dict[str, Any] | None:
    """Style fidelity and latent sensitivity (:mod:`tasks.gaugan_metrics`) on the held-out pairs; None with < 2."""
    from tasks.gaugan_metrics import style_metrics
    from tasks.tensors import nchw_to_images

    entries = pairs.held_out[:count] if count else pairs.held_out
    if len(entries) < 2:
        return None
    real, masks = pairs.read(entries)

    def gen(m: torch.Tensor, z: torch.Tensor) -> np.ndarray:
        return nchw_to_images(generate_images(generator, m, z, device))

    def enc(images: np.ndarray, masks: np.ndarray) -> torch.Tensor:
        x = signed_from_float255(to_float255(images))
        return encode_mean(encoder, x, torch.from_numpy(np.ascontiguousarray(masks)).long(), device)

    real_u8 = nchw_to_images(from_signed(real))
    return style_metrics(
        gen, enc, real_u8, masks.numpy(), classes, generator.z_dim, seed=seed, sample=generator.latent_from_noise
    )


def fit_latent_prior(
    generator: SPADEGenerator,
    encoder: ConvEncoder | RegionEncoder,
    pairs: Pairs,
    device: torch.device,
    limit: int = 256,
) -> None:
    """Fit a region-style generator's random-latent Gaussian to up to ``limit`` training images' codes."""
    if not generator.code_dim:
        return
    entries = pairs.train
    if len(entries) > limit:
        step = len(entries) / limit
        entries = [entries[int(i * step)] for i in range(limit)]
    latents = []
    for i in range(0, len(entries), 32):
        x, y = pairs.read(entries[i : i + 32])
        latents.append(encode_mean(encoder, x, y, device))
    generator.fit_prior(torch.cat(latents).to(device))


def style_summary(style: dict[str, Any] | None) -> dict[str, Any]:
    """The style figures as flat checkpoint metrics: a fidelity ratio per class, the spreads averaged."""
    if not style:
        return {}
    out: dict[str, Any] = {f"style_fidelity_{k}": v for k, v in style["style_fidelity"].items() if v is not None}
    for key in ("latent_spread", "latent_spread_baseline", "real_spread"):
        vals = [v for v in style[key].values() if v is not None]
        if vals:
            out[key] = round(float(np.mean(vals)), 2)
    return out


def encode_mean(
    encoder: ConvEncoder | RegionEncoder, images: torch.Tensor, masks: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """The encoder's mean latents ``(N, z_dim)`` (CPU float32) of signed images and their class-id masks."""
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode():
        seg = one_hot(masks.to(device), encoder.label_nc) if isinstance(encoder, RegionEncoder) else None
        if seg is not None and seg.shape[-1] != images.shape[-1]:
            seg = F.interpolate(seg, size=images.shape[2:], mode="nearest")
        mu, _ = encoder(images.to(device), seg)
    encoder.train(was_training)
    return mu.float().cpu()


def _sample_sheet(
    generator: SPADEGenerator, encoder: ConvEncoder | RegionEncoder, pairs: Pairs, device: torch.device, n: int = 6
) -> bytes:
    """Rows of mask | real | styled by the real image | two random latents."""
    from tasks.imageio import encode_png
    from tasks.report import colorize

    entries = (pairs.held_out or pairs.train)[:n]
    real, masks = pairs.read(entries)
    mu = encode_mean(encoder, real, masks, device)
    columns = [generate_images(generator, masks, mu, device)]
    for s in (1, 2):
        z = generator.latent_from_noise(latent_noise(len(masks), generator.z_dim, s))
        columns.append(generate_images(generator, masks, z, device))
    rows = []
    real_u8 = from_signed(real)
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

    def optimizers(phase_now: str) -> dict[str, torch.optim.Optimizer]:
        return {"vae": opt_vae} if phase_now == "vae" else {"G": opt_g, "D": opt_d}

    phase, step, resumed = "vae", 0, None
    state = resume_train_state(ws, MODEL_DIR, key)
    if state is not None:
        ckpt = load_checkpoint(ws, MODEL_DIR, state.checkpoint)
        load_weights(nets.named(), ckpt.weights)
        phase, step = state.meta["phase"], int(state.meta["step"])
        load_optimizer_state(optimizers(phase), read_optimizer(ws, state), state.meta["param_groups"])
        resumed = {"phase": phase, "step": step}
        if ckpt.config.get("data_digest") != pairs.digest():
            log.warning("the training data changed since step %d of run %s: continuing on the current data", step, key)
        log.info("resuming train-gaugan run %s at %s step %d", key, phase, step)
    config = _config(opts, classes, vgg_source, pairs)
    history: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {}

    def checkpoint(phase_now: str, step_now: int, losses: dict[str, float], t0: float) -> None:
        nonlocal metrics
        name = f"{key[:8]}-{'vae' if phase_now == 'vae' else 'step'}-{step_now:06d}"
        m: dict[str, Any] = {"phase": phase_now, "step": step_now, "seconds": round(time.perf_counter() - t0, 1)}
        m.update({k: round(v, 5) for k, v in losses.items()})
        g_eval = nets.inference()
        if phase_now == "gan":
            fit_latent_prior(g_eval, nets.encoder, pairs, device)
        if phase_now == "gan" and opts.eval_count and pairs.held_out and has_tag(ws, "unet"):
            ev = evaluate(ws, g_eval, pairs, opts.eval_count, device)
            m.update(semantic_miou=ev["semantic_miou"], pixel_accuracy=ev["pixel_accuracy"], eval_images=ev["images"])
        if phase_now == "gan" and opts.eval_count:
            style = style_evaluation(g_eval, nets.encoder, pairs, opts.eval_count, device, classes)
            m.update(style_summary(style))
        named = nets.named()
        saved = {k: named[k] for k in (("E", "dec") if phase_now == "vae" else named)}
        tags: tuple[str, ...] = ("vae",) if phase_now == "vae" else ("latest",)
        cfg = {**config, "phase": phase_now, "step": step_now}
        digest = save_checkpoint(ws, MODEL_DIR, name, weights_bytes(saved), cfg, m, tags=())
        if phase_now == "gan":
            write_side_file(ws, MODEL_DIR, name, "samples.png", _sample_sheet(g_eval, nets.encoder, pairs, device))
        blob, groups = optimizer_state(optimizers(phase_now))
        meta = {"run": key, "phase": phase_now, "step": step_now, "param_groups": groups}
        commit_train_state(ws, MODEL_DIR, name, blob, meta, tags, digest)
        metrics = m
        history.append(m)
        log.info("train-gaugan %s step %d: %s", phase_now, step_now, m)
        if on_checkpoint:
            on_checkpoint({**m, "checkpoint": name})

    loop = Loop(nets, pairs, opts, device, checkpoint, on_step)
    if phase == "vae" and step < opts.vae_steps:
        train_vae(loop, opt_vae, step)
    if phase == "vae":
        phase, step = "gan", 0
    if step < opts.steps:
        train_gan(loop, opt_g, opt_d, vgg, step)
    done = not history and resumed is not None
    final = resolve(ws, MODEL_DIR, "latest")
    if not metrics:
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
