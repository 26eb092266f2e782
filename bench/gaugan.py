"""Benchmark: GauGAN training steps/s and generation images/s (CPU, or a GPU when present).

    .venv/bin/python -m bench.gaugan [--size 256] [--batch 8] [--ngf 16]

A training step is what ``train-gaugan`` does per batch in phase 2: encoder + generator
forward, two discriminator passes, hinge + feature matching + VGG19 + KL, the generator
update, then the discriminator step. Random masks and images (the cost does not depend
on the content). Generation: inference-mode generator on one-hot masks, batch 8.
Writes ``bench/results/gaugan-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from models.spade import (
    ConvEncoder,
    MultiscaleDiscriminator,
    SPADEGenerator,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    kl_divergence,
    one_hot,
    reparameterize,
)
from models.vgg import VGGLoss

HERE = Path(__file__).resolve().parent


def train_rate(size: int, batch: int, ngf: int, device: torch.device, steps: int) -> float:
    torch.manual_seed(0)
    G = SPADEGenerator(7, size, ngf).to(device)
    D = MultiscaleDiscriminator(7).to(device)
    E = ConvEncoder(size, 32).to(device)
    vgg = VGGLoss().to(device)
    opt_g = torch.optim.Adam(list(G.parameters()) + list(E.parameters()), 1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), 4e-4, betas=(0.0, 0.9))
    seg = one_hot(torch.randint(0, 7, (batch, size, size)), 7).to(device)
    real = (torch.rand(batch, 3, size, size) * 2 - 1).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with amp:
            mu, logvar = E(real)
            fake = G(seg, reparameterize(mu.float(), logvar.float()))
            pf, pr = D(fake, seg), D(real, seg)
        loss = hinge_g_loss(pf) + 10 * feature_matching_loss(pr, pf) + 10 * vgg(fake.float(), real)
        loss = loss + 0.05 * kl_divergence(mu.float(), logvar.float())
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        with amp:
            ld = hinge_d_loss(D(real, seg), D(fake.detach(), seg))
        opt_d.zero_grad()
        ld.float().backward()
        opt_d.step()

    step()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps / (time.perf_counter() - t0)


def generate_rate(size: int, ngf: int, device: torch.device, images: int) -> float:
    G = SPADEGenerator(7, size, ngf).to(device).eval()
    seg = one_hot(torch.randint(0, 7, (8, size, size)), 7).to(device)
    z = torch.randn(8, 256, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), amp:
        G(seg, z)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(max(1, images // 8)):
            G(seg, z)
        _sync(device)
    return max(1, images // 8) * 8 / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ngf", type=int, default=16)
    p.add_argument("--steps", type=int, default=0, help="timed steps (default: 3 on CPU, 50 on GPU)")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (50 if device.type == "cuda" else 3)
    result = {
        "benchmark": "gaugan",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "size": args.size,
        "batch": args.batch,
        "ngf": args.ngf,
        "train_steps_per_s": round(train_rate(args.size, args.batch, args.ngf, device, steps), 4),
        "generate_images_per_s": round(
            generate_rate(args.size, args.ngf, device, 64 if device.type == "cpu" else 2048), 2
        ),
    }
    result["train_images_per_s"] = round(result["train_steps_per_s"] * args.batch, 3)
    print(json.dumps(result, indent=1))
    out = HERE / "results" / f"gaugan-{device.type}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
