"""What the workspace's annotations teach the line-art model (``train-lineart --finetune``).

An annotated image's class mask says where its regions meet, and in a drawing most
region boundaries are outlines: line truth for part of every real image the workspace
has, in the style of its own corpus. :func:`finetune_targets` turns an (image, mask)
into a target drawing and a per-pixel weight of how much that target counts:

- on a region boundary (two pixels wide, one either side), **ink**, weight 1, where XDoG
  or Canny sees an edge within 2 px (a boundary without any edge, such as skin meeting a
  face of the same colour, is not drawn and is not truth);
- within ``band`` pixels of a boundary and not on it: no truth (weight 0), because a
  polygon drawn by hand lies a pixel or two beside the line it traces;
- elsewhere the two classic methods' agreement is a weak signal (``weak_weight``): ink
  where XDoG draws and Canny finds an edge within a pixel, paper where neither draws
  within a pixel; where they disagree, no truth;
- nothing near pixels the mask ignores (255).

Held out for measuring: 10% of the annotated images by id hash; their truth is every
region boundary (:func:`boundary_lines`), against which the model and the classic methods
are scored alike (interior lines, drawn by every method, count against each of them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from storage.items import item_table
from storage.workspace import Workspace, WorkspaceError
from tasks.artline_options import LineartTrainOptions
from tasks.lineart import INK, dataset_f1, render
from tasks.training import held_out_mask

IGNORE = 255


@dataclass(frozen=True)
class Annotated:
    """The fine-tuning set: uint8 RGB ``(N, S, S, 3)`` images, ``(N, S, S)`` drawings (0 ink,
    255 paper) and float32 weights for training; images and boundary drawings held out."""

    train_images: np.ndarray
    train_lines: np.ndarray
    train_weights: np.ndarray
    val_images: np.ndarray
    val_lines: np.ndarray
    classic: dict[str, float]  # XDoG's and Canny's F1 on the held-out images
    digest: str  # of the annotations read: a new or corrected one starts a new fine-tuning run
    size: int  # the side of every image here


def boundary_lines(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 drawing (0 ink, 255 paper) of every boundary between two classes of a
    class-id ``mask``: the pixels either side of it, so two pixels wide; ignored pixels have none."""
    valid = mask != IGNORE
    ink = np.zeros(mask.shape, bool)
    dx = (mask[:, 1:] != mask[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    dy = (mask[1:] != mask[:-1]) & valid[1:] & valid[:-1]
    ink[:, 1:] |= dx
    ink[:, :-1] |= dx
    ink[1:] |= dy
    ink[:-1] |= dy
    return np.where(ink, 0, 255).astype(np.uint8)


def _distance_to(ink: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest ``True`` of ``ink`` (inf when there is none)."""
    if not ink.any():
        return np.full(ink.shape, np.inf, np.float32)
    return cv2.distanceTransform((~ink).astype(np.uint8), cv2.DIST_L2, 5)


def finetune_targets(
    image: np.ndarray, mask: np.ndarray, band: float = 3.0, weak_weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(target ``(H, W)`` uint8 drawing, weight ``(H, W)`` float32) of one annotated image (module docstring)."""
    boundary = boundary_lines(mask) < INK
    xdog, canny = render("xdog", image) < INK, render("canny", image) < INK
    to_boundary, to_xdog, to_canny = _distance_to(boundary), _distance_to(xdog), _distance_to(canny)
    confirmed = boundary & (np.minimum(to_xdog, to_canny) <= 2)
    far = to_boundary > band
    weak_ink = far & xdog & (to_canny <= 1)
    weak_paper = far & (to_xdog > 1) & (to_canny > 1)
    target = np.where(confirmed | weak_ink, 0, 255).astype(np.uint8)
    weight = np.zeros(mask.shape, np.float32)
    weight[weak_ink | weak_paper] = weak_weight
    weight[confirmed] = 1.0
    ignored = mask == IGNORE
    if ignored.any():
        weight[_distance_to(ignored) <= band] = 0.0
    return target, weight


def _resize(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if images.shape[1] == size:
        return images, masks
    img = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images])
    msk = np.stack([cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in masks])
    return img, msk


def load_annotated(ws: Workspace, opts: LineartTrainOptions, size: int | None = None) -> Annotated:
    """The workspace's annotated images at ``size`` (default: their own side, down to a
    multiple of 16, as the network needs) with their fine-tuning targets."""
    table = item_table(ws, "annotated")
    if len(table) < 2:
        raise WorkspaceError(
            f"{ws.url} has {len(table)} annotated items; train-lineart --finetune needs at least 2 "
            "(ingest-labelme DIR first)"
        )
    ids = sorted(table.by_id)
    slots = [table.by_id[i]["slot"] for i in ids]
    images_arr, masks_arr = ws.array("annotated/images"), ws.array("annotated/masks")
    size = size or int(images_arr.shape[1]) // 16 * 16
    images = np.stack([np.asarray(images_arr[s]) for s in slots])
    masks = np.stack([np.asarray(masks_arr[s]) for s in slots])
    images, masks = _resize(images, masks, size)
    digest = hashlib.sha1("\n".join(ids).encode() + images.tobytes() + masks.tobytes()).hexdigest()[:12]
    held = held_out_mask(ids, "lineart-annotated", 0.1)
    pairs = [
        finetune_targets(im, m, opts.band, opts.weak_weight) for im, m in zip(images[~held], masks[~held], strict=True)
    ]
    val_images = images[held]
    val_lines = np.stack([boundary_lines(m) for m in masks[held]])
    classic = {
        name: dataset_f1([render(name, im) for im in val_images], list(val_lines))["f1"] for name in ("xdog", "canny")
    }
    return Annotated(
        images[~held],
        np.stack([t for t, _ in pairs]),
        np.stack([w for _, w in pairs]),
        val_images,
        val_lines,
        classic,
        digest,
        size,
    )
