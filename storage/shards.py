"""Writing and reading whole Zarr v3 shards directly, in the format zarr itself reads.

Why: a task writes exactly one whole shard, and zarr's general write path (per-chunk
async tasks, a thread per chunk, buffer conversions) costs about 0.5 ms of CPU per 512 px
image on top of compressing it: half again the cost of decoding a JPEG. For the layouts
mangaka creates (``sharding_indexed`` of one-item inner chunks, ``bytes`` + crc32c index
at the end, and inside either ``bytes`` + ``zstd`` or the ``imagecodecs_jpeg`` serializer
alone, see ``storage.jpeg``) a shard is simply the encoded chunks back to back, then a
table of (offset, length) uint64 pairs and its CRC32C. Any other layout returns ``None``
from :func:`layout_of` and goes through zarr. ``tests/storage/test_shards.py`` checks that
zarr reads these shards back exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import google_crc32c
import numpy as np
from numcodecs import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

from storage import jpeg

EMPTY = np.uint64(2**64 - 1)

ReadRange = Callable[[int | None, int | None], bytes]


@dataclass(frozen=True)
class Layout:
    """How the inner chunks of one of mangaka's arrays are encoded: ``zstd`` (lossless) or ``jpeg``."""

    codec: str
    shard_len: int
    level: int  # zstd level, or JPEG quality
    subsampling: str = jpeg.SUBSAMPLING

    def encode(self, item: np.ndarray) -> bytes:
        if self.codec == "jpeg":
            return jpeg.encode(item, self.level, self.subsampling)
        return bytes(Zstd(level=self.level).encode(np.ascontiguousarray(item)))

    def decode_into(self, blob: bytes | memoryview, row: np.ndarray) -> None:
        if self.codec == "jpeg":
            jpeg.decode_into(bytes(blob), row)
        else:
            Zstd().decode(blob, out=row.reshape(-1).view(np.uint8))


