"""GauGAN's two training loops (``tasks.gaugan.train_gaugan`` runs them): phase 1, the VAE
pretraining of the style encoder, and phase 2, the GAN.

Each step draws its batch, flips and noise from ``seeded_generator(seed, phase, step)``, so
a loop started at any step replays exactly the steps an uninterrupted run takes; every
``checkpoint_every`` steps (and at the last) it hands the mean losses to ``checkpoint``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from models.spade import (
    RegionEncoder,
    feature_matching_loss,
    hinge_g_loss,
    kl_divergence,
    one_hot,
    region_statistics,
    reparameterize,
)
from tasks.device import autocast
from tasks.training import seeded_generator

if TYPE_CHECKING:
    from tasks.gaugan import GauganOptions, Nets, Pairs


@dataclass
class Loop:
    """What both phases run with: the networks, the data, the options, and the callbacks."""

    nets: Nets
    pairs: Pairs
    opts: GauganOptions
    device: torch.device
    checkpoint: Callable[[str, int, dict[str, float], float], None]
    on_step: Callable[[str, int, int], None] | None

    def batch(self, phase: str, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """Step ``step``'s images and masks and its generator, for the noise."""
        g = seeded_generator(self.opts.seed, phase, step)
        idx = torch.randint(len(self.pairs.train), (self.opts.batch_size,), generator=g).tolist()
        flips = (torch.rand(self.opts.batch_size, generator=g) < 0.5).tolist()
        x, y = self.pairs.read([self.pairs.train[i] for i in idx], flips)
        return x, y, g

    def step_done(self, phase: str, step: int, total: int, sums: dict[str, float], n: int, t0: float) -> bool:
        """Report step ``step`` (1-based); at a checkpoint, hand over the mean losses: True then."""
        if self.on_step:
            self.on_step(phase, step, total)
        if step % self.opts.checkpoint_every and step != total:
            return False
        self.checkpoint(phase, step, {k: v / n for k, v in sums.items()}, t0)
        return True


