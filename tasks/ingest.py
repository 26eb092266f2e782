"""Corpus ingestion: plan which files go to which slots, and fill one shard of them.

:func:`plan_ingest` is pure bookkeeping over the workspace's journal (see
``storage.items``); :func:`ingest_shard` is the Dask-side worker: it reads, hashes and
decodes the sources of one shard, writes that one Zarr shard, quarantines what cannot be
used, and writes the shard's marker last. It is idempotent: a shard whose marker carries
the same producer version is skipped.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from storage.bulk import Lazy, bulk_build
from storage.items import (
    REPLACE_BY_ID,
    Batch,
    ItemCounts,
    ItemTable,
    Journal,
    Live,
    cached_counts,
    item_table,
    items_basis,
    store_counts,
)
from storage.jpeg import conforming
from storage.sources import Listing, Picked, SourceReader, SourceRef, item_id, listing_digests, record_digest
from storage.workspace import DEFAULT_SHARD_SIZE, Workspace, image_spec, marker_matches
from tasks.imageio import DEFAULT_MAX_PIXELS, BadImage, load_square_into, source_format
from tasks.shards import ShardResult

log = logging.getLogger(__name__)

STAGE = "ingest-images"
ARRAY = "corpus/images"
FAMILY = "corpus"
CODE_VERSION = "ingest-1"
# Planning compares the listing with the journal this many files at a time (their digests
# and the comparison's temporaries: about 60 bytes a file, not for all 302,652 at once).
DIGEST_BLOCK = 32_768


class IngestOptions(BaseModel):
    """How source images become corpus items."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(512, ge=16, le=4096, description="side of the square stored image, pixels")
    fit: Literal["crop", "pad"] = Field("crop", description="centre-crop or pad (white) to square")
    min_size: int = Field(0, ge=0, description="refuse images whose shorter side is smaller")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse larger images before decoding")
    max_bytes: int = Field(200_000_000, ge=1, description="refuse larger files before reading them")
    codec: Literal["jpeg", "raw"] | None = Field(
        None,
        description="how corpus images are stored: jpeg (a source JPEG of the right size as it is, others "
        "encoded once) or raw (lossless); fixed when the workspace is created (default: the workspace's, else jpeg)",
    )
    jpeg_quality: int | None = Field(
        None, ge=1, le=100, description="quality of the JPEGs mangaka encodes (default: the workspace's, else 95)"
    )

    @property
    def version(self) -> str:
        """Producer version: changes when anything that shapes the stored pixels changes."""
        key = f"{CODE_VERSION}|{self.size}|{self.fit}|{self.min_size}|{self.max_pixels}|{self.max_bytes}"
        if self.codec == "jpeg":  # raw keeps the version of workspaces from before codecs were a setting
            key += f"|jpeg|{self.jpeg_quality}"
        return hashlib.sha1(key.encode()).hexdigest()[:12]


@dataclass
class IngestPlan:
    """What a run will do: finish open batches, then a new batch for ``new`` sources."""

    open_batches: list[Batch]
    new: Sequence[SourceRef]  # a Picked view of the listing, from plan_ingest
    known: int  # sources already ingested (same place, size and time)
    resuming: int = 0  # listed sources planned by an unfinished batch: done by this run
    refused: list[tuple[str, str]] = field(default_factory=list)  # (source, reason), quarantined by the flow
    skipped_names: int = 0
    table: ItemTable | None = None  # the family's items when planning derived them
    counts: ItemCounts | None = None  # what planning knew of them (always, but for plans made by hand)


@dataclass(frozen=True)
class ShardTask:
    """What every task that fills one shard is given: small and picklable."""

    workspace: str
    shard: int
    version: str  # the producer version its marker will carry
    options: dict[str, Any]


@dataclass(frozen=True)
class ShardSpec(ShardTask):
    """Everything one ingestion task needs: a ``ShardTask`` and the shard's sources."""

    sources: list[dict[str, Any]]


def source_record(ref: SourceRef) -> dict[str, Any]:
    return {**ref.to_dict(), "fingerprint": ref.fingerprint}


def source_records(refs: Sequence[SourceRef]) -> Lazy[dict[str, Any]]:
    """The journal record of each of ``refs``, made when asked."""
    return Lazy(len(refs), lambda i: source_record(refs[i]))


