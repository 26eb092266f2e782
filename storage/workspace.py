"""The workspace: every array, marker, quarantine entry and checkpoint of a mangaka run.

A workspace is a local directory or an ``s3://bucket/prefix``. Its layout::

    zarr.json                      root Zarr v3 group
    corpus/images  corpus/masks  corpus/item ...   Zarr v3 arrays (see ARRAYS)
    annotated/...  augmented/...   generated/...
    _meta/workspace.json           shard size, class list, format version
    _meta/markers/<array>/<shard>.json     completion markers
    _meta/marker-index/<array>/<piece>.json  a cache of them (see Workspace.each_marker)
    _meta/batches/<family>/<n>.json        ingestion journal (see storage.items)
    _meta/quarantine/<stage>/<key>.json    append-only quarantine log
    _meta/runs/<run>.json  _meta/leases/<flow>/<generation>.json   run records, leases (storage.lease)
    models/<model>/<checkpoint>/...        safetensors + config + metrics
    reports/                               demo reports

Arrays are item-major: axis 0 is the item *slot*, one image per inner chunk, inner chunks
grouped into Zarr shards of ``shard_size`` slots. A bulk task owns exactly one Zarr shard
(slots ``[k*S, (k+1)*S)``), so two tasks never write the same shard file. A task deletes
its shard's old marker, writes the data, and writes its marker last; a marker says "shard
k of array A is complete for producer version V". The workspace, not Prefect's database,
is the truth about what is done.

JSON documents over a few KB (markers and journals list every item of a shard) are stored
compact and gzip-compressed (``storage.location.json_bytes``; ``zcat`` shows them); small
ones stay plain text. Readers take both.

This module must never import Prefect, Dask or torch.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from storage.bulk import bulk, bulk_build
from storage.codecs import ImageCodecs
from storage.location import Location, json_text, safe_key

log = logging.getLogger(__name__)


_SHARED_WORDS = ("status", "stored", "format", "kind")  # the few values that recur in every marker entry and record


def shared_words(obj: dict[str, Any]) -> dict[str, Any]:
    """The ``object_hook`` for markers and journal records: one shared string for each
    value of the keys that take a few values only ("ok", "as-is", "JPEG", "file"), and for
    a record's ``path`` that is its ``source``. A marker index of 302,652 entries is 60 MB
    smaller in memory, their journal 30 MB."""
    for key in _SHARED_WORDS:
        value = obj.get(key)
        if value.__class__ is str:
            obj[key] = sys.intern(value)
    path = obj.get("path")
    if path is not None and path == obj.get("source"):  # a journal record of a plain file: one string for both
        obj["path"] = obj["source"]
    return obj


FORMAT_VERSION = 1
DEFAULT_SHARD_SIZE = 256
# A piece of an array's marker index is rewritten once this many of its markers were read
# anew; a piece covers INDEX_PIECE shards of an array whose markers list their items
# (``<family>/images``: 16,384 items at 256 a shard), INDEX_PIECE_SMALL of any other, and
# INDEX_AT_ONCE pieces are read together (see Workspace.each_marker).
REINDEX_AFTER = 8
INDEX_PIECE = 64
INDEX_PIECE_SMALL = 4096
INDEX_AT_ONCE = 2
DEFAULT_CLASSES = ("background", "skin", "face", "eye", "mouth", "hair", "clothes")
IGNORE_INDEX = 255

# How the command line spells each workspace setting, for error messages.
OPTION_OF = {
    "image_size": "--size",
    "shard_size": "--shard-size",
    "classes": "--labels",
    "codec": "--codec",
    "jpeg_quality": "--jpeg-quality",
}

CODECS = ("jpeg", "raw")
"""How RGB image arrays store their items: ``jpeg`` (one JPEG file per image, see
``storage.jpeg``; the default) or ``raw`` (lossless: the pixels compressed with zstd).
Masks, confidences and line art are always lossless."""
DEFAULT_CODEC = "jpeg"

# Per-image arrays and the item-family they index into.
FAMILIES = ("corpus", "annotated", "augmented", "generated")


def now_iso(timespec: str = "seconds") -> str:
    """The current UTC time in ISO 8601; run records ask for ``milliseconds`` so runs started within
    one second still sort in the order they started."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec=timespec)