@torch.no_grad()
def ema_update(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * net`` over the parameters; the spectral norms' vectors
    copied from ``net`` (the latent prior, fitted on the average itself, is left alone)."""
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.lerp_(p.detach(), 1 - decay)
    own = dict(net.named_buffers())
    for name, be in ema.named_buffers():
        if not name.startswith("latent_"):
            be.copy_(own[name])


def pooled_l1(fake: torch.Tensor, real: torch.Tensor, side: int) -> torch.Tensor:
    """L1 between both images average-pooled to ``side`` x ``side``: their colour layout, not their detail."""
    return F.l1_loss(F.adaptive_avg_pool2d(fake, side), F.adaptive_avg_pool2d(real, side))


def region_colour_l1(fake: torch.Tensor, real: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """L1 between the mean colours of every class region present, generated against real.

    ``fake``, ``real``: ``(N, 3, H, W)``; ``seg``: one-hot ``(N, C, H, W)``. Regions are weighted
    alike whatever their size, so the hair counts as much as the background.
    """
    area = seg.sum((2, 3))  # (N, C)
    present = area > 0
    if not bool(present.any()):
        return fake.sum() * 0
    denom = area.clamp(min=1)[:, :, None]
    mf = torch.einsum("nchw,nkhw->nck", seg, fake) / denom
    mr = torch.einsum("nchw,nkhw->nck", seg, real) / denom
    return (mf - mr).abs().mean(-1)[present].mean()


def train_vae(loop: Loop, opt: torch.optim.Optimizer, start: int) -> None:
    """Phase 1: ELBO with a Laplace likelihood (L1), both terms per pixel, summed latent KL.

    With region styles the decoder reconstructs every region's mean and spread of colour
    from its code (the likelihood is over those statistics, the KL still per pixel: a KL
    per statistic collapsed the codes onto the prior).
    """
    nets, device = loop.nets, loop.device
    t0, sums, n = time.perf_counter(), {"recon": 0.0, "kl": 0.0}, 0
    encoder = nets.encoder
    for step in range(start, loop.opts.vae_steps):
        x, y, g = loop.batch("vae", step)
        x = x.to(device)
        if isinstance(encoder, RegionEncoder):
            seg = one_hot(y.to(device), encoder.label_nc)
            with autocast(device):
                mu, logvar = encoder(x, seg)
                recon = nets.decoder(reparameterize(mu.float(), logvar.float(), g))
            target, present = region_statistics(x, seg)
            l_rec = (recon.float() - target).abs().mean(-1)[present].mean()
            l_kl = kl_divergence(mu.float(), logvar.float()) / (3 * x.shape[-1] ** 2)
        else:
            size = int(encoder.size)
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            with autocast(device):
                mu, logvar = encoder(x)
                recon = nets.decoder(reparameterize(mu.float(), logvar.float(), g))
            l_rec = F.l1_loss(recon.float(), x)
            l_kl = kl_divergence(mu.float(), logvar.float()) / (3 * size**2)
        loss = l_rec + l_kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sums["recon"] += float(l_rec.detach())
        sums["kl"] += float(l_kl.detach())
        n += 1
        named = {f"vae_{k}": v for k, v in sums.items()}
        if loop.step_done("vae", step + 1, loop.opts.vae_steps, named, n, t0):
            t0, sums, n = time.perf_counter(), dict.fromkeys(sums, 0.0), 0


def train_gan(
    loop: Loop, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, vgg: torch.nn.Module | None, start: int
) -> None:
    """Phase 2: one generator step then one discriminator step per batch (SPADE's order)."""
    G, D, E = loop.nets.generator, loop.nets.discriminator, loop.nets.encoder
    opts, device = loop.opts, loop.device
    num_classes = G.label_nc
    names = ("g_gan", "g_feat", "g_vgg", "g_kld", "g_rec", "g_region", "d_real", "d_fake")
    zero = torch.zeros((), device=device)
    t0, sums, n = time.perf_counter(), dict.fromkeys(names, 0.0), 0
    amp = autocast(device)
    for step in range(start, opts.steps):
        x, y, g = loop.batch("gan", step)
        x, seg = x.to(device), one_hot(y.to(device), num_classes)
        # generator step
        with amp:
            mu, logvar = E(x, seg)
            z = reparameterize(mu.float(), logvar.float(), g)
            fake = G(seg, z)
            pred_fake = D(fake, seg)
            pred_real = D(x, seg)
        l_gan = hinge_g_loss([[t.float() for t in p] for p in pred_fake])
        l_feat = feature_matching_loss(
            [[t.float() for t in p] for p in pred_real], [[t.float() for t in p] for p in pred_fake]
        )
        l_vgg = vgg(fake.float(), x) if vgg is not None else zero
        l_kld = kl_divergence(mu.float(), logvar.float())
        l_rec = pooled_l1(fake.float(), x, opts.rec_side) if opts.lambda_rec else zero
        l_region = region_colour_l1(fake.float(), x, seg) if opts.lambda_region else zero
        loss_g = (
            l_gan
            + opts.lambda_feat * l_feat
            + opts.lambda_vgg * l_vgg
            + opts.lambda_kld * l_kld
            + opts.lambda_rec * l_rec
            + opts.lambda_region * l_region
        )
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if loop.nets.generator_ema is not None:
            ema_update(loop.nets.generator_ema, G, min(opts.ema, (1 + step) / (10 + step)))
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
        for k, v in zip(names, (l_gan, l_feat, l_vgg, l_kld, l_rec, l_region, l_d_real, l_d_fake), strict=True):
            sums[k] += float(torch.as_tensor(v).detach())
        n += 1
        if loop.step_done("gan", step + 1, opts.steps, sums, n, t0):
            t0, sums, n = time.perf_counter(), dict.fromkeys(names, 0.0), 0