@bulk_build
def plan_ingest(
    ws: Workspace, listing: Listing | Future[Listing], family: str = FAMILY, array: str = ARRAY
) -> IngestPlan:
    """Decide what is new in ``listing`` given everything the workspace already planned.

    ``listing`` may still be in the making (a future): the workspace's journal and what its
    markers say are read first, while the source is listed beside (302,652 files: a few
    seconds each).

    What planning needs of the markers (which shards are done, which files a shard found
    gone) comes from the family's item counts (:func:`storage.items.cached_counts`) when
    they were derived from exactly the markers and journal listed now; otherwise, and
    whenever a listed file is new (to check its id), the markers are read and the item
    table derived. A run with nothing new reads no marker's entries.

    Two files of one listing with the same id: the second is refused. An id already in
    the workspace from another source is refused too, except in families where a new
    file replaces the item of the same id (``storage.items.REPLACE_BY_ID``).
    """
    stamps = ws.marker_stamps(array)
    basis = items_basis(ws, family, stamps)  # listed before anything is read
    counts = cached_counts(ws, family, basis)
    table: ItemTable | None = None

    def derive() -> ItemTable:
        nonlocal table
        if table is None:
            table = item_table(ws, family, array, stamps=stamps)
            table.basis = basis
        return table

    if counts is None:
        counts = ItemCounts.of(ws, derive())
        store_counts(ws, derive(), counts)
    known, pending, open_batches = _read_journal(ws, family, counts)
    id_source: _Ids | None = None

    def ids() -> _Ids:
        """Each id planned or stored, with its source (built when a file is new)."""
        nonlocal id_source
        if id_source is None:
            id_source = _Ids(derive().by_id if family not in REPLACE_BY_ID else None)
            for b in open_batches:
                for planned in b.shards:
                    # a record that names no file (by hand, or an older tool) plans no id
                    id_source.update({item_id(s["relpath"]): s["source"] for s in planned if "relpath" in s})
        return id_source

    if isinstance(listing, Future):
        listing = listing.result()
    refused = list(listing.refused)
    refs = listing.refs
    new = Picked(refs)
    is_known = np.zeros(len(refs), dtype=bool)
    is_pending = np.zeros(len(refs), dtype=bool)
    for start in range(0, len(refs), DIGEST_BLOCK):  # the digests of a block of files at a time
        digests = listing_digests(refs, start, start + DIGEST_BLOCK)
        stop = start + len(digests)
        is_known[start:stop] = known.holds(digests, refs, start)
        is_pending[start:stop] = pending.holds(digests, refs, start) & ~is_known[start:stop]
        del digests
    n_known, resuming = int(is_known.sum()), int(is_pending.sum())
    for i in np.flatnonzero(~(is_known | is_pending)).tolist():
        ref = refs[i]
        other = ids().get(ref.id)
        if other is not None and other != ref.source:
            refused.append(
                (ref.source, f"item id {ref.id!r} is already taken by {other}; ids are file stems and must be unique")
            )
            continue
        ids()[ref.id] = ref.source
        new.append(i)
    if family in REPLACE_BY_ID:
        table = None  # not what the run ends with: a new file may replace an item
    return IngestPlan(open_batches, new, n_known, resuming, refused, listing.skipped_names, table, counts)


def _read_journal(ws: Workspace, family: str, counts: ItemCounts) -> tuple[_Planned, _Planned, list[Batch]]:
    """What the journal planned, as digests (20 bytes a file, not its record): in a done
    shard, stored, duplicate or quarantined for its content (known); in a shard not done
    yet, done by this run (pending); and the batches with a shard not done (open), which
    this run finishes. Batches are read a few at a time and let go, but for the open ones."""
    done = counts.done
    known, pending = _Planned(), _Planned()
    open_batches: list[Batch] = []
    for b in Journal(ws, family).each():
        is_open = False
        for shard, sources in zip(b.shard_indices(), b.shards, strict=True):
            if shard not in done:
                is_open = True
                pending.add(sources)
                continue
            # a file that was gone when its shard ran is not known: if it is back, it is new
            gone = counts.gone.get(shard)
            known.add([s for s in sources if s.get("fingerprint") not in gone] if gone else sources)
        if is_open:
            open_batches.append(b)
    return known, pending, open_batches  # the last batch read (8,192 records) goes with this frame


