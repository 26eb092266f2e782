"""Benchmark: augmented (image, mask) samples per second at 512x512, and their alignment.

    .venv/bin/python -m bench.augment        # mangaka's OpenCV path
    (a Python with torch + torchvision)      # adds torchvision.transforms.v2 for comparison

Both pipelines draw rotation, mirror, scale/shift, perspective, an elastic warp (half the
time) and colour jitter on synthetic portraits. Alignment is the palette test: each class
painted a fixed colour, each augmented pixel classified by its nearest palette colour and
compared with the augmented mask (non-ignore pixels). One process, one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tasks.augment import AugmentOptions, augment_pair, variant_rng
from tasks.report import PALETTE
from tasks.synth import draw_portrait

HERE = Path(__file__).resolve().parent


def palette_agreement(images: list[np.ndarray], masks: list[np.ndarray]) -> float:
    pal = PALETTE[:7].astype(np.int32)
    agree = total = 0
    for img, m in zip(images, masks, strict=True):
        keep = m != 255
        nearest = ((img[..., None, :].astype(np.int32) - pal[None, None]) ** 2).sum(-1).argmin(-1)
        agree += int((nearest[keep] == m[keep]).sum())
        total += int(keep.sum())
    return agree / total


def ours(pairs: list[tuple[np.ndarray, np.ndarray]], n: int, jitter: bool = True) -> tuple[float, list, list]:
    o = AugmentOptions() if jitter else AugmentOptions(brightness=0, contrast=0, saturation=0, hue=0)
    imgs, masks = [], []
    t0 = time.perf_counter()
    for k in range(n):
        img, m = pairs[k % len(pairs)]
        a, b = augment_pair(img, m, variant_rng(0, str(k % len(pairs)), k + 1), o)
        imgs.append(a)
        masks.append(b)
    return n / (time.perf_counter() - t0), imgs, masks


def torchvision_v2(
    pairs: list[tuple[np.ndarray, np.ndarray]], n: int, jitter: bool = True, elastic: bool = True
) -> tuple[float, list, list]:
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    torch.set_num_threads(1)
    torch.manual_seed(0)
    steps = [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomAffine(
            degrees=20, translate=(0.06, 0.06), scale=(0.85, 1.2), fill={tv_tensors.Image: 255, tv_tensors.Mask: 255}
        ),
        v2.RandomPerspective(0.12, p=1.0, fill={tv_tensors.Image: 255, tv_tensors.Mask: 255}),
    ]
    if elastic:  # the same scale as mangaka's: sigma 0.06 x 512, displacement about 0.035 x 512
        fill = {tv_tensors.Image: 255, tv_tensors.Mask: 255}
        steps.append(v2.RandomApply([v2.ElasticTransform(alpha=50.0, sigma=30.0, fill=fill)], p=0.5))
    if jitter:
        steps.append(v2.ColorJitter(0.2, 0.2, 0.25, 0.03))
    tf = v2.Compose(steps)
    imgs, masks = [], []
    t0 = time.perf_counter()
    for k in range(n):
        img, m = pairs[k % len(pairs)]
        ti = tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1))
        tm = tv_tensors.Mask(torch.from_numpy(m)[None])
        oi, om = tf(ti, tm)
        imgs.append(oi.permute(1, 2, 0).numpy())
        masks.append(om[0].numpy())
    return n / (time.perf_counter() - t0), imgs, masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--out", default=str(HERE / "results" / "augment.json"))
    a = ap.parse_args()
    portraits = [draw_portrait(4, i, a.size) for i in range(8)]
    real = [(p.image, p.mask) for p in portraits]
    painted = [(PALETTE[p.mask], p.mask) for p in portraits]
    result: dict[str, object] = {"size": a.size, "samples": a.count}
    rate, _, _ = ours(real, a.count)
    _, imgs, masks = ours(painted, 64, jitter=False)
    result["mangaka_opencv"] = {
        "samples_per_s": round(rate, 1),
        "palette_agreement": round(palette_agreement(imgs, masks), 4),
    }
    try:
        rate, _, _ = torchvision_v2(real, a.count)
        _, imgs, masks = torchvision_v2(painted, 64, jitter=False)
        result["torchvision_v2"] = {
            "samples_per_s": round(rate, 2),
            "palette_agreement": round(palette_agreement(imgs, masks), 4),
        }
        rate, _, _ = torchvision_v2(real, a.count, elastic=False)
        result["torchvision_v2_without_elastic"] = {"samples_per_s": round(rate, 1)}
    except ImportError:
        result["torchvision_v2"] = "not installed here"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    if result["torchvision_v2"] == "not installed here" and Path(a.out).exists():
        previous = json.loads(Path(a.out).read_text()).get("torchvision_v2")
        if isinstance(previous, dict):
            result["torchvision_v2"] = {**previous, "note": "from an earlier run with torch installed"}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
