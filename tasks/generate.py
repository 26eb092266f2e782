"""Generating portraits from masks with a trained GauGAN, and latent attribute directions.

Style comes from a reference image (the encoder's mean latent of it) or from a seed: the
latent of mask ``<id>`` under seed ``S`` is drawn from a generator seeded by ``(S, id)``,
so an item's image does not depend on which other masks were in the folder.

Attribute directions (hair colour): every training image gets a hair-colour label from
the median hue, saturation and value of the pixels its mask calls ``hair`` (no tagger);
the direction of label L is the mean encoder latent of L's images minus the mean of all
the others. ``--attribute hair=blonde --strength S`` adds ``S`` times it to the latent.
The labels, directions and a PCA plot of the latents coloured by label are stored beside
the checkpoint (``attributes.json``, ``attributes.safetensors``, ``latents-pca.png``).
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.spade import ConvEncoder, RegionEncoder, SPADEGenerator
from storage.checkpoints import load_checkpoint
from storage.items import Journal, item_table, write_item_index
from storage.location import Location, child_url, url_name
from storage.sources import SourceReader, list_folder, read_file
from storage.workspace import IGNORE_INDEX, Workspace, WorkspaceError
from tasks.device import pick_device
from tasks.gaugan import MODEL_DIR, build_nets, collect_pairs, encode_mean, generate_images, options_of
from tasks.imageio import BadImage, encode_png, load_square, open_image, square_mask
from tasks.tensors import from_signed, nchw_to_images, signed_from_float255, to_float255
from tasks.training import load_weights, seeded_generator

log = logging.getLogger(__name__)

STAGE = "generate"
ARRAY = "generated/images"
HAIR_COLOURS = {
    "black": (25, 25, 30),
    "brown": (120, 70, 35),
    "blonde": (235, 205, 90),
    "red": (215, 40, 40),
    "pink": (245, 140, 190),
    "purple": (140, 70, 200),
    "blue": (50, 100, 230),
    "green": (50, 170, 70),
    "white": (200, 200, 210),
    "grey": (128, 128, 128),
}


def hair_label(image: np.ndarray, mask: np.ndarray, hair_id: int, min_pixels: int = 64) -> str | None:
    """A hair-colour bucket from the median HSV of the hair pixels, or None with too few of them.

    ``image``: RGB ``(H, W, 3)`` uint8 in 0..255; ``mask``: ``(H, W)`` uint8 class ids (255 = ignore).
    """
    px = image[mask == hair_id]
    if len(px) < min_pixels:
        return None
    r, g, b = (float(np.median(px[:, c])) / 255 for c in range(3))
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    hue = h * 360
    if v < 0.22:
        return "black"
    if s < 0.18:
        return "white" if v > 0.75 else ("black" if v < 0.35 else "grey")
    if hue < 15 or hue >= 345:
        return "pink" if s < 0.5 and v > 0.7 else "red"
    if hue < 50:
        return "blonde" if v > 0.7 and s < 0.75 else "brown"
    if hue < 70:
        return "blonde"
    if hue < 165:
        return "green"
    if hue < 255:
        return "blue"
    if hue < 290:
        return "purple"
    return "pink"


@dataclass
class Attributes:
    """Hair labels of the encoded training images, their latents, and a direction per label."""

    labels: list[str]
    latents: torch.Tensor
    directions: dict[str, torch.Tensor]
    counts: dict[str, int]

    def direction(self, name: str, value: str) -> torch.Tensor:
        if name != "hair":
            raise WorkspaceError(f"unknown attribute {name!r}: the attributes are hair=<colour>")
        if value not in self.directions:
            have = ", ".join(f"{k} ({self.counts[k]})" for k in sorted(self.directions)) or "none"
            raise WorkspaceError(f"no direction for hair={value}: training images had too few; available: {have}")
        return self.directions[value]


def compute_attributes(ws: Workspace, model: Trained, limit: int = 2000, min_count: int = 2) -> Attributes:
    """Encode up to ``limit`` training images, label their hair, take label-mean directions."""
    opts = options_of(model.config)
    pairs = collect_pairs(ws, opts)
    entries = pairs.train
    if len(entries) > limit:
        step = len(entries) / limit
        entries = [entries[int(i * step)] for i in range(limit)]
    hair_id = ws.classes.index("hair") if "hair" in ws.classes else -1
    labels: list[str] = []
    latents = []
    for i in range(0, len(entries), 32):
        x, y = pairs.read(entries[i : i + 32])
        latents.append(encode_mean(model.encoder, x, y, model.device))
        imgs = nchw_to_images(from_signed(x))
        labels += [hair_label(imgs[k], y[k].numpy(), hair_id) or "" for k in range(len(imgs))]
    z = torch.cat(latents)
    counts: dict[str, int] = {}
    for lab in labels:
        if lab:
            counts[lab] = counts.get(lab, 0) + 1
    directions = {}
    known = torch.tensor([bool(lab) for lab in labels])
    for lab, n in counts.items():
        if n < min_count:
            continue
        inside = torch.tensor([x == lab for x in labels])
        others = known & ~inside
        if others.any():
            directions[lab] = z[inside].mean(0) - z[others].mean(0)
    return Attributes(labels, z, directions, counts)


def attributes_for(ws: Workspace, model: Trained) -> Attributes:
    """The checkpoint's attributes, computed (and stored beside it with a PCA plot) on first use."""
    from safetensors.torch import load, save

    base = f"models/{MODEL_DIR}/{model.checkpoint}"
    if ws.loc.exists(f"{base}/attributes.json"):
        meta = ws.loc.read_json(f"{base}/attributes.json")
        tensors = load(ws.loc.read_bytes(f"{base}/attributes.safetensors"))
        directions = {k.removeprefix("hair="): v for k, v in tensors.items() if k.startswith("hair=")}
        return Attributes(meta["labels"], tensors["latents"], directions, meta["counts"])
    attrs = compute_attributes(ws, model)
    tensors = {f"hair={k}": v.contiguous() for k, v in attrs.directions.items()}
    tensors["latents"] = attrs.latents.contiguous()
    ws.loc.write_bytes(f"{base}/attributes.safetensors", save(tensors))
    ws.loc.write_bytes(f"{base}/latents-pca.png", pca_plot(attrs.latents, attrs.labels))
    ws.loc.write_json(f"{base}/attributes.json", {"attribute": "hair", "counts": attrs.counts, "labels": attrs.labels})
    return attrs


