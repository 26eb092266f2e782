"""generate and stylize with ``s3://`` masks, style images and OUT (moto on loopback), and
the mask folder's rules (local and S3) without a model."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import s3fs
from PIL import Image

from flows.gaugan import generate_flow
from flows.style import stylize_flow
from storage.items import item_table
from storage.workspace import Workspace
from tasks.gaugan import train_gaugan
from tasks.generate import read_masks
from tasks.neural_style import StyleOptions
from tasks.synth import draw_portrait
from tests.tasks.test_gaugan import OPTS
from tests.tasks.test_segment import tiny_workspace

TINY = OPTS.model_copy(update={"steps": 2, "vae_steps": 1, "eval_count": 0, "lambda_vgg": 0.0})


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def s3(endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(endpoint_url=endpoint)


def test_masks_are_read_from_a_local_folder_or_an_s3_prefix_alike(tmp_path: Path, bucket: str, s3_server: str) -> None:
    local = tmp_path / "masks"
    local.mkdir()
    for i in range(2):
        (local / f"m{i}.png").write_bytes(png(draw_portrait(5, i, 40).mask))
    (local / "rgb.png").write_bytes(png(np.full((8, 8, 3), 9, np.uint8)))  # not a class-id mask
    (local / "notes.txt").write_text("not a mask")
    (local / "sub.png").mkdir()  # a folder named like a mask: passed over
    fs = s3(s3_server)
    fs.put(str(local) + "/", f"{bucket}/masks/", recursive=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(draw_portrait(5, 9, 40).mask))
    os.symlink(outside, local / "link.png")
    os.mkfifo(local / "pipe.png")  # never opened for reading: refused without blocking

    ids, masks, sources, refused = read_masks(str(local), 32, 8)
    assert ids == ["m0", "m1"] and sources == [str(local / "m0.png"), str(local / "m1.png")]
    assert [m.shape for m in masks] == [(32, 32), (32, 32)]
    assert dict(refused) == {
        str(local / "link.png"): "symlink points outside the mask folder",
        str(local / "rgb.png"): "unreadable mask: a mask must be a single-channel class-id PNG, not mode RGB",
    }

    ids3, masks3, sources3, refused3 = read_masks(f"s3://{bucket}/masks/", 32, 8)
    assert ids3 == ids and sources3 == [f"s3://{bucket}/masks/m0.png", f"s3://{bucket}/masks/m1.png"]
    assert all(np.array_equal(a, b) for a, b in zip(masks, masks3, strict=True))
    assert [s for s, _ in refused3] == [f"s3://{bucket}/masks/rgb.png"]
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        read_masks(f"s3://{bucket}/nothing-here", 32, 8)


def test_generate_reads_and_writes_s3(cluster: str, tmp_path: Path, bucket: str, s3_server: str) -> None:
    ws = tiny_workspace(tmp_path / "ws", n=4, size=64)
    train_gaugan(ws, TINY)
    fs = s3(s3_server)
    for i in range(2):
        fs.pipe(f"{bucket}/in/masks/m{i}.png", png(draw_portrait(4, i, 32).mask))
    fs.pipe(f"{bucket}/in/style.png", png(draw_portrait(4, 7, 32).image))
    local_out = tmp_path / "out"
    r_local = generate_flow(workspace=ws.url, masks=f"s3://{bucket}/in/masks", out=str(local_out), seed=3, device="cpu")
    r = generate_flow(
        workspace=ws.url, masks=f"s3://{bucket}/in/masks", out=f"s3://{bucket}/out/", seed=3, device="cpu"
    )
    assert r["generated"] == r_local["generated"] == 2 and r["refused"] == 0 and r["out"] == f"s3://{bucket}/out/"
    assert sorted(fs.ls(f"{bucket}/out")) == [f"{bucket}/out/m0.png", f"{bucket}/out/m1.png"]
    for i in range(2):
        assert fs.cat(f"{bucket}/out/m{i}.png") == (local_out / f"m{i}.png").read_bytes(), "same seed, same bytes"
    sources = {e["source"] for e in item_table(Workspace(ws.url), "generated").by_id.values()}
    assert sources == {f"s3://{bucket}/in/masks/m0.png", f"s3://{bucket}/in/masks/m1.png"}

    styled = generate_flow(
        workspace=ws.url,
        masks=f"s3://{bucket}/in/masks",
        out=f"s3://{bucket}/styled",
        style_image=f"s3://{bucket}/in/style.png",
        device="cpu",
    )
    assert styled["style"] == "image:style.png" and fs.exists(f"{bucket}/styled/m1.png")
    assert np.asarray(Image.open(io.BytesIO(fs.cat(f"{bucket}/styled/m1.png")))).shape == (64, 64, 3)


def test_stylize_reads_and_writes_s3(cluster: str, tmp_path: Path, bucket: str, s3_server: str) -> None:
    fs = s3(s3_server)
    fs.pipe(f"{bucket}/in/c.png", png(draw_portrait(2, 0, 32).image))
    fs.pipe(f"{bucket}/in/s.png", png(draw_portrait(2, 1, 32).image))
    opts = StyleOptions(max_num_epochs=2, save_epochs=1, max_long_edge=24, stop_eps=0, remove_noise=0)
    meta = stylize_flow(
        content=f"s3://{bucket}/in/c.png", style=f"s3://{bucket}/in/s.png", out=f"s3://{bucket}/o/x.png", options=opts
    )
    assert meta["epochs"] == 2 and (meta["content"], meta["style"]) == ("c.png", "s.png")
    assert sorted(fs.ls(f"{bucket}/o")) == [
        f"{bucket}/o/{n}" for n in ("x-epoch-0001.png", "x-epoch-0002.png", "x.json", "x.png")
    ]
    image = Image.open(io.BytesIO(fs.cat(f"{bucket}/o/x.png")))
    assert image.size == (24, 24) and json.loads(image.text["mangaka"])["epochs"] == 2
    assert json.loads(fs.cat(f"{bucket}/o/x.json")) == meta
