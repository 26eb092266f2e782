"""Does GauGAN follow the style it is given? Region colours in CIELAB, measured three ways.

Semantic mIoU says whether the masks are followed; these say whether the style is:

- **style fidelity**, per class region (hair, skin, clothes, background): each held-out mask
  is generated with the latent of another held-out image (its reference, the encoder's
  mean); the Lab distance between the generated region's mean colour and the reference's
  is set against its mean distance to every other held-out image's region. A ratio well
  below 1 means the reference's colours are taken; a generator that ignores its latent
  scores about 1.
- **latent sensitivity**: for one mask, the mean pairwise Lab distance of the region
  colours across random latents, beside the same spread over the real held-out images
  (what a generator that renders the data's variety would reach) and the spread of one
  latent over the mask and its mirror image, mirrored back (what changes without a new
  latent: the baseline).
- **attribute effect**: along the interpolation strip of a hair-colour direction
  (strength 0 .. S), the hair's mean colour and its Lab distance to that colour's
  reference swatch at each step: it should fall, step after step.

Colours are means of CIELAB (D65) over the region's pixels; regions of fewer than
``MIN_PIXELS`` pixels are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

STYLE_CLASSES = ("hair", "skin", "clothes", "background")
MIN_PIXELS = 32
_D65 = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB ``(..., 3)`` in 0..255 (uint8 or float) -> CIELAB ``(..., 3)`` float64 (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB_TO_XYZ.T / _D65
    eps = 216 / 24389
    f = np.where(xyz > eps, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def region_colours(images: np.ndarray, masks: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Mean Lab colour of each class region: ``(N, K, 3)``, NaN where a region is too small.

    ``images``: RGB ``(N, H, W, 3)`` uint8; ``masks``: ``(N, H, W)`` class ids (255 = ignore).
    """
    lab = srgb_to_lab(images)
    out = np.full((len(images), len(class_ids), 3), np.nan)
    for n in range(len(images)):
        for k, c in enumerate(class_ids):
            inside = masks[n] == c
            if int(inside.sum()) >= MIN_PIXELS:
                out[n, k] = lab[n][inside].mean(0)
    return out


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIE76 colour difference of Lab colours (broadcasting; NaN where either is NaN)."""
    return np.sqrt(((a - b) ** 2).sum(-1))


def fidelity_ratios(generated: np.ndarray, references: np.ndarray, ref_index: Sequence[int]) -> dict[str, Any]:
    """Per class: distance to the own reference over the mean distance to the other references.

    ``generated``: ``(N, K, 3)`` region colours of the generated images; ``references``:
    ``(R, K, 3)`` of the reference images; ``ref_index[n]``: the reference image ``n`` was styled by.
    Returns ``{"own": [K], "other": [K], "ratio": [K], "pairs": [K]}`` (NaN where nothing was comparable).
    """
    k_count = generated.shape[1]
    own, other, ratio, count = [], [], [], []
    for k in range(k_count):
        d_own, d_other = [], []
        for n, r in enumerate(ref_index):
            g = generated[n, k]
            if np.isnan(g).any() or np.isnan(references[r, k]).any():
                continue
            rest = [j for j in range(len(references)) if j != r and not np.isnan(references[j, k]).any()]
            if not rest:
                continue
            d_own.append(float(delta_e(g, references[r, k])))
            d_other.append(float(np.mean(delta_e(g[None], references[rest, k]))))
        mo = float(np.mean(d_own)) if d_own else float("nan")
        mx = float(np.mean(d_other)) if d_other else float("nan")
        own.append(mo)
        other.append(mx)
        ratio.append(mo / mx if d_own and mx > 0 else float("nan"))
        count.append(len(d_own))
    return {"own": own, "other": other, "ratio": ratio, "pairs": count}


def pairwise_spread(colours: np.ndarray) -> list[float]:
    """Mean pairwise Lab distance over axis 1 of ``(G, M, K, 3)`` colours (G groups of M), per class K."""
    out = []
    for k in range(colours.shape[2]):
        ds = []
        for grp in colours[:, :, k]:
            valid = grp[~np.isnan(grp).any(-1)]
            for i in range(len(valid)):
                for j in range(i + 1, len(valid)):
                    ds.append(float(delta_e(valid[i], valid[j])))
        out.append(float(np.mean(ds)) if ds else float("nan"))
    return out


def monotone_share(values: Sequence[float], tolerance: float = 0.0) -> float:
    """The share of consecutive steps in which ``values`` fall (by more than ``-tolerance``)."""
    steps = np.diff(np.asarray(values, dtype=np.float64))
    return float((steps <= tolerance).mean()) if len(steps) else float("nan")


def _rounded(values: Sequence[float], nd: int = 3) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), nd) for v in values]


def style_metrics(
    generate: Any,
    encode: Any,
    real: np.ndarray,
    masks: np.ndarray,
    classes: Sequence[str],
    z_dim: int,
    latents: int = 4,
    spread_masks: int = 8,
    seed: int = 0,
    sample: Any = None,
) -> dict[str, Any]:
    """Style fidelity and latent sensitivity on held-out (image, mask) pairs.

    ``generate(masks (N, S, S) int64, z (N, z_dim)) -> RGB (N, S, S, 3) uint8`` and
    ``encode(real (N, S, S, 3) uint8, masks (N, S, S)) -> (N, z_dim)`` wrap the trained networks; ``real``:
    RGB ``(N, S, S, 3)`` uint8, ``masks``: ``(N, S, S)`` class ids; ``sample(noise) -> z`` turns
    standard normal noise into the generator's random latents (default: the noise itself).
    """
    names = [c for c in STYLE_CLASSES if c in classes]
    ids = [list(classes).index(c) for c in names]
    n = len(real)
    if n < 2:
        raise ValueError(f"style metrics need at least 2 held-out pairs, not {n}")
    m = torch.from_numpy(np.ascontiguousarray(masks)).long()
    mu = encode(real, masks)
    ref_index = [(i + 1) % n for i in range(n)]
    styled = generate(m, mu[ref_index])
    ref_colours = region_colours(real, masks, ids)
    fid = fidelity_ratios(region_colours(styled, masks, ids), ref_colours, ref_index)
    # latent sensitivity: `latents` random latents per mask, and the mirror baseline
    k = min(spread_masks, n)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, latents, z_dim, generator=g)
    if sample is not None:
        z = sample(z.reshape(k * latents, z_dim)).reshape(k, latents, z_dim)
    many = generate(m[:k].repeat_interleave(latents, 0), z.reshape(k * latents, z_dim))
    many_colours = region_colours(many, masks[:k].repeat(latents, 0), ids).reshape(k, latents, len(ids), 3)
    z1 = z[:, 0]
    mirrored = generate(m[:k].flip(-1), z1)[:, :, ::-1]
    base = np.stack([region_colours(many[::latents], masks[:k], ids), region_colours(mirrored, masks[:k], ids)], 1)
    spread = pairwise_spread(many_colours)
    real_spread = pairwise_spread(ref_colours[None])
    baseline = pairwise_spread(base)
    return {
        "classes": names,
        "style_fidelity": dict(zip(names, _rounded(fid["ratio"]), strict=True)),
        "style_distance_own": dict(zip(names, _rounded(fid["own"], 2), strict=True)),
        "style_distance_other": dict(zip(names, _rounded(fid["other"], 2), strict=True)),
        "latent_spread": dict(zip(names, _rounded(spread, 2), strict=True)),
        "latent_spread_baseline": dict(zip(names, _rounded(baseline, 2), strict=True)),
        "real_spread": dict(zip(names, _rounded(real_spread, 2), strict=True)),
        "style_images": n,
        "spread_masks": k,
        "latents": latents,
    }


def attribute_metrics(
    generate: Any,
    masks: np.ndarray,
    z: torch.Tensor,
    direction: torch.Tensor,
    hair_id: int,
    target_rgb: Sequence[int],
    strength: float,
    steps: int = 6,
) -> dict[str, Any]:
    """The hair colour along ``z + a * direction`` for a in ``linspace(0, strength, steps)``.

    ``masks``: ``(N, S, S)`` class ids; ``z``: ``(N, z_dim)``; ``target_rgb``: the colour the
    direction stands for. Returns the mean Lab distance of the hair to it at every step, the
    share of steps in which it falls, and the hair's mean Lab colour at every step.
    """
    alphas = np.linspace(0, strength, steps)
    m = torch.from_numpy(np.ascontiguousarray(masks)).long()
    target = srgb_to_lab(np.asarray(target_rgb, dtype=np.float64))
    per_step, colours = [], []
    for a in alphas:
        imgs = generate(m, z + float(a) * direction)
        hair = region_colours(imgs, masks, [hair_id])[:, 0]
        valid = hair[~np.isnan(hair).any(-1)]
        per_step.append(float(np.mean(delta_e(valid, target[None]))) if len(valid) else float("nan"))
        colours.append(valid.mean(0).tolist() if len(valid) else [float("nan")] * 3)
    return {
        "strengths": [round(float(a), 3) for a in alphas],
        "distance_to_target": _rounded(per_step, 2),
        "falling_share": round(monotone_share(per_step), 3),
        "moved": round(per_step[0] - per_step[-1], 2) if not np.isnan(per_step[0] - per_step[-1]) else None,
        "hair_lab": [_rounded(c, 1) for c in colours],
        "masks": len(masks),
    }


def evaluation_lines(r: dict[str, Any]) -> list[str]:
    """eval-gaugan's result as lines of text: semantic consistency, style fidelity, latent, attribute."""
    lines = [
        f"{r['checkpoint']}: semantic mIoU {r['semantic_miou']:.4f}, pixel accuracy {r['pixel_accuracy']:.4f} "
        f"on {r['images']} held-out masks (real images: {r['real']['semantic_miou']:.4f} / "
        f"{r['real']['pixel_accuracy']:.4f})"
    ]
    style = r.get("style")
    if style:
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in style["style_fidelity"].items() if v is not None)
        lines.append(
            f"style fidelity (Lab distance to the reference's region colour over that to the other references; "
            f"1 = style ignored) on {style['style_images']} held-out masks: {ratios}"
        )
        spread = ", ".join(
            f"{k} {v:.1f} (fixed latent {style['latent_spread_baseline'][k]:.1f}, real images "
            f"{style['real_spread'][k]:.1f})"
            for k, v in style["latent_spread"].items()
            if v is not None and style["latent_spread_baseline"][k] is not None and style["real_spread"][k] is not None
        )
        lines.append(f"latent sensitivity (mean Lab distance across {style['latents']} latents, one mask): {spread}")
    a = r.get("attribute_effect")
    if a:
        trace = " > ".join(f"{d:.1f}" for d in a["distance_to_target"] if d is not None)
        lines.append(
            f"attribute {a['attribute']} at strengths {a['strengths'][0]:g}..{a['strengths'][-1]:g}: the hair's Lab "
            f"distance to the colour {trace}; falling in {a['falling_share']:.0%} of the steps"
        )
    return lines