def default_hair(attrs: Attributes) -> str | None:
    """The hair colour to show a direction with: blonde when it has one, else the commonest."""
    if "blonde" in attrs.directions:
        return "blonde"
    ranked = sorted(attrs.directions, key=lambda k: -attrs.counts[k])
    return ranked[0] if ranked else None


def attribute_evaluation(
    ws: Workspace, model: Trained, masks: torch.Tensor, value: str | None = None, strength: float = 3.0, seed: int = 0
) -> dict[str, Any] | None:
    """The hair colour along a hair direction's strip for ``masks`` (``(N, S, S)`` class ids), or None.

    The latents are the ``seed`` latents of mask ids 0..N-1; see :func:`tasks.gaugan_metrics.attribute_metrics`.
    """
    from tasks.gaugan_metrics import attribute_metrics
    from tasks.tensors import nchw_to_images

    if "hair" not in ws.classes or not len(masks):
        return None
    attrs = attributes_for(ws, model)
    value = value or default_hair(attrs)
    if value is None:
        return None

    def gen(m: torch.Tensor, z: torch.Tensor) -> np.ndarray:
        return nchw_to_images(generate_images(model.generator, m, z, model.device))

    z = model.generator.latent_from_noise(
        mask_latents([str(i) for i in range(len(masks))], model.generator.z_dim, seed)
    )
    out = attribute_metrics(
        gen,
        masks.numpy(),
        z,
        attrs.direction("hair", value),
        ws.classes.index("hair"),
        HAIR_COLOURS[value],
        strength,
    )
    return {"attribute": f"hair={value}", **out}