def layout_of(arr) -> Layout | None:  # noqa: ANN001
    """The :class:`Layout` of a zarr array in one of mangaka's own layouts, else ``None``."""
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sharding = codecs[0]
    inner, index_codecs = sharding.codecs, sharding.index_codecs
    ok = (
        sharding.chunk_shape == (1, *arr.shape[1:])
        and sharding.index_location == ShardingCodecIndexLocation.end
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
    if len(inner) == 2 and isinstance(inner[0], BytesCodec) and isinstance(inner[1], ZstdCodec):
        if inner[1].checksum:
            return None
        return Layout("zstd", shard_len, inner[1].level)
    if len(inner) == 1 and isinstance(inner[0], jpeg.JpegCodec) and inner[0].colorspace_data in (None, "RGB"):
        return Layout("jpeg", shard_len, inner[0].quality, inner[0].subsampling or jpeg.SUBSAMPLING)
    return None


def encode_shard(
    items: np.ndarray,
    layout: Layout,
    holes: Collection[int] = (),
    encoded: Mapping[int, bytes] | None = None,
) -> bytes:
    """Bytes of one shard holding ``items`` (axis 0) in its first ``len(items)`` inner chunks.

    Inner chunks in ``holes`` or past ``len(items)`` are recorded as empty (read back as
    the fill value) and cost nothing. ``encoded`` gives rows already encoded in the
    layout's codec (a source JPEG stored byte for byte): they are stored as given.
    """
    shard_len = layout.shard_len
    if len(items) > shard_len:
        raise ValueError(f"{len(items)} items do not fit a shard of {shard_len}")
    index = np.full((shard_len, 2), EMPTY, dtype="<u8")
    parts: list[bytes] = []
    offset = 0
    skip = set(holes)
    given = encoded or {}
    for j in range(len(items)):
        if j in skip:
            continue
        blob = given.get(j)
        if blob is None:
            blob = layout.encode(items[j])
        index[j] = (offset, len(blob))
        parts.append(blob)
        offset += len(blob)
    table = index.tobytes()
    parts.append(table)
    parts.append(np.uint32(google_crc32c.value(table)).astype("<u4").tobytes())
    return b"".join(parts)


def direct_writer(arr):  # noqa: ANN001, ANN201
    """For an array in one of mangaka's layouts, a function ``(shard, items, holes,
    encoded=None) -> (key, bytes)``; ``None`` for any other array."""
    layout = layout_of(arr)
    if layout is None:
        return None
    zeros = (0,) * (len(arr.shape) - 1)

    def write(
        shard: int, items: np.ndarray, holes: Collection[int], encoded: Mapping[int, bytes] | None = None
    ) -> tuple[str, bytes]:
        return arr.metadata.encode_chunk_key((shard, *zeros)), encode_shard(items, layout, holes, encoded)

    return write


def _index(read_range: ReadRange, shard_len: int) -> np.ndarray | None:
    """The shard's (offset, length) table, CRC-checked; ``None`` for a shard never written."""
    try:
        tail = read_range(-(16 * shard_len + 4), None)
    except FileNotFoundError:
        return None
    table, crc = tail[:-4], tail[-4:]
    if np.frombuffer(crc, "<u4")[0] != google_crc32c.value(table):
        raise ValueError("shard index checksum mismatch: the shard is corrupt")
    return np.frombuffer(table, "<u8").reshape(shard_len, 2)


def read_chunks(read_range: ReadRange, shard_len: int, positions: list[int]) -> list[bytes | None]:
    """The encoded inner chunks at ``positions`` of one shard (``None``: an empty chunk).

    Two reads: the index, then the span of the wanted chunks.
    """
    index = _index(read_range, shard_len) if positions else None
    if index is None:
        return [None] * len(positions)
    wanted = [(k, int(index[p, 0]), int(index[p, 1])) for k, p in enumerate(positions) if index[p, 0] != EMPTY]
    got: list[bytes | None] = [None] * len(positions)
    if not wanted:
        return got
    lo = min(o for _, o, _ in wanted)
    hi = max(o + n for _, o, n in wanted)
    span = memoryview(read_range(lo, hi))
    for k, o, n in wanted:
        got[k] = span[o - lo : o - lo + n]  # type: ignore[call-overload]
    return got


def read_items(
    read_range: ReadRange,
    layout: Layout,
    positions: list[int],
    out: np.ndarray,
    fill_value: int | float,
) -> None:
    """Fill ``out`` (one row per position) with the items at ``positions`` (inner-chunk
    indices) of one shard in ``layout``.

    ``read_range(start, end)`` returns bytes of the shard file (negative ``start``: from
    the end), or raises FileNotFoundError for a shard never written (all fill values).
    The index's CRC32C is checked. Chunks decode straight into ``out``; JPEG chunks may
    decode at a DCT scale of their size when ``out``'s rows are smaller (see ``storage.jpeg``).
    """
    for k, blob in enumerate(read_chunks(read_range, layout.shard_len, positions)):
        if blob is None:
            out[k] = fill_value
        else:
            layout.decode_into(blob, out[k])


# -- reading a workspace's arrays -----------------------------------------------------------
def reading_array(ws, key: str, slots: list[int]):  # noqa: ANN001, ANN201
    """Array ``key`` of ``ws`` opened for reading, kept by ``ws`` between reads (opening one
    reads and parses its metadata: a tenth of a JPEG decode per image in batches of 16).
    Reopened when a slot lies past its cached length (another process grew it); data is
    never cached, only the layout and the shape."""
    arr = ws._readers.get(key)
    if arr is None or any(s >= arr.shape[0] for s in slots):
        arr = ws._readers[key] = ws.array(key)
    return arr


def _by_shard(ws, key: str, arr, slots: list[int]) -> list[tuple[list[int], list[int], ReadRange]]:  # noqa: ANN001
    """``slots`` of array ``key`` grouped by shard: (rows of ``slots``, inner-chunk positions, range reader)."""
    shard_len = arr.metadata.chunk_grid.chunk_shape[0]
    by_shard: dict[int, list[int]] = {}
    for k, slot in enumerate(slots):
        if not 0 <= slot < arr.shape[0]:
            raise IndexError(f"slot {slot} is outside {key} ({arr.shape[0]} slots)")
        by_shard.setdefault(slot // shard_len, []).append(k)
    zeros = (0,) * (len(arr.shape) - 1)

    def reader(path: str) -> ReadRange:
        def read_range(start: int | None, end: int | None) -> bytes:
            return bytes(ws.loc.fs.cat_file(path, start=start, end=end))

        return read_range

    groups: list[tuple[list[int], list[int], ReadRange]] = []
    for shard, ks in by_shard.items():
        path = ws.loc.path(f"{key}/{arr.metadata.encode_chunk_key((shard, *zeros))}")
        groups.append((ks, [slots[k] % shard_len for k in ks], reader(path)))
    return groups


def read_workspace_items(ws, key: str, slots: list[int], size: int | None = None) -> np.ndarray:  # noqa: ANN001
    """``Workspace.read_items``: the items of array ``key`` at ``slots``, through the direct
    path for mangaka's layouts and zarr for others; ``size`` decodes JPEG at a DCT scale."""
    from storage.workspace import WorkspaceError

    arr = reading_array(ws, key, slots)
    layout = layout_of(arr)
    shape = tuple(arr.shape[1:])
    if size is not None and size != shape[0]:
        if layout is None or layout.codec != "jpeg":
            raise WorkspaceError(f"{key} is not stored as JPEG: it is read at its own size only")
        shape = (size, size, *shape[2:])
    if not slots:
        return np.zeros((0, *shape), dtype=arr.dtype)
    if layout is not None:
        out = np.empty((len(slots), *shape), dtype=arr.dtype)
        for ks, positions, read_range in _by_shard(ws, key, arr, slots):
            if ks == list(range(ks[0], ks[0] + len(ks))):  # contiguous rows: decode in place
                read_items(read_range, layout, positions, out[ks[0] : ks[0] + len(ks)], arr.fill_value)
            else:
                part = np.empty((len(ks), *shape), dtype=arr.dtype)
                read_items(read_range, layout, positions, part, arr.fill_value)
                out[ks] = part
        return out
    lo, hi = min(slots), max(slots) + 1
    if hi - lo == len(slots):
        return np.asarray(arr[lo:hi])[np.asarray(slots) - lo]
    return np.asarray(arr.get_orthogonal_selection((np.asarray(slots),)))


def read_workspace_chunks(ws, key: str, slots: list[int]) -> list[bytes | None]:  # noqa: ANN001
    """``Workspace.read_chunks``: the stored chunks of array ``key`` at ``slots`` (``None``: empty)."""
    arr = reading_array(ws, key, slots)
    got: list[bytes | None] = [None] * len(slots)
    shard_len = arr.metadata.chunk_grid.chunk_shape[0]
    for ks, positions, read_range in _by_shard(ws, key, arr, slots):
        for k, blob in zip(ks, read_chunks(read_range, shard_len, positions), strict=True):
            got[k] = None if blob is None else bytes(blob)
    return got
