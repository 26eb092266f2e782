"""Where corpus images are decoded: readers on the host, or nvJPEG on a GPU (``make test-gpu``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from storage.workspace import Workspace, image_spec
from tasks.decode import batch_reader, decode_on_device
from tests.conftest import jpeg_bytes

S = 64


def portrait_like(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:S, 0:S]
    img = np.clip(rng.integers(0, 120, 3) + x[..., None] * 1.5 + y[..., None], 0, 255)
    img[20:40, 20:40] = rng.integers(0, 255, 3)  # a flat patch with hard edges, like cel shading
    return img.astype(np.uint8)


def jpeg_workspace(root: Path, codec: str = "jpeg") -> tuple[Workspace, np.ndarray]:
    ws = Workspace(str(root))
    ws.ensure_config(shard_size=8)
    ws.require_array("corpus/images", image_spec(S, codec), length=8)
    data = np.stack([portrait_like(i) for i in range(8)])
    grey = jpeg_bytes(portrait_like(9)[..., 0])
    ws.write_shard("corpus/images", 0, data[:6], holes=[2], encoded={5: grey})
    return ws, ws.read_items("corpus/images", list(range(8)))


def test_a_cpu_reader_decodes_on_the_host(tmp_path: Path) -> None:
    for codec in ("jpeg", "raw"):
        ws, want = jpeg_workspace(tmp_path / codec, codec)
        read, finish = batch_reader(ws, "corpus/images", 0, torch.device("cpu"))
        got = finish(read([1, 2, 5]))
        assert isinstance(got, np.ndarray) and (got == want[[1, 2, 5]]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nvjpeg_decodes_the_stored_chunks_like_libjpeg_turbo(tmp_path: Path) -> None:
    ws, want = jpeg_workspace(tmp_path / "ws")
    device = torch.device("cuda")
    read, finish = batch_reader(ws, "corpus/images", 0, device)
    chunks = read(list(range(8)))
    assert isinstance(chunks, list) and chunks[2] is None and chunks[7] is None  # holes: no bytes
    got = finish(chunks)
    assert isinstance(got, torch.Tensor) and got.device.type == "cuda" and got.shape == (8, S, S, 3)
    host = got.cpu().numpy()
    assert (host[2] == 0).all() and (host[7] == 0).all()
    diff = np.abs(host.astype(int) - want.astype(int))
    assert diff.max() <= 8 and diff.mean() < 1.0  # nvJPEG's IDCT and upsampling are not libjpeg-turbo's
    direct = decode_on_device([c for c in chunks if c is not None], S, device)
    assert direct.shape == (6, S, S, 3)
