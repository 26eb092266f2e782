"""GauGAN (SPADE): the generator, the multiscale PatchGAN discriminator, the style encoder.

Follows Park et al., "Semantic Image Synthesis with Spatially-Adaptive Normalization"
(CVPR 2019) and NVlabs' reference code, with every piece taking explicit typed arguments
(no options object) and nothing tied to a device: the same modules run on CPU and GPU,
under autocast, at any batch size.

- :class:`SPADE`: a parameter-free norm (instance norm by default: batch-size
  independent), then a shared convolution on the nearest-resized one-hot mask (``hidden``
  channels, 128 as in the paper) and two convolutions predicting gamma and beta;
  ``x_norm * (1 + gamma) + beta``.
- :class:`SPADEResBlock`: two SPADE-conv units and a learned (SPADE + 1x1) shortcut when
  the channel count changes; spectral norm on its convolutions.
- :class:`SPADEGenerator`: ``z`` (256) -> a ``16 ngf`` map of side ``size / 2**n_up`` ->
  residual blocks with nearest upsampling -> RGB in [-1, 1]; ``num_upsampling`` normal
  (5), more (6), most (7), as in the paper.
- :class:`MultiscaleDiscriminator`: ``num_d`` PatchGANs (``n_layers`` 4, spectral norm +
  instance norm) on the image + mask at successively halved scales; each returns its
  intermediate features (for the feature-matching loss) and the patch logits last.
- :class:`ConvEncoder`: stride-2 convolutions down to 4x4, then ``mu`` and ``logvar``.
- :class:`VAEDecoder`: the decoder used only to pretrain the encoder as a VAE.

Inputs: images ``(N, 3, H, W)`` in [-1, 1], masks one-hot ``(N, C, H, W)`` (see
:func:`one_hot`; ignored pixels are all-zero).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from models.registry import register

NUM_UPSAMPLING = {"normal": 5, "more": 6, "most": 7}
Upsampling = Literal["normal", "more", "most"]


def one_hot(mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """``(N, H, W)`` class ids -> ``(N, C, H, W)`` float one-hot; ``ignore_index`` -> zeros."""
    valid = mask != ignore_index
    ids = torch.where(valid, mask.long(), torch.zeros_like(mask, dtype=torch.long)).clamp(max=num_classes - 1)
    out = F.one_hot(ids, num_classes).permute(0, 3, 1, 2).float()
    return out * valid.unsqueeze(1)


def _sn(module: nn.Module, use: bool) -> nn.Module:
    return spectral_norm(module) if use else module


def _param_free_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    raise ValueError(f"param-free norm must be 'instance' or 'batch', not {kind!r}")


# -- blocks ----------------------------------------------------------------------------------
class SPADE(nn.Module):
    """Spatially-adaptive (de)normalisation of ``norm_nc`` channels by a ``label_nc`` mask.

    With ``code_dim``, a style map (every pixel carries the style code of its class region,
    as in SEAN) shifts gamma and beta per pixel (a 1x1 convolution).
    """

    def __init__(
        self,
        norm_nc: int,
        label_nc: int,
        hidden: int = 128,
        kernel_size: int = 3,
        norm: str = "instance",
        code_dim: int | None = None,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.param_free_norm = _param_free_norm(norm, norm_nc)
        self.mlp_region: nn.Conv2d | None = None
        if code_dim:  # not zero at initialisation: the encoder would get no gradient through it
            self.mlp_region = nn.Conv2d(code_dim, 2 * norm_nc, 1)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """``z``: with ``code_dim``, the style map ``(N, code_dim, H', W')``."""
        normalized = self.param_free_norm(x)
        seg = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        gamma, beta = self.mlp_gamma(actv), self.mlp_beta(actv)
        if self.mlp_region is not None and z is not None:
            style = F.interpolate(z, size=x.shape[2:], mode="nearest")
            dg, db = self.mlp_region(style).to(gamma.dtype).chunk(2, dim=1)
            gamma, beta = gamma + dg, beta + db
        return normalized * (1 + gamma) + beta


class SPADEResBlock(nn.Module):
    """SPADE -> LeakyReLU -> conv, twice, plus a shortcut (learned when ``fin != fout``)."""

    def __init__(
        self,
        fin: int,
        fout: int,
        label_nc: int,
        hidden: int = 128,
        spectral: bool = True,
        norm: str = "instance",
        code_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = _sn(nn.Conv2d(fin, fmiddle, 3, padding=1), spectral)
        self.conv_1 = _sn(nn.Conv2d(fmiddle, fout, 3, padding=1), spectral)
        self.norm_0 = SPADE(fin, label_nc, hidden, norm=norm, code_dim=code_dim)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden, norm=norm, code_dim=code_dim)
        if self.learned_shortcut:
            self.conv_s = _sn(nn.Conv2d(fin, fout, 1, bias=False), spectral)
            self.norm_s = SPADE(fin, label_nc, hidden, norm=norm, code_dim=code_dim)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg, z)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg, z), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg, z), 0.2))
        return x_s + dx


# -- networks ----------------------------------------------------------------------------------
class SPADEGenerator(nn.Module):
    """Mask + latent -> image. ``size`` must be a multiple of ``2**num_upsampling``."""

    def __init__(
        self,
        label_nc: int,
        size: int = 256,
        ngf: int = 64,
        z_dim: int = 256,
        num_upsampling: Upsampling = "normal",
        spade_hidden: int = 128,
        norm: str = "instance",
        spectral: bool = True,
        code_dim: int | None = None,
    ) -> None:
        super().__init__()
        if num_upsampling not in NUM_UPSAMPLING:
            raise ValueError(f"num_upsampling must be one of {sorted(NUM_UPSAMPLING)}, not {num_upsampling!r}")
        n_up = NUM_UPSAMPLING[num_upsampling]
        if size % 2**n_up or size < 2 ** (n_up + 1):
            raise ValueError(
                f"size {size} must be a multiple of {2**n_up}, at least {2 ** (n_up + 1)}, "
                f"for num_upsampling={num_upsampling!r}"
            )
        self.label_nc, self.size, self.z_dim, self.num_upsampling = label_nc, size, z_dim, num_upsampling
        self.code_dim = code_dim
        if code_dim and z_dim != label_nc * code_dim:
            raise ValueError(f"region styles need z_dim = {label_nc} classes x {code_dim}, not {z_dim}")
        if code_dim:  # where random latents come from: fitted to the encoded training images (fit_prior)
            self.register_buffer("latent_mean", torch.zeros(z_dim))
            self.register_buffer("latent_factor", torch.eye(z_dim))
        self.sw = size // 2**n_up
        nf = ngf

        def block(fin: int, fout: int) -> SPADEResBlock:
            return SPADEResBlock(fin, fout, label_nc, spade_hidden, spectral, norm, code_dim)

        self.fc = nn.Linear(z_dim, 16 * nf * self.sw * self.sw)
        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, nf)
        final_nc = nf
        if num_upsampling == "most":
            self.up_4 = block(nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)

    def latent_from_noise(self, eps: torch.Tensor) -> torch.Tensor:
        """A random latent from standard normal noise ``(N, z_dim)``.

        SPADE samples z from the prior N(0, I) that its KL term pulls the encoder towards.
        Region codes carry more than the KL lets through, and their encoded images lie away
        from N(0, I) (random codes paint garish regions), so a region-style generator keeps
        a Gaussian fitted to its training images' codes and draws from that.
        """
        if not self.code_dim:
            return eps
        mean, factor = self._prior()
        return mean.to(eps) + eps @ factor.to(eps).T

    def _prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean, factor = self.get_buffer("latent_mean"), self.get_buffer("latent_factor")
        return mean, factor

    @torch.no_grad()
    def fit_prior(self, latents: torch.Tensor, shrink: float = 1e-3) -> None:
        """Fit the Gaussian of :meth:`latent_from_noise` to encoded latents ``(M, z_dim)``."""
        if not self.code_dim or len(latents) < 2:
            return
        z = latents.double()
        mean = z.mean(0)
        cov = torch.cov(z.T) + shrink * torch.eye(z.shape[1], dtype=z.dtype)
        vals, vecs = torch.linalg.eigh(cov)
        own_mean, own_factor = self._prior()
        own_mean.copy_(mean.to(own_mean))
        own_factor.copy_((vecs * vals.clamp(min=0).sqrt()).to(own_factor))

    def forward(self, seg: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if seg.shape[1] != self.label_nc or seg.shape[2:] != (self.size, self.size):
            raise ValueError(
                f"masks must be one-hot ({self.label_nc}, {self.size}, {self.size}), not {tuple(seg.shape[1:])}"
            )
        if z.shape != (seg.shape[0], self.z_dim):
            raise ValueError(f"z must be ({seg.shape[0]}, {self.z_dim}), not {tuple(z.shape)}")
        up = nn.functional.interpolate
        x = self.fc(z).view(z.shape[0], -1, self.sw, self.sw)
        style: torch.Tensor | None = None
        if self.code_dim:  # every pixel carries its class's code
            style = torch.einsum("nchw,ncd->ndhw", seg, z.view(z.shape[0], self.label_nc, self.code_dim))
        x = self.head_0(x, seg, style)
        x = up(x, scale_factor=2, mode="nearest")
        x = self.G_middle_0(x, seg, style)
        if self.num_upsampling in ("more", "most"):
            x = up(x, scale_factor=2, mode="nearest")
        x = self.G_middle_1(x, seg, style)
        for name in ("up_0", "up_1", "up_2", "up_3") + (("up_4",) if self.num_upsampling == "most" else ()):
            x = up(x, scale_factor=2, mode="nearest")
            x = getattr(self, name)(x, seg, style)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


class NLayerDiscriminator(nn.Module):
    """PatchGAN: 4x4 convolutions, stride 2 but the last two; returns every layer's output."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4, spectral: bool = True) -> None:
        super().__init__()
        kw, pad = 4, 2
        nf = ndf
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(input_nc, nf, kw, stride=2, padding=pad), nn.LeakyReLU(0.2))]
        for n in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            conv = _sn(nn.Conv2d(prev, nf, kw, stride=stride, padding=pad, bias=False), spectral)
            layers.append(nn.Sequential(conv, nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)))
        layers.append(nn.Sequential(nn.Conv2d(nf, 1, kw, stride=1, padding=pad)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs on (image, mask) at full, half, quarter... resolution."""

    def __init__(self, label_nc: int, ndf: int = 64, n_layers: int = 4, num_d: int = 2, spectral: bool = True) -> None:
        super().__init__()
        self.label_nc = label_nc
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(label_nc + 3, ndf, n_layers, spectral) for _ in range(num_d)
        )

    def forward(self, image: torch.Tensor, seg: torch.Tensor) -> list[list[torch.Tensor]]:
        x = torch.cat([seg, image], dim=1)
        out = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


class ConvEncoder(nn.Module):
    """Image -> (mu, logvar) of the style latent: stride-2 convs (spectral + instance norm) to 4x4."""

    def __init__(self, size: int = 256, nef: int = 64, z_dim: int = 256, spectral: bool = True) -> None:
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ValueError(f"the encoder's size must be a power of two of at least 8, not {size}")
        self.size, self.z_dim = size, z_dim
        n = int(math.log2(size // 4))
        layers, cin = [], 3
        for i in range(n):
            cout = nef * min(2**i, 8)
            layers.append(
                nn.Sequential(
                    _sn(nn.Conv2d(cin, cout, 3, stride=2, padding=1), spectral),
                    nn.InstanceNorm2d(cout, affine=False),
                    nn.LeakyReLU(0.2),
                )
            )
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(cin * 16, z_dim)
        self.fc_var = nn.Linear(cin * 16, z_dim)

    def forward(self, image: torch.Tensor, seg: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``seg`` is not used: one latent for the whole image."""
        if image.shape[2:] != (self.size, self.size):
            image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = self.layers(image).flatten(1)
        return self.fc_mu(x), self.fc_var(x)


class RegionEncoder(nn.Module):
    """Image + mask -> (mu, logvar) of a style code per class region (SEAN's region-wise codes).

    Convolutions (no normalisation, which would remove the colours) at half the side; their
    features and the region's mean colour are averaged over each class region of the mask,
    and a linear map per class gives that class's ``code_dim`` means and log-variances.
    A class absent from the mask gets the prior (0, 0). Returns ``(N, C * code_dim)`` each,
    class-major, which is the generator's z.
    """

    def __init__(self, label_nc: int, nef: int = 32, code_dim: int = 16, spectral: bool = True) -> None:
        super().__init__()
        self.label_nc, self.code_dim, self.z_dim = label_nc, code_dim, label_nc * code_dim
        self.layers = nn.Sequential(
            _sn(nn.Conv2d(3, nef, 3, stride=2, padding=1), spectral),
            nn.LeakyReLU(0.2),
            _sn(nn.Conv2d(nef, 2 * nef, 3, padding=1), spectral),
            nn.LeakyReLU(0.2),
            _sn(nn.Conv2d(2 * nef, 2 * nef, 3, padding=1), spectral),
            nn.LeakyReLU(0.2),
        )
        feats = 2 * nef + 3
        self.w_mu = nn.Parameter(torch.randn(label_nc, feats, code_dim) / math.sqrt(feats))
        self.w_var = nn.Parameter(torch.zeros(label_nc, feats, code_dim))
        self.b_mu = nn.Parameter(torch.zeros(label_nc, code_dim))
        self.b_var = nn.Parameter(torch.zeros(label_nc, code_dim))

    def forward(self, image: torch.Tensor, seg: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if seg is None:
            raise ValueError("region style codes need the image's mask")
        f = torch.cat([self.layers(image), F.avg_pool2d(image, 2, ceil_mode=True)], 1)
        m = F.interpolate(seg.to(f.dtype), size=f.shape[2:], mode="area")
        area = m.sum((2, 3))
        pooled = torch.einsum("nchw,nfhw->ncf", m, f) / area.clamp(min=1e-6)[:, :, None]
        present = (area > 0).to(f.dtype)[:, :, None]
        mu = (torch.einsum("ncf,cfd->ncd", pooled, self.w_mu) + self.b_mu) * present
        logvar = (torch.einsum("ncf,cfd->ncd", pooled, self.w_var) + self.b_var) * present
        return mu.flatten(1), logvar.flatten(1)


class RegionDecoder(nn.Module):
    """Codes -> each region's mean and spread of colour, only to pretrain :class:`RegionEncoder` as a VAE."""

    def __init__(self, label_nc: int, code_dim: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.label_nc, self.code_dim = label_nc, code_dim
        self.w1 = nn.Parameter(torch.randn(label_nc, code_dim, hidden) / math.sqrt(code_dim))
        self.b1 = nn.Parameter(torch.zeros(label_nc, hidden))
        self.w2 = nn.Parameter(torch.randn(label_nc, hidden, 6) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(label_nc, 6))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, C * code_dim)`` -> ``(N, C, 6)``: mean RGB then its standard deviation, signed units."""
        h = F.leaky_relu(torch.einsum("ncd,cdh->nch", z.view(len(z), self.label_nc, self.code_dim), self.w1) + self.b1)
        return torch.einsum("nch,chk->nck", h, self.w2) + self.b2


def region_statistics(image: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class region's mean and standard deviation of colour, ``(N, C, 6)``, and which are present ``(N, C)``."""
    area = seg.sum((2, 3))
    denom = area.clamp(min=1)[:, :, None]
    mean = torch.einsum("nchw,nkhw->nck", seg, image) / denom
    sq = torch.einsum("nchw,nkhw->nck", seg, image * image) / denom
    std = (sq - mean * mean).clamp(min=0).add(1e-6).sqrt()
    return torch.cat([mean, std], -1), area > 0


class VAEDecoder(nn.Module):
    """Latent -> image, only to pretrain :class:`ConvEncoder` as a VAE (upsample + conv)."""

    def __init__(self, size: int = 256, ndf: int = 64, z_dim: int = 256) -> None:
        super().__init__()
        n = int(math.log2(size // 4))
        self.c0 = ndf * min(2 ** (n - 1), 8)
        self.fc = nn.Linear(z_dim, self.c0 * 16)
        blocks, cin = [], self.c0
        for i in reversed(range(n)):
            cout = ndf * min(2 ** max(i - 1, 0), 8)
            blocks.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(cin, cout, 3, padding=1),
                    nn.InstanceNorm2d(cout, affine=True),
                    nn.LeakyReLU(0.2),
                )
            )
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.c0, 4, 4)
        return torch.tanh(self.out(self.blocks(x)))


# -- losses ----------------------------------------------------------------------------------
def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)), summed over the latent, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()


