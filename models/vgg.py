"""VGG feature extractors for perceptual losses (GauGAN, line art, neural style).

ImageNet weights cannot be downloaded at run time: they load from a local file (a
torchvision ``vgg16``/``vgg19`` state dict as ``.safetensors``, or ``.pth`` read with
``weights_only=True``). Without one, the network is initialised from a fixed seed:
random VGG features still respond to edges, colour and texture statistics, but they are
not ImageNet's, so the fallback is logged loudly and recorded (``source``) in whatever a
caller produces with it.
"""

from __future__ import annotations

import hashlib
import io
import logging

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FALLBACK_SEED = 0

# Index in torchvision's ``features`` of each named ReLU.
RELU = {
    "vgg19": {
        "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_3": 15, "relu4_1": 20,
        "relu4_2": 22, "relu4_3": 24, "relu5_1": 29, "relu5_3": 33,
    },
    "vgg16": {
        "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_3": 15, "relu4_1": 18,
        "relu4_2": 20, "relu4_3": 22, "relu5_1": 25, "relu5_3": 29,
    },
}  # fmt: skip


def _load_state(path: str) -> tuple[dict[str, torch.Tensor], bytes]:
    """The state dict in the weights file ``path`` (local or ``s3://``) and the file's bytes."""
    from storage.location import exists_file
    from storage.sources import read_file

    if not exists_file(path):
        raise FileNotFoundError(f"VGG weights {path} do not exist")
    data = read_file(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load

        return load(data), data
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state, data


class VGGFeatures(nn.Module):
    """Frozen VGG up to the deepest of ``layers``; ``forward`` returns those ReLU outputs.

    Input: RGB in [0, 1]; ImageNet normalisation happens inside. ``pool="avg"`` swaps max
    for average pooling (Gatys et al.'s option).
    """

    def __init__(
        self, arch: str = "vgg19", layers: tuple[str, ...] = ("relu1_1",), weights: str | None = None, pool: str = "max"
    ) -> None:
        super().__init__()
        from torchvision import models

        from storage.location import url_name

        if arch not in RELU:
            raise ValueError(f"arch must be one of {sorted(RELU)}, not {arch!r}")
        unknown = [name for name in layers if name not in RELU[arch]]
        if unknown:
            raise ValueError(f"unknown VGG layers {unknown}; known: {sorted(RELU[arch])}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FALLBACK_SEED)
            net = getattr(models, arch)(weights=None)
        if weights:
            state, data = _load_state(weights)
            feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
            if not feats:
                raise ValueError(f"{weights} has no 'features.*' tensors of a torchvision {arch}")
            net.features.load_state_dict(feats)
            digest = hashlib.sha256(data).hexdigest()[:16]
            self.source = f"imagenet:{url_name(weights)}:{digest}"
        else:
            log.warning(
                "no ImageNet %s weights given: using fixed-seed random VGG features (seed %d); perceptual losses "
                "will be weaker than with ImageNet weights (pass a local weights file to use them)",
                arch,
                FALLBACK_SEED,
            )
            self.source = f"random-init:seed-{FALLBACK_SEED}"
        self.layers = tuple(layers)
        self.index = [RELU[arch][name] for name in layers]
        body = list(net.features.children())[: max(self.index) + 1]
        if pool == "avg":
            body = [nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) else m for m in body]
        elif pool != "max":
            raise ValueError(f"pool must be 'max' or 'avg', not {pool!r}")
        for i, m in enumerate(body):
            if isinstance(m, nn.ReLU):
                body[i] = nn.ReLU(inplace=False)
        self.body = nn.ModuleList(body)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        x = (x - mean) / std
        out: dict[int, torch.Tensor] = {}
        wanted = set(self.index)
        for i, m in enumerate(self.body):
            x = m(x)
            if i in wanted:
                out[i] = x
        return [out[i] for i in self.index]


class VGGLoss(nn.Module):
    """pix2pixHD/SPADE perceptual loss: weighted L1 of VGG19 relu1_1..relu5_1 features."""

    LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        self.vgg = VGGFeatures("vgg19", self.LAYERS, weights)
        self.source = self.vgg.source

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``fake`` and ``real`` in [-1, 1]."""
        fx = self.vgg((fake + 1) / 2)
        with torch.no_grad():
            rx = self.vgg((real + 1) / 2)
        return torch.as_tensor(sum(w * F.l1_loss(f, r) for w, f, r in zip(self.WEIGHTS, fx, rx, strict=True)))