def pca_plot(latents: torch.Tensor, labels: list[str], side: int = 560) -> bytes:
    """PNG scatter of the latents' first two principal components, coloured by hair label."""
    from PIL import Image, ImageDraw

    z = latents.double().numpy()
    z = z - z.mean(0)
    if len(z) >= 2:
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        xy = z @ vt[:2].T
    else:
        xy = np.zeros((len(z), 2))
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 0, hi - lo, 1)
    plot = side - 140
    pts = 20 + (xy - lo) / span * (plot - 40)
    im = Image.new("RGB", (side, plot), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for (x, y), lab in zip(pts, labels, strict=True):
        colour = HAIR_COLOURS.get(lab, (200, 200, 200))
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour, outline=(0, 0, 0) if lab == "white" else None)
    draw.text((plot + 10, 10), "hair (PCA of\nencoder latents)", fill=(0, 0, 0))
    present = sorted({lab for lab in labels if lab})
    for k, lab in enumerate(present):
        y = 50 + 18 * k
        draw.rectangle((plot + 10, y, plot + 22, y + 12), fill=HAIR_COLOURS[lab], outline=(0, 0, 0))
        draw.text((plot + 28, y), f"{lab} ({labels.count(lab)})", fill=(0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# -- generate ----------------------------------------------------------------------------------
def read_masks(
    mask_dir: str, size: int, num_classes: int
) -> tuple[list[str], list[np.ndarray], list[str], list[tuple[str, str]]]:
    """Class-id PNG masks of ``mask_dir`` (local or ``s3://``; not recursive), squared to
    ``size``; their sources; and the refused ones.

    Each mask ``(size, size)`` uint8 class ids below ``num_classes`` (255 = ignore).
    """
    listing = list_folder(mask_dir, ".png", "mask folder")
    ids, masks, sources, refused = [], [], [], list(listing.refused)
    with SourceReader() as reader:
        for ref in listing.refs:
            try:
                im = open_image(reader.read(ref), 8192 * 8192)  # refuses a larger mask before decoding it
                if im.mode not in ("L", "P", "I;16", "I"):
                    raise ValueError(f"a mask must be a single-channel class-id PNG, not mode {im.mode}")
                arr = np.asarray(im).astype(np.int64)
                bad = (arr >= num_classes) & (arr != IGNORE_INDEX)
                if bad.any():
                    raise ValueError(
                        f"class ids {sorted(set(np.unique(arr[bad]).tolist()))[:5]} >= {num_classes} classes"
                    )
                masks.append(square_mask(arr.astype(np.uint8), size, "crop"))
                ids.append(ref.id)
                sources.append(ref.source)
            except Exception as exc:  # one bad mask must not stop the others
                refused.append((ref.source, f"unreadable mask: {exc}"))
    return ids, masks, sources, refused


def mask_latents(ids: list[str], z_dim: int, seed: int) -> torch.Tensor:
    rows = []
    for item in ids:
        rows.append(torch.randn(z_dim, generator=seeded_generator(seed, item)))
    return torch.stack(rows) if rows else torch.zeros(0, z_dim)


def style_latent(ws: Workspace, model: Trained, style_image: str) -> torch.Tensor:
    """The encoder's mean latent of a reference image (local or ``s3://``; any size; squared and resized).

    The image is loaded as RGB uint8 and fed to the encoder as a signed ``(1, 3, S, S)``
    float32 tensor in [-1, 1]. Region styles need the reference's class regions: the
    workspace's segmenter finds them.
    """
    data = read_file(style_image)
    side = model.generator.size if isinstance(model.encoder, RegionEncoder) else model.encoder.size
    try:
        rgb = np.array(load_square(data, side))
    except BadImage as exc:
        raise WorkspaceError(f"--style-image {style_image}: {exc}") from None
    x = signed_from_float255(to_float255(rgb[None]))
    mask = torch.zeros(1, side, side, dtype=torch.long)
    if isinstance(model.encoder, RegionEncoder):
        mask = reference_mask(ws, rgb, model.device)
    return encode_mean(model.encoder, x, mask, model.device)[0]


def reference_mask(ws: Workspace, rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """The class regions of one RGB ``(S, S, 3)`` uint8 reference, by the workspace's segmenter: ``(1, S, S)``."""
    from torch.nn import functional as F

    from storage.checkpoints import has_tag
    from tasks.segment import load_segmenter, predict

    if not has_tag(ws, "unet"):
        raise WorkspaceError(
            f"{ws.url} has no segmenter: a GauGAN with region styles finds a reference's regions with it "
            "(run train-unet first)"
        )
    segmenter, cfg, _ = load_segmenter(ws, "latest", str(device))
    img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    seg_size = int(cfg["size"])
    if img.shape[-1] != seg_size:
        img = F.interpolate(img.float(), size=(seg_size, seg_size), mode="bilinear", align_corners=False)
        img = img.round().clamp(0, 255).byte()
    pred = predict(segmenter, img, device).long()
    if pred.shape[-1] != rgb.shape[0]:
        pred = F.interpolate(pred[:, None].float(), size=rgb.shape[:2], mode="nearest")[:, 0].long()
    return pred


def generate(
    ws: Workspace,
    model: Trained,
    mask_dir: str,
    out: str,
    style_image: str | None = None,
    seed: int = 0,
    attribute: tuple[str, str] | None = None,
    strength: float = 1.0,
) -> dict[str, Any]:
    """One image per mask into ``out`` (``<id>.png``; a folder or ``s3://`` prefix) and ``generated/images``."""
    size, z_dim = model.generator.size, model.generator.z_dim
    ids, masks, sources, refused = read_masks(mask_dir, size, model.generator.label_nc)
    for source, reason in refused:
        ws.quarantine(source, STAGE, reason)
    if not ids:
        raise WorkspaceError(f"no usable class-id PNG masks in {mask_dir}")
    if style_image:
        z = style_latent(ws, model, style_image).expand(len(ids), z_dim).clone()
    else:
        z = model.generator.latent_from_noise(mask_latents(ids, z_dim, seed))
    direction = None
    if attribute:
        direction = attributes_for(ws, model).direction(*attribute)
        z = z + strength * direction
    m = torch.from_numpy(np.stack(masks)).long()
    images = generate_images(model.generator, m, z, model.device).permute(0, 2, 3, 1).numpy()
    target = Location(out)
    for item, img in zip(ids, images, strict=True):
        target.write_bytes(f"{item}.png", encode_png(np.ascontiguousarray(img)))
    style = f"image:{url_name(style_image)}" if style_image else f"seed:{seed}"
    if attribute:
        style += f"+{attribute[0]}={attribute[1]}*{strength}"
    store_generated(ws, ids, images, sources, model.digest, style)
    strip = None
    if direction is not None and attribute is not None:
        name = f"attribute-{attribute[0]}-{attribute[1]}.png"
        target.write_bytes(name, interpolation_strip(model, m[:4], z[:4] - strength * direction, direction, strength))
        strip = child_url(out, name)
    return {"generated": len(ids), "refused": len(refused), "out": out, "style": style, "strip": strip}


def interpolation_strip(
    model: Trained, masks: torch.Tensor, z: torch.Tensor, direction: torch.Tensor, strength: float, steps: int = 6
) -> bytes:
    """Rows (one per mask) of images at strengths 0 .. ``strength`` along ``direction``.

    ``masks``: ``(N, S, S)`` int class ids; returns PNG bytes of an RGB ``(N*S, steps*S, 3)`` uint8 grid.
    """
    rows = []
    alphas = np.linspace(0, strength, steps)
    for i in range(len(masks)):
        zs = torch.stack([z[i] + float(a) * direction for a in alphas])
        imgs = generate_images(model.generator, masks[i : i + 1].expand(steps, -1, -1), zs, model.device)
        rows.append(np.concatenate(list(imgs.permute(0, 2, 3, 1).numpy()), axis=1))
    return encode_png(np.concatenate(rows, axis=0))


def store_generated(
    ws: Workspace, ids: list[str], images: np.ndarray, sources: list[str], digest: str, style: str
) -> None:
    """Append the images (RGB ``(N, S, S, 3)`` uint8 in 0..255) to ``generated/images`` (newer replaces older)."""
    size = images.shape[1]
    version = f"gaugan:{digest}:{style}"
    batch = Journal(ws, "generated").add(
        version, {"style": style}, [{"id": i, "source": s} for i, s in zip(ids, sources, strict=True)]
    )
    arr = ws.require_array(ARRAY, ws.rgb_spec(size), batch.end, owner="generate")
    if arr.shape[0] < batch.end:
        ws.grow(ARRAY, batch.end)
    k = 0
    for shard in batch.shard_indices():
        srcs = batch.sources_of(shard)
        data = np.ascontiguousarray(images[k : k + len(srcs)])
        start = shard * ws.shard_size
        entries = [
            {
                "slot": start + j,
                "id": s["id"],
                "source": s["source"],
                "sha256": hashlib.sha256(data[j].tobytes() + style.encode()).hexdigest(),
                "style": style,
                "status": "ok",
            }
            for j, s in enumerate(srcs)
        ]
        ws.write_shard(ARRAY, shard, data)
        ws.write_marker(ARRAY, shard, version, entries=entries)
        k += len(srcs)
    write_item_index(ws, item_table(ws, "generated"))


# -- loading a trained GauGAN ------------------------------------------------------------------
@dataclass
class Trained:
    generator: SPADEGenerator
    encoder: ConvEncoder | RegionEncoder
    config: dict[str, Any]
    checkpoint: str
    digest: str
    device: torch.device


def load_gaugan(ws: Workspace, ref: str = "latest", device: str = "cpu") -> Trained:
    """The trained generator and encoder (eval mode) of checkpoint ``ref``."""
    ckpt = load_checkpoint(ws, MODEL_DIR, ref)
    cfg = ckpt.config
    if cfg.get("phase") != "gan":
        raise WorkspaceError(f"checkpoint {ckpt.name} is a VAE pretraining checkpoint, not a generator")
    opts = options_of(cfg)
    nets = build_nets(opts, int(cfg["num_classes"]))
    load_weights({("G_ema" if opts.ema else "G"): nets.generator, "E": nets.encoder}, ckpt.weights)
    dev = pick_device(device)
    return Trained(nets.generator.to(dev).eval(), nets.encoder.to(dev).eval(), cfg, ckpt.name, ckpt.digest, dev)
