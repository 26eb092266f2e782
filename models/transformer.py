"""Johnson et al. (2016) feed-forward style transformer, with upsampling instead of deconvolution.

Three convolutions down (9x9 stride 1, then two 3x3 stride 2), ``n_res`` residual blocks,
two nearest-upsample + 3x3 convolutions up (no transposed convolutions: no checkerboards,
as Odena et al. 2016 recommend), a 9x9 convolution to RGB. Instance norm throughout
(Ulyanov et al.), reflection padding. Input and output: RGB in [0, 1], any side that is a
multiple of 4.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.registry import register


class ConvLayer(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, relu: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(kernel // 2),
            nn.Conv2d(cin, cout, kernel, stride=stride),
            nn.InstanceNorm2d(cout, affine=True),
        ]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvLayer(channels, channels, 3), ConvLayer(channels, channels, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StyleTransformer(nn.Module):
    """Image -> stylised image, both RGB in [0, 1]."""

    def __init__(self, width: int = 32, n_res: int = 5) -> None:
        super().__init__()
        w = width
        self.down = nn.Sequential(ConvLayer(3, w, 9), ConvLayer(w, 2 * w, 3, 2), ConvLayer(2 * w, 4 * w, 3, 2))
        self.res = nn.Sequential(*(Residual(4 * w) for _ in range(n_res)))
        self.up1 = ConvLayer(4 * w, 2 * w, 3)
        self.up2 = ConvLayer(2 * w, w, 3)
        self.out = nn.Sequential(nn.ReflectionPad2d(4), nn.Conv2d(w, 3, 9))

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
