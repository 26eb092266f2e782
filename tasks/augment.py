"""Augmentation: ``multiplier`` aligned (image, mask) variants of every annotated item.

Each variant is one geometric warp (rotation, mirror, scale, perspective and an optional
elastic field) composed into a single sampling map, so the image is resampled once
(bicubic) and the mask once (nearest neighbour) from the same map: they stay aligned to
the pixel, and the image never goes through several lossy resamplings. OpenCV's
``remap`` does the sampling. Pixels that come from outside the source are filled the
same way in both: white in the image, ``ignore`` (255) or background (0) in the mask.
Colour jitter (brightness, contrast, saturation, hue) touches the image only.

Variant 0 of every item is the original; variants 1.. are random, drawn from
``(seed, parent id, k)`` alone, so any shard can be redone alone with the same result.
Variant ``k`` of the parent in slot ``p`` lives in slot ``p * multiplier + k``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from storage.workspace import Workspace
from tasks.ingest import ShardResult, ShardTask, shard_buffer, unless_done

log = logging.getLogger(__name__)

FAMILY = "augmented"
IMAGES = "augmented/images"
MASKS = "augmented/masks"
CODE_VERSION = "augment-1"
IMAGE_FILL = (255, 255, 255)

# cv2 threads would fight the other Dask worker for the same cores.
cv2.setNumThreads(1)


class AugmentOptions(BaseModel):
    """Ranges of the random transforms (each variant draws within them)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    multiplier: int = Field(16, ge=1, le=256, description="variants per annotated item, the original included")
    seed: int = Field(0, description="seed of every variant's draws")
    rotate: float = Field(20.0, ge=0, le=180, description="max rotation, degrees")
    mirror: float = Field(0.5, ge=0, le=1, description="probability of a horizontal mirror")
    scale: tuple[float, float] = Field((0.85, 1.2), description="zoom range")
    shift: float = Field(0.06, ge=0, le=0.5, description="max translation, fraction of the side")
    perspective: float = Field(0.06, ge=0, le=0.3, description="max corner displacement, fraction of the side")
    elastic: float = Field(0.5, ge=0, le=1, description="probability of an elastic warp")
    elastic_alpha: float = Field(0.035, ge=0, le=0.2, description="elastic displacement, fraction of the side")
    elastic_sigma: float = Field(0.06, gt=0, le=0.5, description="elastic smoothness, fraction of the side")
    brightness: float = Field(0.2, ge=0, le=1, description="max brightness change, fraction")
    contrast: float = Field(0.2, ge=0, le=1, description="max contrast change, fraction")
    saturation: float = Field(0.25, ge=0, le=1, description="max saturation change, fraction")
    hue: float = Field(0.03, ge=0, le=0.5, description="max hue shift, fraction of the colour wheel")
    fill: Literal["ignore", "background"] = Field("ignore", description="mask label of pixels from outside")

    @property
    def version(self) -> str:
        return hashlib.sha1(f"{CODE_VERSION}|{self.model_dump_json()}".encode()).hexdigest()[:12]

    @property
    def mask_fill(self) -> int:
        return 255 if self.fill == "ignore" else 0


def variant_rng(seed: int, parent: str, k: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{parent}\0{k}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _homography(size: int, rng: np.random.Generator, o: AugmentOptions) -> np.ndarray:
    """Output-to-source 3x3 map of one random rotation/mirror/scale/shift/perspective."""
    c = (size - 1) / 2.0
    angle = math.radians(rng.uniform(-o.rotate, o.rotate))
    s = rng.uniform(*o.scale)
    flip = -1.0 if rng.random() < o.mirror else 1.0
    tx, ty = rng.uniform(-o.shift, o.shift, 2) * size
    cos, sin = math.cos(angle) * s, math.sin(angle) * s
    forward = np.array([[cos * flip, -sin, 0], [sin * flip, cos, 0], [0, 0, 1]], dtype=np.float64)
    to_c = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1]], dtype=np.float64)
    back = np.array([[1, 0, c + tx], [0, 1, c + ty], [0, 0, 1]], dtype=np.float64)
    affine = back @ forward @ to_c
    corners = np.array([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], dtype=np.float32)
    jitter = corners + rng.uniform(-o.perspective, o.perspective, (4, 2)).astype(np.float32) * size
    persp = cv2.getPerspectiveTransform(corners, jitter).astype(np.float64)
    return np.linalg.inv(persp @ affine)


def _sampling_map(size: int, rng: np.random.Generator, o: AugmentOptions) -> tuple[np.ndarray, np.ndarray]:
    inv = _homography(size, rng, o)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    if rng.random() < o.elastic:
        sigma = o.elastic_sigma * size
        field = rng.uniform(-1, 1, (2, size, size)).astype(np.float32)
        k = int(2 * round(3 * sigma) + 1)
        dx = cv2.GaussianBlur(field[0], (k, k), sigma)
        dy = cv2.GaussianBlur(field[1], (k, k), sigma)
        norm = o.elastic_alpha * size / max(float(np.abs(np.stack([dx, dy])).max()), 1e-6)
        xs, ys = xs + dx * norm, ys + dy * norm
    w = inv[2, 0] * xs + inv[2, 1] * ys + inv[2, 2]
    map_x = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]) / w
    map_y = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]) / w
    return map_x.astype(np.float32), map_y.astype(np.float32)


