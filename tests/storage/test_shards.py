"""Shards written directly must read back through plain zarr exactly as zarr's own writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from storage.shards import direct_writer
from storage.workspace import Workspace, image_spec, mask_spec


def test_direct_shards_read_back_through_zarr(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    arr = ws.require_array("corpus/images", image_spec(8), length=10)
    assert direct_writer(arr) is not None
    rng = np.random.default_rng(0)
    full = rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    ws.write_shard("corpus/images", 0, full.copy())
    partial = rng.integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)  # slots 8, 9: the array's end
    ws.write_shard("corpus/images", 2, partial.copy())
    holey = rng.integers(1, 255, (4, 8, 8, 3), dtype=np.uint8)
    ws.write_shard("corpus/images", 1, holey.copy(), holes=[1, 3])
    plain = zarr.open_array(str(tmp_path / "corpus" / "images"), mode="r")[:]
    assert (plain[0:4] == full).all() and (plain[8:10] == partial).all()
    assert (plain[4] == holey[0]).all() and (plain[6] == holey[2]).all()
    assert (plain[5] == 0).all() and (plain[7] == 0).all()

    # the same data written by zarr itself reads back identically
    ref = zarr.create_array(
        str(tmp_path / "ref"),
        shape=(10, 8, 8, 3),
        chunks=(1, 8, 8, 3),
        shards=(4, 8, 8, 3),
        dtype="uint8",
        compressors=ZstdCodec(level=1),
        fill_value=0,
    )
    ref[0:4] = full
    ref[8:10] = partial
    holey[[1, 3]] = 0
    ref[4:8] = holey
    assert (ref[:] == plain).all()


def test_masks_use_the_direct_path_and_other_layouts_do_not(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    ws.ensure_config(shard_size=4)
    masks = ws.require_array("corpus/masks", mask_spec(8), length=4)
    assert direct_writer(masks) is not None
    data = np.arange(4 * 64, dtype=np.uint8).reshape(4, 8, 8)
    ws.write_shard("corpus/masks", 0, data.copy())
    assert (zarr.open_array(str(tmp_path / "corpus" / "masks"), mode="r")[:] == data).all()
    unsharded = zarr.create_array(str(tmp_path / "plain"), shape=(4, 8), chunks=(1, 8), dtype="uint8")
    assert direct_writer(unsharded) is None
