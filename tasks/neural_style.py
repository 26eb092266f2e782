"""Gatys et al. neural style, with the options of the MXNet neural-art example.

The image is optimised so that its VGG19 relu4_2 features match the content image's and
the Gram matrices of relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 match the style
image's. Loss: ``content_weight * content + style_weight * style + tv_weight * TV`` where
``content`` is the mean squared feature difference, ``style`` the sum over layers of the
mean squared difference of Gram matrices normalised by ``C * H * W`` and scaled by
``STYLE_SCALE`` (so that the example's 10:1 weighting stylises visibly), and TV the mean
absolute difference of neighbouring pixels.

Options as in the MXNet example: ``content_weight`` 10, ``style_weight`` 1, ``stop_eps``
0.005 (stop when ``|x_new - x_old| / |x_new|`` falls below it, checked from epoch 10 on:
L-BFGS starts with tiny steps), ``max_num_epochs`` 1000,
``max_long_edge`` 512, ``lr``, ``remove_noise`` (a TV denoising of the result, of this
strength), ``save_epochs`` 50 (intermediate images). Added: ``tv_weight``, ``init``
content or noise, ``optimizer`` lbfgs (default; one epoch = one L-BFGS iteration), adam or
sgd, ``pool`` max or avg (the example's option), bf16 autocast where the hardware has it.

VGG19 ImageNet weights load from a local file (``vgg_weights``); without one, fixed-seed
random VGG features are used, logged loudly and recorded in the output's metadata.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

log = logging.getLogger(__name__)

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"
STYLE_SCALE = 1e4
MIN_EPOCHS = 10  # L-BFGS's first steps are tiny by design: stop_eps is checked from here on


class StyleOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    content_weight: float = Field(10.0, ge=0, description="weight of the VGG19 relu4_2 content loss")
    style_weight: float = Field(1.0, ge=0, description="weight of the Gram-matrix style loss")
    tv_weight: float = Field(1e-2, ge=0, description="weight of the total-variation loss")
    stop_eps: float = Field(0.005, ge=0, description="stop when the relative change of the image falls below this")
    max_num_epochs: int = Field(1000, ge=1, description="optimisation epochs at most (one L-BFGS iteration each)")
    max_long_edge: int = Field(512, ge=16, description="resize so the longer side is at most this")
    lr: float | None = Field(None, gt=0, description="default: 1 for lbfgs, 0.02 for adam, 10 for sgd")
    remove_noise: float = Field(0.2, ge=0, description="strength of the final TV denoising (0: none)")
    save_epochs: int = Field(50, ge=0, description="write an intermediate image every N epochs (0: none)")
    init: Literal["content", "noise"] = Field("content", description="start from the content image or from noise")
    optimizer: Literal["lbfgs", "adam", "sgd"] = Field("lbfgs", description="lbfgs, adam or sgd")
    pool: Literal["max", "avg"] = Field("max", description="VGG19's pooling: max, or avg (the example's option)")
    vgg_weights: str | None = Field(
        None, description="local file with ImageNet VGG19 weights (default: fixed-seed random features)"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 where the hardware has it")
    seed: int = Field(0, description="seed of the noise init")
    device: str = "auto"

    def learning_rate(self) -> float:
        return self.lr or {"lbfgs": 1.0, "adam": 0.02, "sgd": 10.0}[self.optimizer]


def gram(f: torch.Tensor) -> torch.Tensor:
    n, c, h, w = f.shape
    x = f.reshape(n, c, h * w)
    return torch.bmm(x, x.transpose(1, 2)) / (c * h * w)


def tv(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute neighbour differences) of a unit ``(N, 3, H, W)`` float32 image."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def fit_long_edge(image: np.ndarray, max_long_edge: int) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 in 0..255 -> the same, Lanczos-shrunk so its long edge is at most ``max_long_edge``."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(1.0, max_long_edge / max(h, w))
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def tv_denoise(image: torch.Tensor, strength: float, steps: int = 50) -> torch.Tensor:
    """Minimise ``|u - f|^2 / 2 + strength * TV(u)`` by gradient descent (smoothed TV).

    Unit ``(N, 3, H, W)`` float32 in [0, 1] in and out (clamped; returned as is when ``strength`` <= 0).
    """
    if strength <= 0:
        return image
    f = image.detach()
    u = f.clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=0.01)
    for _ in range(steps):
        dy = u[..., 1:, :] - u[..., :-1, :]
        dx = u[..., :, 1:] - u[..., :, :-1]
        smooth_tv = torch.sqrt(dy[..., :, :-1] ** 2 + dx[..., :-1, :] ** 2 + 1e-6).mean()
        loss = 0.5 * ((u - f) ** 2).mean() + strength * 0.05 * smooth_tv
        opt.zero_grad()
        loss.backward()
        opt.step()
    return u.detach().clamp(0, 1)


def stylize(
    content: np.ndarray,
    style: np.ndarray,
    opts: StyleOptions,
    on_save: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Gatys et al. on ``content`` with ``style`` (RGB uint8); returns the image and its metadata.

    ``content``, ``style``: RGB ``(H, W, 3)`` uint8 in 0..255; the result (and what ``on_save`` gets) is RGB
    ``(h, w, 3)`` uint8 in 0..255 at ``content``'s size after :func:`fit_long_edge`.
    """
    from models.vgg import VGGFeatures
    from tasks.pseudolabel import use_bf16
    from tasks.segment import pick_device

    device = pick_device(opts.device)
    content = fit_long_edge(content, opts.max_long_edge)
    h, w = content.shape[:2]
    style = fit_long_edge(style, max(h, w))
    vgg = VGGFeatures("vgg19", (*STYLE_LAYERS, CONTENT_LAYER), opts.vgg_weights, pool=opts.pool).to(device)
    bf16 = use_bf16(opts.precision, device)

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return [f.float() for f in vgg(x)]

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float().div(255).contiguous().to(device)

    c_img, s_img = to_tensor(content), to_tensor(style)
    with torch.no_grad():
        target_content = features(c_img)[-1]
        target_grams = [gram(f) for f in features(s_img)[: len(STYLE_LAYERS)]]
    if opts.init == "content":
        x = c_img.clone()
    else:
        g = torch.Generator().manual_seed(opts.seed)
        x = torch.rand(c_img.shape, generator=g).to(device)
    x.requires_grad_(True)
    lr = opts.learning_rate()
    if opts.optimizer == "lbfgs":
        optimizer: torch.optim.Optimizer = torch.optim.LBFGS([x], lr=lr, max_iter=1, history_size=50)
    elif opts.optimizer == "adam":
        optimizer = torch.optim.Adam([x], lr=lr)
    else:
        optimizer = torch.optim.SGD([x], lr=lr, momentum=0.9)
    last: dict[str, float] = {}

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        feats = features(x)
        l_content = F.mse_loss(feats[-1], target_content)
        l_style = STYLE_SCALE * sum(F.mse_loss(gram(f), t) for f, t in zip(feats[:-1], target_grams, strict=True))
        loss = opts.content_weight * l_content + opts.style_weight * l_style + opts.tv_weight * tv(x)
        loss.backward()
        last.update(
            loss=float(loss.detach()), content=float(l_content.detach()), style=float(torch.as_tensor(l_style).detach())
        )
        return loss

    t0 = time.perf_counter()
    epoch, eps = 0, float("inf")
    history = []
    for epoch in range(1, opts.max_num_epochs + 1):
        old = x.detach().clone()
        optimizer.step(closure)  # type: ignore[arg-type]
        with torch.no_grad():
            x.clamp_(0, 1)
            eps = float((x - old).norm() / x.norm().clamp(min=1e-8))
        history.append({"epoch": epoch, **{k: round(v, 6) for k, v in last.items()}, "eps": round(eps, 6)})
        if opts.save_epochs and epoch % opts.save_epochs == 0 and on_save:
            on_save(epoch, _to_uint8(x))
        if eps < opts.stop_eps and epoch >= MIN_EPOCHS:
            break
    result = tv_denoise(x.detach(), opts.remove_noise)
    meta = {
        "method": "gatys",
        "options": opts.model_dump(),
        "vgg": vgg.source,
        "epochs": epoch,
        "final_eps": round(eps, 6),
        "stopped": "stop_eps" if eps < opts.stop_eps and epoch >= MIN_EPOCHS else "max_num_epochs",
        "seconds": round(time.perf_counter() - t0, 2),
        "size": [h, w],
        "bf16": bf16,
        "loss": history[-1] if history else {},
    }
    return _to_uint8(result), meta


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def png_with_metadata(image: np.ndarray, meta: dict[str, Any]) -> bytes:
    """PNG bytes of RGB ``(H, W, 3)`` uint8 ``image`` with ``meta`` as JSON in a ``mangaka`` text chunk."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("mangaka", json.dumps(meta))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