def hinge_d_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Discriminator hinge loss, averaged over the scales (last output of each)."""
    loss = sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(real, fake, strict=True))
    return torch.as_tensor(loss) / len(real)


def hinge_g_loss(fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return torch.as_tensor(sum(-f[-1].mean() for f in fake)) / len(fake)


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminators' intermediate features of fake and (detached) real."""
    total = torch.zeros((), device=fake[0][0].device)
    for r, f in zip(real, fake, strict=True):
        for rf, ff in zip(r[:-1], f[:-1], strict=True):
            total = total + F.l1_loss(ff, rf.detach())
    return total / len(real)


# -- factories -------------------------------------------------------------------------------
@register("generator", "spade")
def spade_generator(num_classes: int, **kwargs: object) -> SPADEGenerator:
    return SPADEGenerator(num_classes, **kwargs)  # type: ignore[arg-type]


@register("discriminator", "multiscale-patchgan")
def multiscale_patchgan(num_classes: int, **kwargs: object) -> MultiscaleDiscriminator:
    return MultiscaleDiscriminator(num_classes, **kwargs)  # type: ignore[arg-type]


@register("encoder", "conv-vae")
def conv_encoder(**kwargs: object) -> ConvEncoder:
    return ConvEncoder(**kwargs)  # type: ignore[arg-type]