def _start_time(record: dict[str, Any]) -> _dt.datetime:
    """When a run record says its run started (records of older versions have whole seconds)."""
    try:
        t = _dt.datetime.fromisoformat(str(record.get("start", "")))
    except ValueError:
        return _dt.datetime.min.replace(tzinfo=_dt.UTC)
    return t if t.tzinfo else t.replace(tzinfo=_dt.UTC)


class WorkspaceError(RuntimeError):
    """A workspace is missing something or disagrees with what a command asks of it."""


@dataclass(frozen=True)
class ArraySpec:
    """Shape of one item of an array, its dtype and axis names (after the item axis)."""

    item_shape: tuple[int, ...]
    dtype: str
    dims: tuple[str, ...]
    fill_value: Any = 0
    codec: str = "raw"  # "raw" (lossless, zstd) or "jpeg" (RGB uint8 items only)
    quality: int = 95  # JPEG quality of what is encoded, for codec "jpeg"


def image_spec(size: int, codec: str = "raw", quality: int = 95) -> ArraySpec:
    """An RGB image array's spec; ``codec`` ``raw`` (lossless) or ``jpeg`` (see :data:`CODECS`)."""
    if codec not in CODECS:
        raise WorkspaceError(f"unknown image codec {codec!r}: use one of {', '.join(CODECS)}")
    return ArraySpec((size, size, 3), "uint8", ("y", "x", "channel"), codec=codec, quality=quality)


def mask_spec(size: int) -> ArraySpec:
    return ArraySpec((size, size), "uint8", ("y", "x"))


def family_of(array: str) -> str:
    family = array.split("/", 1)[0]
    if family not in FAMILIES:
        raise WorkspaceError(f"unknown array {array!r}: names start with one of {', '.join(FAMILIES)}")
    return family


# One segment of a key that a user's name becomes: a style name, a model or checkpoint
# name, a tag, each part of an array name. Nothing that could be a path (``/``, ``..``,
# ``.``), start hidden, or differ only in case on one file system and not on another.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: object, what: str = "name") -> str:
    """``name`` if it is one safe key segment; a :class:`WorkspaceError` (exit 2) otherwise.

    Every name a user gives that becomes part of a key (``--name``, model and checkpoint
    names, tags, the parts of an array name, deployment parameters) passes here, so no
    name can reach another stage's array or leave the workspace, however it is spelled.
    """
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise WorkspaceError(
            f"invalid {what} {name!r}: use one name of letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, at most 128 characters, no '/' or '..')"
        )
    return name


def check_key(key: str, what: str = "array name") -> str:
    """A ``/``-separated key whose every segment passes :func:`check_name`; never normalised,
    so ``corpus/styled/x/../../images`` is refused instead of becoming ``corpus/images``."""
    if not isinstance(key, str) or not key:
        raise WorkspaceError(f"invalid {what} {key!r}")
    for part in key.split("/"):
        try:
            check_name(part)
        except WorkspaceError:
            raise WorkspaceError(
                f"invalid {what} {key!r}: each part must be a name of letters, digits, '.', '_' and '-' "
                "(no empty parts, '.' or '..')"
            ) from None
    return key


def index_piece(array: str) -> int:
    """Shards a piece of ``array``'s marker index covers: markers of ``<family>/images``
    list every item of their shard (a few hundred bytes each, parsed), others hold a few
    fields."""
    return INDEX_PIECE if array.rsplit("/", 1)[-1] == "images" else INDEX_PIECE_SMALL


def _key_of(array: str) -> str:
    key = check_key(array)
    family_of(key)
    return key