def _jitter(image: np.ndarray, rng: np.random.Generator, o: AugmentOptions) -> np.ndarray:
    img = image.astype(np.float32)
    img *= 1 + rng.uniform(-o.brightness, o.brightness)
    mean = img.mean()
    img = (img - mean) * (1 + rng.uniform(-o.contrast, o.contrast)) + mean
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = grey[..., None] + (img - grey[..., None]) * (1 + rng.uniform(-o.saturation, o.saturation))
    out = np.clip(img, 0, 255).astype(np.uint8)
    shift = rng.uniform(-o.hue, o.hue)
    if shift:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 256))) % 256
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return out


def augment_pair(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, options: AugmentOptions
) -> tuple[np.ndarray, np.ndarray]:
    """One random variant of ``image`` ((S, S, 3) uint8 RGB) and ``mask`` ((S, S) uint8 ids).

    Image: RGB ``(S, S, 3)`` uint8 in 0..255 in and out; mask: ``(S, S)`` uint8 class ids (255 = ignore) in and out.
    """
    if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2] or image.shape[0] != image.shape[1]:
        raise ValueError(f"need a square (S, S, 3) image and (S, S) mask, got {image.shape} and {mask.shape}")
    map_x, map_y = _sampling_map(image.shape[0], rng, options)
    out_img = cv2.remap(image, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=IMAGE_FILL)
    out_mask = cv2.remap(
        mask, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=options.mask_fill
    )
    return _jitter(out_img, rng, options), out_mask


@dataclass(frozen=True)
class AugmentShardSpec(ShardTask):
    parents: list[tuple[int, str, str]]  # (parent slot, parent id, parent content hash)


def shards_of_parents(
    parents: Mapping[str, dict[str, Any]], multiplier: int, shard_size: int
) -> dict[int, list[tuple[int, str, str]]]:
    """Every augmented shard that holds a variant of a live parent, with those parents.

    A parent's ``multiplier`` variants fill slots ``[slot*m, slot*m + m)``, which may span
    many shards when the multiplier exceeds the shard size: each of them is planned.
    """
    m, s = multiplier, shard_size
    by_shard: dict[int, set[tuple[int, str, str]]] = {}
    for pid, e in parents.items():
        for shard in range((e["slot"] * m) // s, (e["slot"] * m + m - 1) // s + 1):
            by_shard.setdefault(shard, set()).add((e["slot"], pid, e["sha256"]))
    return {shard: sorted(members) for shard, members in sorted(by_shard.items())}


def producer_version(options: AugmentOptions, parents: list[tuple[int, str, str]]) -> str:
    """Changes with the options and with the content of any parent in the shard."""
    key = options.version + "|" + "|".join(f"{s}:{h}" for s, _, h in sorted(parents))
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def prepare_arrays(ws: Workspace, options: AugmentOptions, parent_length: int) -> None:
    """Create or grow both arrays; a new multiplier lays the slots out anew."""
    size = int(ws.config()["image_size"])
    if ws.config().get("augmented_multiplier") not in (None, options.multiplier):
        for name in (IMAGES, MASKS):
            ws.drop_array(name)
        ws.update_config(augmented_multiplier=options.multiplier)
    ws.ensure_config(augmented_multiplier=options.multiplier)
    length = parent_length * options.multiplier
    ws.require_pair(IMAGES, MASKS, size, length, owner="augment")


@unless_done(IMAGES)
def augment_shard(spec: AugmentShardSpec, ws: Workspace) -> ShardResult:
    """Write every variant of the parents that fall in one augmented shard."""
    t0 = time.perf_counter()
    opts = AugmentOptions(**spec.options)
    m, s = opts.multiplier, ws.shard_size
    start = spec.shard * s
    n = min(s, ws.length(IMAGES) - start)
    size = int(ws.config()["image_size"])
    images = shard_buffer(n, (size, size, 3))
    masks = shard_buffer(n, (size, size))
    src_images, src_masks = ws.array("annotated/images"), ws.array("annotated/masks")
    live = {slot: pid for slot, pid, _ in spec.parents}
    holes, made, loaded = [], 0, -1
    image = mask = np.zeros(0, np.uint8)
    for j in range(n):
        parent_slot, k = divmod(start + j, m)
        if parent_slot not in live:
            holes.append(j)
            continue
        if parent_slot != loaded:
            image, mask = np.asarray(src_images[parent_slot]), np.asarray(src_masks[parent_slot])
            loaded = parent_slot
        if k == 0:
            images[j], masks[j] = image, mask
        else:
            images[j], masks[j] = augment_pair(image, mask, variant_rng(opts.seed, live[parent_slot], k), opts)
        made += 1
    ws.write_shard(IMAGES, spec.shard, images, holes)
    ws.write_shard(MASKS, spec.shard, masks, holes)
    ws.write_marker(MASKS, spec.shard, spec.version)
    ws.write_marker(IMAGES, spec.shard, spec.version, parents={str(p): h for p, _, h in spec.parents})
    dt = time.perf_counter() - t0
    log.info("augmented shard %d: %d variants in %.1f s", spec.shard, made, dt)
    return ShardResult(IMAGES, spec.shard, False, made, 0, dt)


def validation_split(parent_ids: list[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split annotated ids into (train, validation) by a hash of the id: stable as items are added.

    Augmented variants follow their parent (``<parent>-aNN``), so no variant of a
    validation image is ever trained on.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), not {fraction}")

    def score(pid: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{seed}\0{pid}".encode()).digest()[:8], "little") / 2**64

    val = sorted(p for p in parent_ids if score(p) < fraction)
    if fraction > 0 and not val and parent_ids:
        val = [min(parent_ids, key=score)]
    chosen = set(val)
    return sorted(p for p in parent_ids if p not in chosen), val