class _Ids:
    """Item ids with their sources: the stored ones (the item table's, not copied) and those
    planned since (by an unfinished batch or by this run)."""

    def __init__(self, stored: Live | None) -> None:
        self.stored = stored
        self.planned: dict[str, str] = {}

    def get(self, item: str) -> str | None:
        if item in self.planned:
            return self.planned[item]
        return self.stored.source_of(item) if self.stored is not None else None

    def update(self, more: dict[str, str]) -> None:
        self.planned.update(more)

    def __setitem__(self, item: str, source: str) -> None:
        self.planned[item] = source


class _Planned:
    """Journal records as planning compares them with a listing: the :func:`record_digest`
    of each (20 bytes), or the fingerprint of a record that lacks place, size or time."""

    def __init__(self) -> None:
        self._digests = bytearray()
        self._fingerprints: set[str] = set()
        self._sorted = False

    def add(self, records: list[dict[str, Any]]) -> None:
        self._sorted = False
        buf = self._digests
        for r in records:
            d = record_digest(r)
            if d is None:
                self._fingerprints.add(r["fingerprint"])
            else:
                buf += d

    def holds(self, digests: np.ndarray, refs: Sequence[SourceRef], start: int = 0) -> np.ndarray:
        """Whether each of ``refs[start:]`` with its listing ``digests`` is one of these
        records (as many as there are digests)."""
        n = len(digests)
        out = np.zeros(n, dtype=bool)
        if self._digests and n:
            planned = np.frombuffer(self._digests, dtype="S20")  # a view: sorted in place, once
            if not self._sorted:
                planned.sort()
                self._sorted = True
            at = np.minimum(np.searchsorted(planned, digests), len(planned) - 1)
            out = planned[at] == digests
            del planned  # a bytearray with a view on it cannot grow
        if self._fingerprints:
            fps = self._fingerprints
            out |= np.fromiter((refs[i].fingerprint in fps for i in range(start, start + n)), dtype=bool, count=n)
        return out


def start_batches(
    ws: Workspace,
    listing: Listing | Future[Listing],
    family: str,
    array: str,
    stage: str,
    version: str,
    options: dict[str, Any],
    planned: Callable[[IngestPlan], None] | None = None,
) -> tuple[IngestPlan, list[Batch]]:
    """Plan a run: quarantine what planning refused, journal a batch for the new sources.

    ``planned(plan)`` is called as soon as the plan is made, before anything is written.

    Returns the plan and the batches to run: open ones of earlier runs first, then the new.
    Call from one process only (the flow): it is the journal's single writer.
    """
    plan = plan_ingest(ws, listing, family, array)
    if planned is not None:
        planned(plan)
    for source, reason in plan.refused:
        ws.quarantine(source, stage, reason)
    batches = list(plan.open_batches)
    if batches:
        log.info("resuming %d unfinished batch(es) of an earlier run", len(batches))
    if plan.new:
        batches += Journal(ws, family).extend(version, options, source_records(plan.new))
    return plan, batches


def fix_shard_size(ws: Workspace, shard_size: int | None, **settings: Any) -> None:
    """Record the workspace's shard size (``None``: keep it, or the default for a new one)."""
    if shard_size is None and "shard_size" not in ws.config():
        shard_size = DEFAULT_SHARD_SIZE
    ws.ensure_config(shard_size=shard_size, **settings)


def ref_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "fingerprint"}


def shard_specs(
    ws: Workspace, batch: Batch, array: str = ARRAY, markers: dict[int, dict[str, Any]] | None = None
) -> Sequence[ShardSpec]:
    """Specs of the shards of ``batch`` whose marker on ``array`` (``markers``, when the
    caller read them) is missing or stale, each made when asked."""
    done = ws.markers(array) if markers is None else markers
    todo = [
        shard for shard in batch.shard_indices() if (m := done.get(shard)) is None or m.get("version") != batch.version
    ]

    def spec(i: int) -> ShardSpec:
        return ShardSpec(ws.url, todo[i], batch.version, batch.options, batch.sources_of(todo[i]))

    return Lazy(len(todo), spec)


def resolve_codec(ws: Workspace, options: IngestOptions) -> IngestOptions:
    """``options`` with the workspace's codec and JPEG quality filled in (recorded by the
    first ingestion); a :class:`~storage.workspace.WorkspaceError` if they ask for others."""
    codec, quality = ws.fix_codec(options.codec, options.jpeg_quality)
    return options.model_copy(update={"codec": codec, "jpeg_quality": quality if codec == "jpeg" else None})


