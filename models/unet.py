"""U-Net segmenter: a MobileNetV2 encoder and a decoder of upsample + conv blocks.

The decoder upsamples (bilinear) and convolves instead of using transposed convolutions,
which leave checkerboard noise in the masks. Skips come from the encoder at strides 2, 4,
8 and 16; the bottleneck is stride 32, so inputs must be multiples of 32 on each side.

Contract of :class:`UNet.forward`: ``(N, 3, H, W)`` float RGB in [0, 1] (ImageNet
normalisation happens inside), H and W multiples of 32; returns ``(N, num_classes, H, W)``
logits.

Order, as in every model file: blocks, model, checkpoint conversion, named configs,
factory.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from models.registry import register

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (index after which the feature is taken, its stride) in torchvision's mobilenet_v2.features
SKIPS = ((1, 2), (3, 4), (6, 8), (13, 16), (17, 32))


# -- blocks ----------------------------------------------------------------------------------
class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each with batch norm and ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample x2, concatenate the skip, convolve."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBlock(cin + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


# -- model -----------------------------------------------------------------------------------
class UNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        width_mult: float = 1.0,
        decoder_channels: tuple[int, ...] = (96, 64, 48, 32, 24),
        encoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        from torchvision.models import mobilenet_v2

        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, not {num_classes}")
        if len(decoder_channels) != len(SKIPS):
            raise ValueError(f"decoder_channels needs {len(SKIPS)} entries")
        backbone = mobilenet_v2(weights=None, width_mult=width_mult)
        if encoder_weights:
            load_imagenet_encoder(backbone, encoder_weights)
        self.encoder = backbone.features[: SKIPS[-1][0] + 1]
        chans = self._skip_channels()
        ups, cin = [], chans[-1]
        skip_chans = [*chans[-2::-1], 0]  # strides 16, 8, 4, 2, then full resolution (no skip)
        for cskip, cout in zip(skip_chans, decoder_channels, strict=True):
            ups.append(UpBlock(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(ups)
        self.head = nn.Conv2d(cin, num_classes, 1)
        self.num_classes = num_classes
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _skip_channels(self) -> list[int]:
        with torch.no_grad():
            feats = self._encode(torch.zeros(1, 3, 64, 64))
        return [f.shape[1] for f in feats]

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats, take = [], {i for i, _ in SKIPS}
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in take:
                feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) RGB, got {tuple(x.shape)}")
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        feats = self._encode((x - self.mean) / self.std)
        y = feats[-1]
        for up, skip in zip(self.decoder, [*feats[-2::-1], None], strict=True):
            y = up(y, skip)
        return self.head(y)


# -- checkpoint conversion -------------------------------------------------------------------
def load_imagenet_encoder(backbone: nn.Module, path: str) -> None:
    """Load ImageNet weights of torchvision's mobilenet_v2 from a local file into ``backbone``.

    Accepts safetensors or a torch state dict (``weights_only=True``: nothing in the file
    is executed). The classifier is dropped; every feature weight must match.
    """
    state: dict[str, torch.Tensor]
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {}
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise ValueError(f"{path} holds no mobilenet_v2 'features.*' weights")
    missing, unexpected = backbone.load_state_dict(features, strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit mobilenet_v2: missing {missing[:3]}, unexpected {unexpected[:3]}")
    log.info("loaded ImageNet encoder weights from %s", path)


# -- named configs and factory ----------------------------------------------------------------
@register("segmenter", "unet-mobilenetv2")
def unet_mobilenetv2(num_classes: int, encoder_weights: str | None = None, **kw: object) -> UNet:
    return UNet(num_classes, width_mult=1.0, encoder_weights=encoder_weights, **kw)  # type: ignore[arg-type]


@register("segmenter", "unet-mobilenetv2-small")
def unet_mobilenetv2_small(num_classes: int, encoder_weights: str | None = None, **kw: object) -> UNet:
    """Half-width encoder and a lighter decoder: for CPU training and fast bulk inference."""
    if encoder_weights:
        raise ValueError("ImageNet weights exist for the full-width encoder only: use unet-mobilenetv2")
    return UNet(num_classes, width_mult=0.5, decoder_channels=(64, 48, 32, 24, 16), **kw)  # type: ignore[arg-type]
