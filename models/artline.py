"""ArtLine-style line-art network: a U-Net with spectral norm and self-attention in the decoder.

After ArtLine (Vijish Madhavan), which trains fastai's ``unet_learner`` (ResNet encoder,
``self_attention=True``, ``norm_type=NormType.Spectral``, ``blur=True``) with a VGG16
feature loss and no GAN. Here:

- encoder: residual stages of 3x3 convolutions with batch norm, halving the side four
  times (stride 16), widths ``base * (1, 2, 4, 8, 16)``;
- decoder: per level, a PixelShuffle x2 initialised with ICNR (so it starts as nearest
  upsampling) followed by a blur (replication pad + 2x2 average pool): no checkerboard
  artefacts; then the encoder's skip is concatenated and two spectral-norm 3x3
  convolutions follow;
- a SAGAN self-attention block (Zhang et al. 2019) after the decoder level at stride 8
  (where fastai puts it);
- a 1x1 head to one channel, added to 1 (blank paper): 1 = paper, 0 = ink. No sigmoid:
  with 97% of pixels paper, a sigmoid saturates at "all paper" early and stops learning;
  the output is linear and callers clamp it to [0, 1].

Contract: ``(N, 3, H, W)`` float RGB in [0, 1], H and W multiples of 16; returns
``(N, 1, H, W)``, about [0, 1] (unclamped).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from models.registry import register


# -- blocks ----------------------------------------------------------------------------------
class ResStage(nn.Module):
    """Downsampling residual stage: strided conv, then a residual pair of 3x3 convs."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return F.relu(x + self.body(x))


def icnr_(weight: torch.Tensor, scale: int = 2) -> None:
    """ICNR init (Aitken et al. 2017): every sub-pixel starts equal, i.e. nearest upsampling."""
    out_c, in_c, kh, kw = weight.shape
    sub = torch.empty(out_c // scale**2, in_c, kh, kw)
    nn.init.kaiming_normal_(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(scale**2, dim=0))


class PixelShuffleBlur(nn.Module):
    """x2 upsampling: conv to 4x channels (ICNR), PixelShuffle, ReLU, then a 2x2 blur."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        conv = nn.Conv2d(cin, cout * 4, 1)
        icnr_(conv.weight)
        nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        self.conv = spectral_norm(conv)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.shuffle(self.conv(x)))
        return F.avg_pool2d(F.pad(x, (1, 0, 1, 0), mode="replicate"), 2, stride=1)


class SelfAttention(nn.Module):
    """SAGAN self-attention: ``x + gamma * attention(x)``, gamma starting at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query = spectral_norm(nn.Conv1d(channels, inner, 1, bias=False))
        self.key = spectral_norm(nn.Conv1d(channels, inner, 1, bias=False))
        self.value = spectral_norm(nn.Conv1d(channels, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.view(n, c, h * w)
        q, k, v = self.query(flat), self.key(flat), self.value(flat)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=1)  # (N, HW, HW)
        out = torch.bmm(v, attn)
        return x + self.gamma * out.view(n, c, h, w)


class UpBlock(nn.Module):
    """Upsample, concatenate the skip, two spectral-norm 3x3 convolutions."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.up = PixelShuffleBlur(cin, cin // 2)
        self.bn = nn.BatchNorm2d(cskip)
        c = cin // 2 + cskip
        self.conv1 = spectral_norm(nn.Conv2d(c, cout, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(cout, cout, 3, padding=1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.up(x), self.bn(skip)], dim=1)
        return F.relu(self.conv2(F.relu(self.conv1(x))))


# -- model -----------------------------------------------------------------------------------
class ArtLineUNet(nn.Module):
    """RGB in [0, 1] -> line drawing, about [0, 1] (1 paper, 0 ink); sides multiples of 16."""

    def __init__(self, base: int = 16, attention: bool = True) -> None:
        super().__init__()
        w = [base * m for m in (1, 2, 4, 8, 16)]
        self.stem = ResStage(3, w[0], 1)
        self.enc = nn.ModuleList(ResStage(w[i], w[i + 1], 2) for i in range(4))
        self.middle = nn.Sequential(nn.Conv2d(w[4], w[4], 3, padding=1), nn.ReLU())
        self.dec = nn.ModuleList(UpBlock(w[i + 1], w[i], w[i]) for i in reversed(range(4)))
        self.attention = SelfAttention(w[3]) if attention else None  # after the stride-8 decoder level
        self.head = nn.Sequential(nn.Conv2d(w[0] + 3, w[0], 3, padding=1), nn.ReLU(), nn.Conv2d(w[0], 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError(f"expected RGB input (N, 3, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 16 or x.shape[3] % 16:
            raise ValueError(f"input sides must be multiples of 16, got {tuple(x.shape[2:])}")
        skips = [self.stem(x)]
        for stage in self.enc:
            skips.append(stage(skips[-1]))
        y = self.middle(skips[-1])
        for k, block in enumerate(self.dec):
            y = block(y, skips[3 - k])
            if k == 0 and self.attention is not None:
                y = self.attention(y)
        return 1 + self.head(torch.cat([y, x], dim=1))


@register("lineart", "artline-unet")
def artline_unet(**kwargs: object) -> ArtLineUNet:
    return ArtLineUNet(**kwargs)  # type: ignore[arg-type]


@register("lineart", "artline-unet-small")
def artline_unet_small(**kwargs: object) -> ArtLineUNet:
    return ArtLineUNet(base=8, **kwargs)  # type: ignore[arg-type]