def prepare_array(ws: Workspace, options: IngestOptions, length: int) -> None:
    """Create or grow ``corpus/images`` (single writer of the array's metadata: the flow)."""
    ws.ensure_config(image_size=options.size)
    codec, quality = ws.image_codec()
    spec = image_spec(options.size, options.codec or codec, options.jpeg_quality or quality)
    ws.require_array(ARRAY, spec, length, owner=STAGE)


class Unusable(Exception):
    """A source whose content cannot be used, for a reason that retrying will not change."""


class Vanished(Exception):
    """A source that was listed but is gone when its shard reads it (deleted or moved)."""


class SourceReadError(OSError):
    """Reading a source failed (EIO, a permission refused, a network fault): a fault of the
    run, not of the file. The shard fails (retried when transient) and is done again by the
    next run; the file is never quarantined for it."""


def read_source(reader: SourceReader, ref: SourceRef, limit: int) -> bytes:
    """The file's bytes.

    Refused content (oversized, not a regular file) is :class:`Unusable` and quarantined;
    a file that is gone is :class:`Vanished` (recorded, not quarantined: if it comes back
    it is ingested then); every other error propagates (as :class:`SourceReadError` for
    I/O errors), so the shard fails and nothing is quarantined for a fault of the run.
    """
    try:
        return reader.read(ref, limit=limit)
    except ValueError as exc:
        raise Unusable(f"refused: {exc}") from None
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise Vanished(f"gone since it was listed: {exc.strerror or exc}") from None
    except IsADirectoryError as exc:
        raise Unusable(f"refused: {exc.strerror or exc}") from None
    except OSError as exc:
        if ref.kind in ("file", "tar"):
            raise SourceReadError(exc.errno, f"cannot read {ref.source}: {exc.strerror or exc}") from exc
        raise


_BUFFERS: dict[tuple[int, ...], np.ndarray] = {}


