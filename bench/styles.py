"""Benchmark: style rendering at 512x512 on this machine (CPU, or a GPU when present).

    .venv/bin/python -m bench.styles [--gatys-epochs 100]

1. Posterisation: the vectorised batch operation against the seed's per-pixel Python loop
   (the loop on one 128x128 image, scaled per pixel; the vectorised version on a batch of
   16 images at 512x512). Goal: at least 1000x.
2. Gatys at 512x512 (L-BFGS, the MXNet example's options, stop-eps 0.005 checked from
   epoch 10, at most ``--gatys-epochs``): seconds per image. Goal on 2 CPU cores: <= 5 min.
3. Fast style (the default transformer, johnson-fast, random weights: the cost does not depend
   on them): images/s at 512x512 in one process on the same threads as Gatys, and its ratio
   to Gatys. Goal: >= 100x. Also johnson-small (reflection padding, 9x9 outer kernels) for
   comparison.
4. NPR styles: images/s at 512x512, one process.

Writes ``bench/results/styles-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gatys-epochs", type=int, default=100)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    from models.registry import create
    from tasks.fast_style import FastStyleOptions, apply_fast_style
    from tasks.neural_style import StyleOptions, stylize
    from tasks.npr import NPR_STYLES, npr, posterize_classes, posterize_loop
    from tasks.synth import draw_portrait

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images = np.stack([draw_portrait(41, i, args.size).image for i in range(16)])
    small = images[0][:128, :128]
    t0 = time.perf_counter()
    posterize_loop(small, 3)
    loop_px_s = small.shape[0] * small.shape[1] / (time.perf_counter() - t0)
    posterize_classes(images, 3)
    t0 = time.perf_counter()
    for _ in range(5):
        posterize_classes(images, 3)
    vec_px_s = 5 * images.shape[0] * images.shape[1] * images.shape[2] / (time.perf_counter() - t0)

    npr_rates = {}
    for style in NPR_STYLES:
        t0 = time.perf_counter()
        for img in images[:8]:
            npr(img, style)
        npr_rates[style] = round(8 / (time.perf_counter() - t0), 2)

    fast_rates = {}
    for name in dict.fromkeys([FastStyleOptions().model, "johnson-small"]):
        net = create("style", name).to(device).eval()
        apply_fast_style(net, images[:2], device)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            apply_fast_style(net, images, device, batch=8)
            best = min(best, time.perf_counter() - t0)
        fast_rates[name] = round(len(images) / best, 3)
    fast_rate = fast_rates[FastStyleOptions().model]

    style = np.asarray(draw_portrait(42, 0, args.size).image)
    opts = StyleOptions(max_num_epochs=args.gatys_epochs, save_epochs=0, device=device.type)
    _, meta = stylize(images[0], style, opts)
    gatys_s = meta["seconds"]
    result = {
        "benchmark": "styles",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "size": args.size,
        "posterize_loop_pixels_per_s": round(loop_px_s),
        "posterize_vectorised_pixels_per_s": round(vec_px_s),
        "posterize_ratio": round(vec_px_s / loop_px_s),
        "npr_images_per_s": npr_rates,
        "fast_style_model": FastStyleOptions().model,
        "fast_style_images_per_s": round(fast_rate, 3),
        "fast_style_images_per_s_by_model": fast_rates,
        "gatys_seconds_per_image": gatys_s,
        "gatys_epochs": meta["epochs"],
        "gatys_stopped_by": meta["stopped"],
        "gatys_bf16": meta["bf16"],
        "fast_vs_gatys_ratio": round(fast_rate * gatys_s, 1),
    }
    print(json.dumps(result, indent=1))
    (HERE / "results" / f"styles-{device.type}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
