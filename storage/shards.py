"""Writing one whole Zarr v3 shard directly, in the format zarr itself reads.

Why: a task writes exactly one whole shard, and zarr's general write path (per-chunk
async tasks, a thread per chunk, buffer conversions) costs about 0.5 ms of CPU per 512 px
image on top of compressing it: half again the cost of decoding a JPEG. For the one
layout mangaka creates (``sharding_indexed`` of one-item inner chunks, ``bytes`` +
``zstd`` inside, ``bytes`` + ``crc32c`` index at the end) the shard is simply the
compressed chunks back to back, then a table of (offset, length) uint64 pairs and its
CRC32C. Any other layout returns ``None`` from :func:`direct_writer` and goes through zarr.
``tests/storage/test_shards.py`` checks that zarr reads these shards back exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import google_crc32c
import numpy as np
from numcodecs import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

EMPTY = np.uint64(2**64 - 1)


def encode_shard(items: np.ndarray, shard_len: int, level: int, holes: Collection[int] = ()) -> bytes:
    """Bytes of one shard holding ``items`` (axis 0) in its first ``len(items)`` inner chunks.

    Inner chunks in ``holes`` or past ``len(items)`` are recorded as empty (read back as
    the fill value) and cost nothing.
    """
    if len(items) > shard_len:
        raise ValueError(f"{len(items)} items do not fit a shard of {shard_len}")
    codec = Zstd(level=level)
    index = np.full((shard_len, 2), EMPTY, dtype="<u8")
    parts: list[bytes] = []
    offset = 0
    skip = set(holes)
    for j in range(len(items)):
        if j in skip:
            continue
        blob = codec.encode(np.ascontiguousarray(items[j]))
        index[j] = (offset, len(blob))
        parts.append(blob)
        offset += len(blob)
    table = index.tobytes()
    parts.append(table)
    parts.append(np.uint32(google_crc32c.value(table)).astype("<u4").tobytes())
    return b"".join(parts)


def direct_writer(arr) -> Callable[[int, np.ndarray, Collection[int]], tuple[str, bytes]] | None:  # noqa: ANN001
    """For an array in mangaka's layout, a function ``(shard, items, holes) -> (key, bytes)``."""
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner, index_codecs = sharding.codecs, sharding.index_codecs
    ok = (
        sharding.chunk_shape == (1, *arr.shape[1:])
        and sharding.index_location == ShardingCodecIndexLocation.end
        and len(inner) == 2
        and isinstance(inner[0], BytesCodec)
        and isinstance(inner[1], ZstdCodec)
        and not inner[1].checksum
        and len(index_codecs) == 2
        and isinstance(index_codecs[0], BytesCodec)
        and index_codecs[0].endian is not None
        and index_codecs[0].endian.value == "little"
        and isinstance(index_codecs[1], Crc32cCodec)
        and np.dtype(arr.dtype).itemsize == 1
    )
    if not ok:
        return None
    shard_len = arr.metadata.chunk_grid.chunk_shape[0]
    zstd = inner[1]
    assert isinstance(zstd, ZstdCodec)
    level = zstd.level
    zeros = (0,) * (len(arr.shape) - 1)

    def write(shard: int, items: np.ndarray, holes: Collection[int]) -> tuple[str, bytes]:
        return arr.metadata.encode_chunk_key((shard, *zeros)), encode_shard(items, shard_len, level, holes)

    return write


def read_items(
    read_range: Callable[[int | None, int | None], bytes],
    shard_len: int,
    positions: list[int],
    out: np.ndarray,
    fill_value: int | float,
) -> None:
    """Fill ``out`` (one row per position) with the items at ``positions`` (inner-chunk
    indices) of one shard in mangaka's layout.

    ``read_range(start, end)`` returns bytes of the shard file (negative ``start``: from
    the end), or raises FileNotFoundError for a shard never written (all fill values). Two
    reads: the index, then the span of the wanted chunks; the index's CRC32C is checked.
    Chunks decompress straight into ``out``.
    """
    if not positions:
        return
    try:
        tail = read_range(-(16 * shard_len + 4), None)
    except FileNotFoundError:
        out[...] = fill_value
        return
    table, crc = tail[:-4], tail[-4:]
    if np.frombuffer(crc, "<u4")[0] != google_crc32c.value(table):
        raise ValueError("shard index checksum mismatch: the shard is corrupt")
    index = np.frombuffer(table, "<u8").reshape(shard_len, 2)
    wanted = []
    for k, p in enumerate(positions):
        if index[p, 0] == EMPTY:
            out[k] = fill_value
        else:
            wanted.append((k, int(index[p, 0]), int(index[p, 1])))
    if not wanted:
        return
    lo = min(o for _, o, _ in wanted)
    hi = max(o + n for _, o, n in wanted)
    span = memoryview(read_range(lo, hi))
    codec = Zstd()
    for k, o, n in wanted:
        row = out[k]
        codec.decode(span[o - lo : o - lo + n], out=row.reshape(-1).view(np.uint8))