def shard_buffer(n: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """A reusable ``(n, *item_shape)`` uint8 buffer: first-touching 200 MB of fresh pages
    costs more than decoding into them, so each worker process allocates one once."""
    buf = _BUFFERS.get(item_shape)
    if buf is None or len(buf) < n:
        if len(_BUFFERS) > 2:
            _BUFFERS.clear()
        buf = _BUFFERS[item_shape] = np.zeros((n, *item_shape), dtype=np.uint8)
    return buf[:n]


class OneShard(Protocol):
    """Any shard task's spec: the workspace, the shard and the version its marker will carry."""

    @property
    def workspace(self) -> str: ...
    @property
    def shard(self) -> int: ...
    @property
    def version(self) -> str: ...


S = TypeVar("S", bound=OneShard)


def unless_done(array: str) -> Callable[[Callable[[S, Workspace], ShardResult]], Callable[[S], ShardResult]]:
    """Make ``task(spec, ws)`` idempotent: it runs only when the marker of ``spec.shard`` on
    ``array`` does not carry ``spec.version`` yet, and otherwise returns ``skipped=True``."""

    def wrap(task: Callable[[S, Workspace], ShardResult]) -> Callable[[S], ShardResult]:
        @functools.wraps(task)
        def run(spec: S) -> ShardResult:
            ws = Workspace(spec.workspace)
            marker = ws.read_marker(array, spec.shard)
            if marker_matches(marker, spec.version, None):
                # Done already, in this run: the flow plans only shards without a marker, so
                # an attempt that wrote this one was lost with its worker. Report its counts.
                assert marker is not None
                status = [e.get("status") for e in marker.get("entries", [])]
                as_is = sum(1 for e in marker.get("entries", []) if e.get("stored") == "as-is")
                return ShardResult(
                    array, spec.shard, True, status.count("ok"), status.count("quarantined"), as_is=as_is
                )
            return task(spec, ws)

        sig = inspect.signature(task)  # callers (Prefect's task binding) see ``run(spec)``, not ``task``'s two
        run.__signature__ = sig.replace(parameters=list(sig.parameters.values())[:1])  # type: ignore[attr-defined]
        return run

    return wrap


def read_shard_sources(
    ws: Workspace,
    sources: list[dict[str, Any]],
    start: int,
    stage: str,
    limit: int,
    use: Callable[[int, bytes, SourceRef, dict[str, Any]], None],
    judged: tuple[type[Exception], ...] = (),
    faults: tuple[type[Exception], ...] = (),
    decoder: str = "decoder error",
) -> tuple[list[dict[str, Any]], list[int]]:
    """Read each source of a shard (slots from ``start``) and hand its bytes to ``use(j,
    raw, ref, entry)``; the marker entries of all of them and the holes of the shard.

    A source that is gone is recorded ``missing`` (not quarantined: it is ingested when it
    is back); one whose content is refused (:class:`Unusable`, a ``judged`` error, or any
    other error of ``use``, reported as ``decoder``) is quarantined at ``stage``. A fault of
    the run (:class:`SourceReadError` or a ``faults`` error) propagates: the shard fails and
    is done again, and no file is judged for it.
    """
    fatal: tuple[type[Exception], ...] = (SourceReadError, *faults)
    refused: tuple[type[Exception], ...] = (Unusable, *judged)
    entries: list[dict[str, Any]] = []
    holes: list[int] = []
    with SourceReader() as reader:
        for j, record in enumerate(sources):
            ref = SourceRef.from_dict(ref_fields(record))
            entry: dict[str, Any] = {"slot": start + j, "id": ref.id, "source": ref.source, "fp": record["fingerprint"]}
            entries.append(entry)
            try:
                use(j, read_source(reader, ref, limit), ref, entry)
                entry["status"] = "ok"
                continue
            except fatal:
                raise
            except Vanished as exc:
                log.warning("%s: %s; it is ingested when it is there again", ref.source, exc)
                entry.update(status="missing", reason=str(exc))
                holes.append(j)
                continue
            except refused as exc:
                reason = str(exc)
            except Exception as exc:  # decoders are the hostile surface: isolate each file
                reason = f"{decoder}: {exc.__class__.__name__}: {exc}"
            ws.quarantine(ref.source, stage, reason)
            entry.update(status="quarantined", reason=reason)
            holes.append(j)
    return entries, holes


@unless_done(ARRAY)
def ingest_shard(spec: ShardSpec, ws: Workspace) -> ShardResult:
    """Read, decode and store the sources of one shard; quarantine the bad ones.

    In a JPEG workspace a source that already is what the workspace stores (see
    ``storage.jpeg.conforming``) is stored byte for byte; every other source is decoded,
    made square and encoded once. Each marker entry says which (``stored``: ``as-is``,
    ``re-encoded`` or ``decoded`` for raw workspaces) and the source's ``format``.
    Idempotent: returns ``skipped=True`` when the shard's marker already has ``spec.version``.
    """
    t0 = time.perf_counter()
    opts = IngestOptions(**spec.options)
    data = shard_buffer(len(spec.sources), (opts.size, opts.size, 3))
    as_is: dict[int, bytes] = {}
    jpeg_array = ws.codec_of(ARRAY) == "jpeg"  # what the array stores decides, whatever the options say
    keep = jpeg_array and opts.min_size <= opts.size and opts.size * opts.size <= opts.max_pixels

    def use(j: int, raw: bytes, ref: SourceRef, entry: dict[str, Any]) -> None:
        entry["sha256"] = hashlib.sha256(raw).hexdigest()
        if keep and conforming(raw, opts.size) is None:
            as_is[j] = raw
            entry.update(stored="as-is", format="JPEG")
            return
        load_square_into(raw, data[j], opts.fit, opts.max_pixels, opts.min_size)
        entry.update(stored="re-encoded" if jpeg_array else "decoded", format=source_format(raw))

    start = spec.shard * ws.shard_size
    entries, holes = read_shard_sources(ws, spec.sources, start, STAGE, opts.max_bytes, use, judged=(BadImage,))
    n_bad = sum(e["status"] == "quarantined" for e in entries)
    ws.write_shard(ARRAY, spec.shard, data, holes, encoded=as_is)
    ws.write_marker(ARRAY, spec.shard, spec.version, entries=entries)
    dt = time.perf_counter() - t0
    n_ok = sum(e["status"] == "ok" for e in entries)
    log.info("shard %d: %d stored (%d as is), %d quarantined in %.1f s", spec.shard, n_ok, len(as_is), n_bad, dt)
    return ShardResult(ARRAY, spec.shard, False, len(entries) - n_bad, n_bad, dt, as_is=len(as_is))
