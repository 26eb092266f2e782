"""Decoding corpus images where the work runs: on the CPU (libjpeg-turbo) or on a GPU (nvJPEG).

A JPEG workspace keeps each image as its JPEG file (see ``storage.jpeg``). A CPU worker
decodes with libjpeg-turbo through ``Workspace.read_items``. A GPU worker reads a batch's
chunk bytes (``Workspace.read_chunks``: no decoding on the host) and decodes them on the
device in one batched nvJPEG call, so pseudo-labelling on a GPU is not capped by the
host's cores. nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's: pixels differ by
a grey level or two, as a GPU's inference already differs from a CPU's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from storage.workspace import Workspace


def decode_on_device(chunks: list[bytes | None], size: int, device: torch.device) -> torch.Tensor:
    """JPEG files -> RGB ``(N, size, size, 3)`` uint8 on ``device`` (``None``: an empty slot, zeros).

    One batched ``torchvision.io.decode_jpeg`` call for the batch (nvJPEG on CUDA).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.zeros((len(chunks), size, size, 3), dtype=torch.uint8, device=device)
    present = [k for k, c in enumerate(chunks) if c is not None]
    if not present:
        return out
    data = [torch.frombuffer(bytearray(chunks[k]), dtype=torch.uint8) for k in present]  # type: ignore[arg-type]
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    for k, img in zip(present, images, strict=True):
        if tuple(img.shape) != (3, size, size):
            raise ValueError(f"a corpus JPEG of {tuple(img.shape[1:])} in an array of {size} px")
        out[k] = img.permute(1, 2, 0)
    return out


def batch_reader(
    ws: Workspace, array: str, start: int, device: torch.device, gpu_decode: bool = True
) -> tuple[Callable[[list[int]], object], Callable[[object], np.ndarray | torch.Tensor]]:
    """How a shard task reads batches of rows of ``array`` (rows relative to ``start``):
    ``(read, finish)``. ``read(rows)`` runs on reader threads; ``finish(read(rows))`` on the
    task's thread gives the images, as host arrays or (GPU decoding) device tensors.

    On a CUDA device with a JPEG array the readers only fetch chunk bytes and ``finish``
    decodes them on the device; otherwise the readers decode (libjpeg-turbo or zstd).
    """
    size = int(ws.array(array).shape[1])
    if gpu_decode and device.type == "cuda" and ws.codec_of(array) == "jpeg":

        def fetch(rows: list[int]) -> object:
            return ws.read_chunks(array, [start + j for j in rows])

        def on_device(chunks: object) -> torch.Tensor:
            return decode_on_device(chunks, size, device)  # type: ignore[arg-type]

        return fetch, on_device

    def read(rows: list[int]) -> object:
        return ws.read_items(array, [start + j for j in rows])

    def as_is(images: object) -> np.ndarray:
        return images  # type: ignore[return-value]

    return read, as_is