def live_digest(slots: list[int]) -> str:
    return hashlib.sha1(",".join(str(int(v)) for v in sorted(slots)).encode()).hexdigest()[:16]


def marker_matches(marker: dict[str, Any] | None, version: str, live: list[int] | None = None) -> bool:
    """Whether ``marker`` says its shard is done for ``version`` (and, if given, for the items ``live``).

    Markers written before live digests existed match any items.
    """
    if marker is None or marker.get("version") != version:
        return False
    return live is None or marker.get("live") in (None, live_digest(live))


class Workspace(ImageCodecs):
    """One interface over a local or S3 workspace. Cheap to construct and to pickle."""

    def __init__(self, url: str) -> None:
        self.loc = Location(str(url))
        self.url = self.loc.url
        self._group: Any = None
        self._readers: dict[str, Any] = {}  # arrays opened for reading (storage.shards.reading_array)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Workspace, (self.url,))

    def __repr__(self) -> str:
        return f"Workspace({self.url!r})"

    # -- configuration ---------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        try:  # one read, no existence check first: a task reads this once a shard on S3
            raw = self.loc.read_bytes("_meta/workspace.json")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return {}
        cfg: dict[str, Any] = json.loads(json_text(raw))
        return cfg

    def update_config(self, **values: Any) -> None:
        """Change recorded settings (for callers that have dropped what depended on them)."""
        cfg = self.config() or {"format": FORMAT_VERSION, "created": now_iso()}
        cfg.update({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()})
        self.loc.write_json("_meta/workspace.json", cfg)

    def check_config(self, **wanted: Any) -> None:
        """Raise :class:`WorkspaceError` if a recorded value differs from a wanted one."""
        cfg = self.config()
        for name, value in wanted.items():
            value = list(value) if isinstance(value, tuple) else value
            if value is not None and name in cfg and cfg[name] != value:
                option = OPTION_OF.get(name, name)
                raise WorkspaceError(
                    f"workspace {self.url} was created with {option} {cfg[name]!r}, not {value!r}; "
                    f"use {option} {cfg[name]!r} or a new workspace"
                )

    def ensure_config(self, **wanted: Any) -> dict[str, Any]:
        """Create the workspace's config on first use; afterwards, values must agree.

        ``None`` values are ignored. A value already recorded that differs raises a
        :class:`WorkspaceError` saying how to proceed.
        """
        self.check_config(**wanted)
        cfg = self.config()
        fresh = not cfg
        if fresh:
            cfg = {"format": FORMAT_VERSION, "created": now_iso()}
        changed = fresh
        for name, value in wanted.items():
            if value is None:
                continue
            if isinstance(value, tuple):
                value = list(value)
            if name not in cfg:
                cfg[name] = value
                changed = True
        if changed:
            self.loc.write_json("_meta/workspace.json", cfg)
        return cfg

    @property
    def shard_size(self) -> int:
        """Items per shard: fixed when the workspace is created, so read once per instance
        (a run asks it for every shard; on S3 each read is two requests)."""
        cached = self.__dict__.get("_shard_size")
        if cached is not None:
            return int(cached)
        cfg = self.config()
        if "shard_size" in cfg:
            self.__dict__["_shard_size"] = int(cfg["shard_size"])
        return int(cfg.get("shard_size", DEFAULT_SHARD_SIZE))

    @property
    def classes(self) -> list[str]:
        return list(self.config().get("classes", DEFAULT_CLASSES))

    # -- arrays ----------------------------------------------------------------------
    def group(self):  # noqa: ANN201
        import zarr

        if self._group is None:
            self._group = zarr.open_group(self.loc.zarr_store(), mode="a", zarr_format=3)
        return self._group

    def has_array(self, array: str) -> bool:
        """Whether a Zarr v3 array (not a group) exists at ``array``: its ``zarr.json`` says so."""
        return self._array_metadata(array) is not None

    def _array_metadata(self, array: str) -> dict[str, Any] | None:
        """The ``zarr.json`` of the array at ``array`` (one read), ``None`` if there is none."""
        meta = f"{_key_of(array)}/zarr.json"
        try:
            raw = self.loc.read_bytes(meta)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        try:
            doc = json.loads(json_text(raw))
        except ValueError as exc:
            raise WorkspaceError(f"{self.url}: {meta} is unreadable ({exc}); the array's metadata is damaged") from None
        return doc if isinstance(doc, dict) and doc.get("node_type") == "array" else None

    def array(self, array: str, mode: str = "r"):  # noqa: ANN201
        """Open an existing array (``mode`` ``"r"`` or ``"r+"``), from one read of its
        metadata (on S3 one GET: every shard task opens the arrays it reads and writes)."""
        from zarr import Array
        from zarr.core.array import AsyncArray
        from zarr.core.metadata.v3 import ArrayV3Metadata
        from zarr.storage import StorePath

        meta = self._array_metadata(array)
        if meta is None:
            raise WorkspaceError(f"{self.url} has no array {array!r} yet: run the stage that makes it")
        store = self.loc.zarr_store(read_only=mode == "r")
        try:
            metadata = ArrayV3Metadata.from_dict(meta)
        except (ValueError, TypeError, KeyError) as exc:
            raise WorkspaceError(f"{self.url}: the metadata of {array} is damaged ({exc})") from None
        return Array(AsyncArray(metadata=metadata, store_path=StorePath(store, _key_of(array))))

    def require_array(self, array: str, spec: ArraySpec, length: int = 0, owner: str | None = None):  # noqa: ANN201
        """Open ``array``, creating it with ``spec`` if absent; an existing one must match.

        ``owner`` (the stage that writes the array) is recorded in the array's attributes
        when it is created; a stage may not open for writing an array another stage owns.
        """
        from zarr.codecs import ZstdCodec

        from storage.jpeg import JpegCodec

        key = _key_of(array)
        if self.has_array(key):
            arr = self.array(key, mode="r+")
            recorded = arr.attrs.get("mangaka_owner")
            if owner is not None and recorded is not None and recorded != owner:
                raise WorkspaceError(
                    f"{key} in {self.url} is written by {recorded}, not by {owner}: choose another name"
                )
            if tuple(arr.shape[1:]) != spec.item_shape or str(arr.dtype) != spec.dtype:
                raise WorkspaceError(
                    f"{key} in {self.url} holds items of shape {tuple(arr.shape[1:])} {arr.dtype}, "
                    f"not {spec.item_shape} {spec.dtype}; use the same --size or a new workspace"
                )
            if arr.shape[0] < length:
                arr.resize((length, *spec.item_shape))
            return arr
        s = self.shard_size
        if spec.codec == "jpeg":
            if spec.dtype != "uint8" or len(spec.item_shape) != 3 or spec.item_shape[-1] != 3:
                raise WorkspaceError(f"{key}: only RGB uint8 images can be stored as JPEG")
            coding: dict[str, Any] = {"serializer": JpegCodec(level=spec.quality), "compressors": None}
        else:
            coding = {"compressors": ZstdCodec(level=1)}
        arr = self.group().create_array(
            key,
            shape=(length, *spec.item_shape),
            chunks=(1, *spec.item_shape),
            shards=(s, *spec.item_shape),
            dtype=spec.dtype,
            **coding,
            fill_value=spec.fill_value,
            dimension_names=("item", *spec.dims),
            attributes={"mangaka_owner": owner} if owner else None,
        )
        return arr

    def require_pair(self, images: str, masks: str, size: int, length: int, owner: str) -> None:
        """Open or create an image array and its mask array of ``size``, both ``owner``'s
        (:meth:`require_array` for each)."""
        self.require_array(images, image_spec(size), length, owner=owner)
        self.require_array(masks, mask_spec(size), length, owner=owner)

    def drop_array(self, array: str) -> None:
        """Delete an array and its markers (a derived array whose layout must change)."""
        key = _key_of(array)
        self._readers.pop(key, None)
        # markers first: a killed drop must never leave a marker that describes deleted data
        self.loc.delete(f"_meta/markers/{key}")
        self.loc.delete(key)

    def grow(self, array: str, length: int) -> None:
        """Extend an array's item axis to ``length`` (metadata only; no shard is rewritten)."""
        arr = self.array(array, mode="r+")
        if arr.shape[0] < length:
            arr.resize((length, *arr.shape[1:]))

    def length(self, array: str) -> int:
        return int(self.array(array).shape[0]) if self.has_array(array) else 0

    def shards_of(self, length: int) -> int:
        return math.ceil(length / self.shard_size)

    def shard_slots(self, shard: int, length: int) -> range:
        s = self.shard_size
        return range(shard * s, min((shard + 1) * s, length))

    def write_shard(
        self,
        array: str,
        shard: int,
        data: np.ndarray,
        holes: list[int] | None = None,
        encoded: dict[int, bytes] | None = None,
    ) -> None:
        """Write one whole Zarr shard: ``data`` covers its first slots; ``holes`` stay empty.

        ``encoded`` maps rows of ``data`` to chunks already in the array's codec (a source
        JPEG stored byte for byte in a JPEG array); those rows of ``data`` are not read.

        The shard is encoded here and stored with one write (see ``storage.shards``), or
        through zarr for layouts other than mangaka's own. The shard's marker is removed
        *before* its data is replaced: a run killed in between leaves a shard without a
        marker (done again), never a marker that describes data that is no longer there.
        """
        from storage.shards import direct_writer, layout_of

        arr = self.array(array, mode="r+")
        start = shard * self.shard_size
        if start + len(data) > arr.shape[0] or len(data) > self.shard_size:
            raise WorkspaceError(f"shard {shard} of {array} does not fit the array ({arr.shape[0]} slots)")
        self.clear_markers(array, [shard])
        layout = layout_of(arr)
        if encoded and (layout is None or layout.codec != "jpeg"):  # JPEG files for an array of pixels: decode
            from storage.jpeg import decode_into

            for j, chunk in encoded.items():
                decode_into(chunk, data[j])
            encoded = None
        writer = direct_writer(arr)
        if writer is not None:
            key, blob = writer(shard, data, holes or [], encoded)
            self.loc.write_bytes(f"{_key_of(array)}/{key}", blob)
            return
        for j in holes or []:
            data[j] = arr.fill_value
        arr[start : start + len(data)] = data

    def read_items(self, array: str, slots: list[int], size: int | None = None) -> np.ndarray:
        """The items at ``slots`` (reads only their inner chunks), stacked on axis 0.

        Arrays in mangaka's own layouts are read straight from their shard files (two range
        reads per shard: the index, then the span of the wanted chunks), which is several
        times faster than zarr's per-chunk path; others go through zarr. ``size`` (JPEG
        arrays only) decodes images at a DCT scale of their side (1/2, 1/4 or 1/8 of it),
        for a stage that works at that size: a fraction of the decoding work.
        """
        from storage import shards

        return shards.read_workspace_items(self, _key_of(array), slots, size)

    def read_chunks(self, array: str, slots: list[int]) -> list[bytes | None]:
        """The stored chunk of each of ``slots`` of a JPEG array: JPEG files (``None`` for an
        empty slot), for a reader that decodes them itself (on a GPU, for one)."""
        from storage import shards

        if self.codec_of(array) != "jpeg":
            raise WorkspaceError(f"{array} is not stored as JPEG")
        return shards.read_workspace_chunks(self, _key_of(array), slots)

    def read_shard(self, array: str, shard: int) -> np.ndarray:
        """Every item of one shard (:meth:`read_items` of its slots)."""
        arr = self.array(array)
        start = shard * self.shard_size
        return self.read_items(array, list(range(start, min(start + self.shard_size, arr.shape[0]))))

    def list_arrays(self) -> list[str]:
        """Names of every array in the workspace (``corpus/images``, ``corpus/lineart/xdog``, ...)."""
        import zarr

        names: list[str] = []
        store = self.loc.zarr_store(read_only=True)
        for family in FAMILIES:
            if not self.loc.exists(f"{family}/zarr.json"):
                continue
            sub = zarr.open_group(store, path=family, mode="r")
            names += [f"{family}/{n}" for n, a in sub.members(max_depth=None) if isinstance(a, zarr.Array)]
        return sorted(names)

    # -- completion markers ------------------------------------------------------------
    def _marker_key(self, array: str, shard: int) -> str:
        return f"_meta/markers/{_key_of(array)}/{shard:06d}.json"

    def read_marker(self, array: str, shard: int) -> dict[str, Any] | None:
        """The shard's marker; ``None`` (not done) when it is missing or unreadable (warned)."""
        key = self._marker_key(array, shard)
        try:
            got = self.loc.read_json(key)
        except FileNotFoundError:
            return None
        except ValueError as exc:  # empty or torn by a crash: the shard is simply not done
            log.warning(
                "ignoring the unreadable marker %s (%s): shard %d of %s will be done again", key, exc, shard, array
            )
            return None
        return got if isinstance(got, dict) else None

    def is_done(self, array: str, shard: int, version: str, live: list[int] | None = None) -> bool:
        return marker_matches(self.read_marker(array, shard), version, live)

    def write_marker(self, array: str, shard: int, version: str, live: list[int] | None = None, **payload: Any) -> None:
        """Record that ``shard`` of ``array`` is complete for ``version``. Call after the data.

        ``live`` (the item slots the shard was made for) is recorded as a digest: when the
        items of a shard change (a duplicate that became an item), the shard is done again.
        """
        body = {"array": array, "shard": shard, "version": version, "written": now_iso(), **payload}
        if live is not None:
            body["live"] = live_digest(live)
        self.loc.write_json(self._marker_key(array, shard), body)

    def marker_stamps(self, array: str) -> dict[str, str]:
        """The marker files of ``array`` with their stamps (one listing; see ``Location.list_stamps``)."""
        prefix = f"_meta/markers/{_key_of(array)}"
        return {k: v for k, v in self.loc.list_stamps(prefix).items() if k.endswith(".json")}

    @bulk_build
    def markers(self, array: str, stamps: dict[str, str] | None = None) -> dict[int, dict[str, Any]]:
        """All markers of ``array`` by shard index (see :meth:`each_marker`)."""
        return dict(self.each_marker(array, stamps))

    def each_marker(self, array: str, stamps: dict[str, str] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """The markers of ``array`` as (shard, body), in shard order, a piece of the marker
        index at a time: a caller that keeps what it needs of each (the item table of
        302,652 items) never holds all 1,183 bodies at once.

        The marker files are the truth; ``_meta/marker-index/<array>/<piece>.json`` is a
        cache of them, one file per ``INDEX_PIECE`` shards (``INDEX_PIECE_SMALL`` for arrays
        whose markers do not list their items, see :func:`index_piece`): each marker's body with the stamp
        its file had when it was read (ETag on S3; size, mtime and inode locally, see
        ``Location.list_stamps``). One listing of the markers says which files changed
        since; only those are read, so a run with nothing to do reads a few index files, not
        a file per shard (1,183 GETs on S3 for 302,652 items). A piece is rewritten when at
        least ``REINDEX_AFTER`` of its markers were read anew or are gone. It is never
        trusted past the listing: a marker written, replaced or removed after the index was
        written is read (or dropped) as if there were no index. A caller that has just
        listed them (:meth:`marker_stamps`) passes the listing in.
        """
        if stamps is None:
            stamps = self.marker_stamps(array)
        pieces: dict[int, list[tuple[int, str]]] = {}
        piece = index_piece(array)
        for k in stamps:
            name = k.rsplit("/", 1)[1][:-5]
            if name.isdigit():
                pieces.setdefault(int(name) // piece, []).append((int(name), k))
        folder = f"_meta/marker-index/{_key_of(array)}"
        order = sorted(pieces)
        rewrote = False
        for w in range(0, len(order), INDEX_AT_ONCE):
            window = order[w : w + INDEX_AT_ONCE]
            with bulk():
                indexes = self.loc.read_json_many([f"{folder}/{p:06d}.json" for p in window], shared_words)
            for p in window:
                key = f"{folder}/{p:06d}.json"
                members = sorted(pieces[p])
                index = indexes.pop(key, None)
                known: dict[str, str] = {}
                cached: dict[str, Any] = {}
                if isinstance(index, dict) and all(isinstance(index.get(f), dict) for f in ("stamps", "markers")):
                    known, cached = index["stamps"], index["markers"]
                fresh = [k for _, k in members if known.get(k) != stamps[k] or k not in cached]
                with bulk():
                    got = self.loc.read_json_many(fresh, shared_words)
                bodies = {k: got[k] if k in got else cached[k] for _, k in members if k in got or k not in fresh}
                if len(fresh) >= REINDEX_AFTER or (index is not None and len(known) - len(bodies) >= REINDEX_AFTER):
                    try:
                        self.loc.write_json(key, {"stamps": {k: stamps[k] for k in bodies}, "markers": bodies})
                        rewrote = True
                    except Exception as exc:  # a cache: a run that cannot write it reads the markers next time
                        log.debug("marker index of %s not written: %s", array, exc)
                del index, known, cached, got
                for shard, k in members:
                    if k in bodies:
                        yield shard, bodies[k]
                del bodies
        if rewrote:  # the index of older versions, one file for the whole array
            with contextlib.suppress(Exception):
                self.loc.delete(f"{folder}.json")

    def clear_markers(self, array: str, shards: list[int]) -> None:
        for shard in shards:
            self.loc.delete(self._marker_key(array, shard))

    # -- run records ------------------------------------------------------------------
    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The most recent run records (``_meta/runs``, written by every flow run), newest first."""
        keys = [k for k in self.loc.list("_meta/runs") if k.endswith(".json")]
        runs = list(self.loc.read_json_many(keys).values())
        runs.sort(key=_start_time, reverse=True)
        return runs[:limit]

    # -- quarantine --------------------------------------------------------------------
    def quarantine(self, source: str, stage: str, reason: str) -> None:
        """Append an entry to the quarantine log (idempotent for the same source and reason)."""
        digest = hashlib.sha1(f"{stage}\0{source}\0{reason}".encode()).hexdigest()[:20]
        key = f"_meta/quarantine/{safe_key(stage)}/{digest}.json"
        if not self.loc.exists(key):
            self.loc.write_json(key, {"source": source, "stage": stage, "reason": reason, "time": now_iso()})
        log.warning("quarantined %s at %s: %s", source, stage, reason)

    def quarantine_entries(self) -> list[dict[str, Any]]:
        keys: list[str] = []
        for stage_dir in self.loc.list("_meta/quarantine"):
            keys += [k for k in self.loc.list(stage_dir) if k.endswith(".json")]
        entries = list(self.loc.read_json_many(keys).values())
        return sorted(entries, key=lambda e: (e["time"], e["stage"], e["source"]))

    def sub_url(self, key: str) -> str:
        """URL of a location inside the workspace (``sources/synth``), local or ``s3://``."""
        k = safe_key(key)
        return f"{self.url.rstrip('/')}/{k}" if self.loc.remote else self.loc.path(k)

    # -- reports and other plain files -------------------------------------------------
    def write_file(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key``; returns its address (a local path or ``s3://...``)."""
        self.loc.write_bytes(key, data)
        return self.loc.url_of(key)
