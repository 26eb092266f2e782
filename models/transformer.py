"""Johnson et al. (2016) feed-forward style transformer, with upsampling instead of deconvolution.

Three convolutions down (9x9 stride 1, then two 3x3 stride 2), ``n_res`` residual blocks,
two nearest-upsample + 3x3 convolutions up (no transposed convolutions: no checkerboards,
as Odena et al. 2016 recommend), a 9x9 convolution to RGB. Instance norm throughout
(Ulyanov et al.). Input and output: RGB in [0, 1], any side that is a multiple of 4.

Padding is ``reflect`` (the paper's) or ``zeros``. On CPUs reflection padding is a separate
copy of every activation (and a layout conversion under channels-last): it took about 70%
of the forward time of ``johnson-small`` at 512 px, while zero padding runs inside the
convolution. ``johnson-fast`` (the default for bulk rendering) therefore pads with zeros and
uses 5x5 outer convolutions: the two full-resolution 9x9 convolutions were 40% of the
remaining cost. Each variant is trained with its own padding, so the borders are learnt.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from models.registry import register

Padding = Literal["reflect", "zeros"]


def padded_conv(cin: int, cout: int, kernel: int, stride: int, padding: Padding) -> list[nn.Module]:
    """[pad, conv]: the pad is an ``Identity`` for zeros, so state-dict keys match either way."""
    if padding == "reflect":
        return [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride=stride)]
    if padding == "zeros":
        return [nn.Identity(), nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)]
    raise ValueError(f"padding must be 'reflect' or 'zeros', got {padding!r}")


class ConvLayer(nn.Sequential):
    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True, padding: Padding = "reflect"
    ) -> None:
        layers: list[nn.Module] = [
            *padded_conv(cin, cout, kernel, stride, padding),
            nn.InstanceNorm2d(cout, affine=True),
        ]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int, padding: Padding = "reflect") -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(channels, channels, 3, padding=padding),
            ConvLayer(channels, channels, 3, relu=False, padding=padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StyleTransformer(nn.Module):
    """Image -> stylised image, both RGB in [0, 1]."""

    def __init__(self, width: int = 32, n_res: int = 5, outer_kernel: int = 9, padding: Padding = "reflect") -> None:
        super().__init__()
        w, k, p = width, outer_kernel, padding
        self.down = nn.Sequential(
            ConvLayer(3, w, k, padding=p),
            ConvLayer(w, 2 * w, 3, 2, padding=p),
            ConvLayer(2 * w, 4 * w, 3, 2, padding=p),
        )
        self.res = nn.Sequential(*(Residual(4 * w, p) for _ in range(n_res)))
        self.up1 = ConvLayer(4 * w, 2 * w, 3, padding=p)
        self.up2 = ConvLayer(2 * w, w, 3, padding=p)
        self.out = nn.Sequential(*padded_conv(w, 3, k, 1, p))
        self.padding = padding

    def prefers_channels_last(self, device: torch.device) -> bool:
        """Channels-last wins on GPUs, and on CPUs only where reflection padding would otherwise
        convert layouts (measured at 512 px, bf16, 2 cores: johnson-small 4.3 vs 3.4 images/s
        channels-last vs NCHW; johnson-fast 6.7 vs 7.7)."""
        return device.type == "cuda" or self.padding == "reflect"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"input sides must be multiples of 4, got {tuple(x.shape[2:])}")
        y = self.res(self.down(x))
        y = self.up1(F.interpolate(y, scale_factor=2, mode="nearest"))
        y = self.up2(F.interpolate(y, scale_factor=2, mode="nearest"))
        return torch.sigmoid(self.out(y))


@register("style", "johnson")
def johnson(**kwargs: object) -> StyleTransformer:
    return StyleTransformer(**kwargs)  # type: ignore[arg-type]


@register("style", "johnson-small")
def johnson_small(**kwargs: object) -> StyleTransformer:
    return StyleTransformer(width=16, n_res=3, **kwargs)  # type: ignore[arg-type]


@register("style", "johnson-fast")
def johnson_fast(**kwargs: object) -> StyleTransformer:
    return StyleTransformer(width=16, n_res=3, outer_kernel=5, padding="zeros", **kwargs)  # type: ignore[arg-type]
