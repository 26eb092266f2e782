"""Items: which slot holds which image, and the ingestion journal that assigns slots.

Ingestion works in *batches*. Before any data is written, a run records its plan as
``_meta/batches/<family>/<n>.json``: the first slot (``base``, always on a shard boundary)
and, per shard, the sources it will read. Tasks then fill their shards and write markers
whose ``entries`` say, slot by slot, what each source became (its id and content hash, or
the reason it was quarantined). A killed run leaves an *open* batch (some markers missing);
the next run finishes exactly that plan before it plans anything new, so an interrupted
and resumed run ends with the same slots and bytes as an uninterrupted one. New items
always go to new shards: no existing shard is ever rewritten by a later ingestion.

The :class:`ItemTable` is derived from the markers, in slot order:

- the first slot with a given content hash holds the item; a later one with the same hash
  is a duplicate: stored in its slot, but not an item while that picture is live elsewhere;
- a later slot with the same id *and the same source* replaces the earlier one (a file that
  was changed in place); the earlier content passes to the first id waiting on it as a
  duplicate, if any, else its slot becomes a hole (see :func:`derive_items`).

``<family>/item`` (one id per slot, ``""`` for holes) mirrors the table for readers that do
not use mangaka; it is rewritten from the markers after every run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from array import array
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.bulk import Indexed, bulk, bulk_build
from storage.workspace import Workspace, live_digest, now_iso, shared_words

log = logging.getLogger(__name__)

# Families where a new file with an item's id replaces that item whatever its source: a
# corrected annotation comes back from wherever the annotator saved it.
REPLACE_BY_ID = frozenset({"annotated", "generated"})


@dataclass
class Batch:
    """One ingestion plan: ``shards[j]`` lists the sources of global shard ``first_shard + j``."""

    family: str
    number: int
    base: int
    shard_size: int
    version: str
    options: dict[str, Any]
    shards: Sequence[list[dict[str, Any]]]  # lists, or cut from the run's sources when asked (Pieces)
    created: str = ""

    @property
    def first_shard(self) -> int:
        return self.base // self.shard_size

    @property
    def n_sources(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def end(self) -> int:
        """One past the last slot this batch uses."""
        if not self.shards:
            return self.base
        return self.base + (len(self.shards) - 1) * self.shard_size + len(self.shards[-1])

    def shard_indices(self) -> list[int]:
        return [self.first_shard + j for j in range(len(self.shards))]

    def sources_of(self, shard: int) -> list[dict[str, Any]]:
        return self.shards[shard - self.first_shard]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "number": self.number,
            "base": self.base,
            "shard_size": self.shard_size,
            "version": self.version,
            "options": self.options,
            "shards": [list(sh) for sh in self.shards],
            "created": self.created,
        }


class Pieces(Indexed[list[dict[str, Any]]]):
    """The shards of a batch, cut from ``sources[start:stop]`` when asked: a run that
    journalled 302,652 records a piece at a time holds its sources, not the records."""

    __slots__ = ("_sources", "_start", "_stop", "_size")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, sources: Sequence[dict[str, Any]], start: int, stop: int, shard_size: int) -> None:
        self._sources, self._start, self._stop, self._size = sources, start, stop, shard_size

    def __len__(self) -> int:
        return -(-(self._stop - self._start) // self._size)

    def _item(self, j: int) -> list[dict[str, Any]]:
        a = self._start + j * self._size
        return list(self._sources[a : min(self._stop, a + self._size)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)


# Records a batch file holds at most when a run journals many files (whole shards, at
# least one; ``MANGAKA_JOURNAL_PIECE`` sets another count): planning reads the journal a
# few pieces at a time.
PIECE_RECORDS = 8192


def piece_shards(shard_size: int) -> int:
    """Shards in one piece of a run's journal."""
    raw = os.environ.get("MANGAKA_JOURNAL_PIECE") or str(PIECE_RECORDS)
    if not raw.isdigit():
        raise ValueError(f"MANGAKA_JOURNAL_PIECE must be a number of records, not {raw!r}")
    return max(1, int(raw) // shard_size)


class Journal:
    """The batches of one item family (``corpus``, ``annotated``, ...)."""

    def __init__(self, ws: Workspace, family: str) -> None:
        self.ws = ws
        self.family = family

    def _prefix(self) -> str:
        return f"_meta/batches/{self.family}"

    def _keys(self) -> list[str]:
        """The batch files, by number (their names; a name that is no number last)."""
        keys = [k for k in self.ws.loc.list(self._prefix()) if k.endswith(".json")]

        def order(key: str) -> tuple[bool, int, str]:
            name = key.rsplit("/", 1)[-1][:-5]
            return (not name.isdigit(), int(name) if name.isdigit() else 0, key)

        return sorted(keys, key=order)

    def batches(self) -> list[Batch]:
        """The readable batches, by number; an unreadable one is skipped with a warning."""
        return sorted(self.each(), key=lambda b: b.number)

    def each(self, at_once: int | None = None) -> Iterator[Batch]:
        """The readable batches, by number, read ``at_once`` files at a time (one on local
        disk, two on S3, where one GET's latency hides behind the other): a caller that
        lets each go holds one or two pieces of the journal, not all of it (a corpus of
        302,652 files has 37 pieces, 4.7 MB each as records). An unreadable one is skipped
        with a warning."""
        keys = self._keys()
        if at_once is None:
            at_once = 2 if self.ws.loc.remote else 1
        for i in range(0, len(keys), at_once):
            out = []
            with bulk():
                for key, v in self.ws.loc.read_json_many(keys[i : i + at_once], shared_words).items():
                    try:
                        out.append(Batch(**v))
                    except TypeError as exc:
                        log.warning("ignoring the damaged ingestion batch %s (%s)", key, exc)
            out.sort(key=lambda b: b.number)
            while out:
                yield out.pop(0)

    def add(self, version: str, options: dict[str, Any], sources: list[dict[str, Any]]) -> Batch:
        """Record one new batch for ``sources`` (see :meth:`extend`)."""
        return self.extend(version, options, sources, pieces=False)[0]

    def extend(
        self,
        version: str,
        options: dict[str, Any],
        sources: Sequence[dict[str, Any]],
        pieces: bool = True,
    ) -> list[Batch]:
        """Record new batches for ``sources`` after every existing one, on a shard boundary,
        each of at most :func:`piece_shards` shards (``pieces=False``: one batch), in slot
        order. ``sources`` that are not a list (made when asked) are not held by the
        batches returned: their shards are cut from ``sources`` again when asked.

        Their numbers follow every batch file (readable or not) and their first slot follows
        every readable batch and every shard with a marker, so a damaged batch file can
        never lead a new batch onto slots that hold data. Each piece is written whole (a
        run killed between two has journalled the first; the next run plans the rest).
        """
        s = self.ws.shard_size
        end = max((b.end for b in self.each()), default=0)
        marked = self.ws.marker_stamps(f"{self.family}/images")
        if marked:
            end = max(end, (max(int(k.rsplit("/", 1)[1][:-5]) for k in marked) + 1) * s)
        if self.ws.has_array(f"{self.family}/images"):
            end = max(end, self.ws.length(f"{self.family}/images"))
        base = -(-end // s) * s
        numbers = [int(n) for k in self._keys() if (n := k.rsplit("/", 1)[-1][:-5]).isdigit()]
        number = max(numbers, default=0) + 1
        n_shards = -(-len(sources) // s)
        step = piece_shards(s) if pieces else max(n_shards, 1)
        out = []
        for j in range(0, max(n_shards, 1), step):
            a, b = j * s, min(len(sources), (j + step) * s)
            piece = [list(sources[k : min(b, k + s)]) for k in range(a, b, s)]
            batch = Batch(self.family, number, base + a, s, version, options, piece, now_iso())
            self.ws.loc.write_json(f"{self._prefix()}/{number:06d}.json", batch.to_dict())
            if not isinstance(sources, list):  # made when asked: let this piece's records go
                batch.shards = Pieces(sources, a, b, s)
            out.append(batch)
            number += 1
        return out

    def length(self) -> int:
        return max((b.end for b in self.each()), default=0)


class Live(MutableMapping[str, dict[str, Any]]):
    """The live items of a table by id, held as columns (about 180 bytes an item, where a
    marker entry's dict is about 700): what the item table keeps of each is its slot,
    source and content hash (and, in derived families, its parent). A source is held as its
    folder (one string for all the files of a folder) and the UTF-8 bytes of the rest.
    Reading an item makes its dict (``id``, ``slot``, ``source``, ``sha256``, ``parent``
    when set) anew; ids keep the order they were set in, as a dict's keys do.
    """

    __slots__ = (
        *("_row", "_slot", "_sha"),
        *("_heads", "_head_of", "_src_head", "_src", "_src_end"),
        *("_parent", "_odd"),
    )

    def __init__(self) -> None:
        self._row: dict[str, int] = {}
        self._slot = array("q")
        self._sha = bytearray()
        self._heads: list[str] = []  # source folders (up to the last "/")
        self._head_of: dict[str, int] = {}
        self._src_head = array("I")
        self._src = bytearray()  # the rest of each source, UTF-8, one after the other
        self._src_end = array("q")
        self._parent: dict[int, str] = {}
        self._odd: dict[int, str] = {}  # rows whose sha256 is not 64 hex digits: as given

    def __len__(self) -> int:
        return len(self._row)

    def __iter__(self) -> Iterator[str]:
        return iter(self._row)

    def __contains__(self, item: object) -> bool:
        return item in self._row

    def __getitem__(self, item: str) -> dict[str, Any]:
        return self._entry(item, self._row[item])

    def _entry(self, item: str, r: int) -> dict[str, Any]:
        sha = self._odd.get(r)
        e = {
            "id": item,
            "slot": self._slot[r],
            "source": self._source_at(r),
            "sha256": self._sha[32 * r : 32 * r + 32].hex() if sha is None else sha,
        }
        if r in self._parent:
            e["parent"] = self._parent[r]
        return e

    def __setitem__(self, item: str, e: dict[str, Any]) -> None:
        if item in self._row:
            del self[item]
        r = len(self._slot)
        sha = e["sha256"]
        try:
            raw = bytes.fromhex(sha) if isinstance(sha, str) and len(sha) == 64 else b""
        except ValueError:
            raw = b""
        if len(raw) != 32 or raw.hex() != sha:  # upper case or odd: kept as given
            self._odd[r] = sha
            raw = bytes(32)
        self._sha += raw
        self._slot.append(int(e["slot"]))
        source = str(e["source"])
        cut = source.rfind("/") + 1
        head = source[:cut]
        h = self._head_of.get(head)
        if h is None:
            h = self._head_of[head] = len(self._heads)
            self._heads.append(head)
        self._src_head.append(h)
        self._src += source[cut:].encode("utf-8", "surrogatepass")
        self._src_end.append(len(self._src))
        if e.get("parent") is not None:
            self._parent[r] = e["parent"]
        self._row[item] = r

    def __delitem__(self, item: str) -> None:
        r = self._row.pop(item)
        self._parent.pop(r, None)
        self._odd.pop(r, None)

    def _source_at(self, r: int) -> str:
        start = self._src_end[r - 1] if r else 0
        return self._heads[self._src_head[r]] + self._src[start : self._src_end[r]].decode("utf-8", "surrogatepass")

    def source_of(self, item: str) -> str | None:
        r = self._row.get(item)
        return None if r is None else self._source_at(r)

    def slots(self) -> Iterator[int]:
        """The slot of each live item, in :meth:`__iter__` order."""
        return (self._slot[r] for r in self._row.values())

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:  # type: ignore[override]
        return ((i, self._entry(i, r)) for i, r in self._row.items())

    def values(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        return (self._entry(i, r) for i, r in self._row.items())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and all(k in other and other[k] == v for k, v in self.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Live({len(self)} items)"


@dataclass
class ItemTable:
    """Live items of a family, by id and by slot, and what was set aside.

    ``pending`` counts sources planned by a batch whose shard is not done yet (a killed
    or running ingestion): they are not items yet, and not "already there" either.
    """

    family: str
    length: int
    by_id: Live = field(default_factory=Live)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    replaced: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    pending: int = 0
    # Shards whose marker was read (a marker that cannot be read is as if its shard were
    # not done: its batch is open, and the next ingestion finishes it).
    done: frozenset[int] = frozenset()
    # What the table was derived from (a digest of the listing of its markers and journal,
    # taken before they were read), when :func:`item_table` read them itself; see
    # :func:`item_counts`.
    basis: str | None = None
    _order: tuple[np.ndarray, list[str]] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.by_id)

    @property
    def by_slot(self) -> dict[int, str]:
        return dict(zip(self.by_id.slots(), self.by_id, strict=True))

    def slots_in(self, slots: range) -> list[tuple[int, str]]:
        """(slot, id) of the live items inside ``slots``, in slot order (a binary search in
        the table's slot order, built once: a run asks this for every shard)."""
        if self._order is None or len(self._order[0]) != len(self.by_id):
            keys = np.fromiter(self.by_id.slots(), dtype=np.int64, count=len(self.by_id))
            order = np.argsort(keys, kind="stable")
            ids = list(self.by_id)
            self._order = (keys[order], [ids[i] for i in order.tolist()])
        keys, ids = self._order
        a, b = np.searchsorted(keys, [slots.start, slots.stop]).tolist()
        return list(zip(keys[a:b].tolist(), ids[a:b], strict=True))

    def ids_array(self) -> np.ndarray:
        ids = np.full(self.length, "", dtype=object)
        for slot, i in zip(self.by_id.slots(), self.by_id, strict=True):
            ids[slot] = i
        return ids


@bulk_build
def item_table(ws: Workspace, family: str, array: str | None = None, stamps: dict[str, str] | None = None) -> ItemTable:
    """Build the item table of ``family`` from the markers of its ingestion array (and its
    journal). The markers (listed as ``stamps``, when the caller has listed them; it then
    sets the table's basis) are read a piece of the marker index at a time
    (:meth:`Workspace.each_marker`) and only what the table keeps of each entry is held."""
    if family in DERIVED:
        return derived_table(ws, family)
    array = array or f"{family}/images"
    basis = None
    if stamps is None:
        stamps = ws.marker_stamps(array)
        basis = items_basis(ws, family, stamps)  # listed with the markers
    versions: dict[int, Any] = {}

    def entries() -> Iterator[dict[str, Any]]:
        for shard, m in ws.each_marker(array, stamps):
            versions[shard] = m.get("version")
            yield from sorted(m.get("entries", []), key=_slot_of)  # shards come in slot order

    table = _derive(family, entries())
    table.basis = basis
    table.done = frozenset(versions)
    table.length = table.pending = 0
    for b in Journal(ws, family).each():  # a few pieces at a time
        table.length = max(table.length, b.end)
        table.pending += sum(
            len(sources)
            for shard, sources in zip(b.shard_indices(), b.shards, strict=True)
            if shard not in versions or versions[shard] != b.version
        )
    return table


def _slot_of(e: dict[str, Any]) -> int:
    return int(e["slot"])


def _hash_key(sha: Any) -> Any:
    """A content hash as a dict key: its 32 bytes (65 in memory, the hex string 113)."""
    if isinstance(sha, str) and len(sha) == 64:
        try:
            raw = bytes.fromhex(sha)
        except ValueError:
            return sha
        if raw.hex() == sha:
            return raw
    return sha


def derive_items(family: str, entries: Iterable[dict[str, Any]]) -> ItemTable:
    """The item table that marker ``entries`` describe, read in slot order.

    - The first slot with a given content hash holds the item; a later one with the same
      hash is a *duplicate*: its pixels are stored in its own slot, but it is not an item
      while the same picture is live under another id.
    - A later slot with the same id *and the same source* replaces the earlier one (a file
      changed in place; in ``REPLACE_BY_ID`` families any source). The earlier content
      leaves that id; if another id was waiting as its duplicate, the first such (by slot)
      becomes live with the slot it was stored in, so no picture that is still in the
      source ever ends up under no id.
    - A duplicate whose own file changes stops waiting: its old picture is no longer
      anyone's current content.
    """
    return _derive(family, sorted(entries, key=_slot_of))


def _derive(family: str, entries: Iterable[dict[str, Any]]) -> ItemTable:
    """:func:`derive_items` of ``entries`` that come in slot order."""
    table = ItemTable(family, 0)
    by_hash: dict[Any, str] = {}  # content hash (_hash_key) -> live id
    waiting: dict[str, dict[str, Any]] = {}  # id -> its current content, a duplicate of a live item
    waiting_by_hash: dict[Any, list[str]] = {}  # hash -> ids waiting on it (slot order)

    def unwait(item: str) -> None:
        w = waiting.pop(item, None)
        if w is not None:
            waiting_by_hash[_hash_key(w["sha256"])].remove(item)

    def wait(e: dict[str, Any], holder: str) -> None:
        waiting[e["id"]] = {**e, "duplicate_of": holder}
        waiting_by_hash.setdefault(_hash_key(e["sha256"]), []).append(e["id"])

    def release(old: dict[str, Any]) -> None:
        """``old`` is no longer its id's content: hand its picture to the first waiting duplicate."""
        sha = _hash_key(old["sha256"])
        by_hash.pop(sha, None)
        heirs = waiting_by_hash.get(sha) or []
        if heirs:
            heir = heirs[0]
            promoted = {k: v for k, v in waiting[heir].items() if k != "duplicate_of"}
            unwait(heir)
            table.by_id[heir] = promoted
            by_hash[sha] = heir
            for other in waiting_by_hash.get(sha, []):
                waiting[other]["duplicate_of"] = heir

    for e in entries:
        status = e.get("status")
        if status == "missing":
            table.missing.append(e)
            continue
        if status != "ok":
            table.quarantined.append(e)
            continue
        item = e["id"]
        old = table.by_id.get(item)
        earlier = old or waiting.get(item)
        if earlier is not None and earlier["source"] != e["source"] and family not in REPLACE_BY_ID:
            # Planning keeps ids unique across sources; a clash here means two runs
            # raced on one workspace. Keep the first and say so rather than lose either.
            table.duplicates.append({**e, "duplicate_of": item, "clash": True})
            continue
        unwait(item)  # whatever this id held before as a duplicate is superseded
        key = _hash_key(e["sha256"])
        holder = by_hash.get(key)
        if holder == item:  # the same picture again under its own id (a touched file)
            table.duplicates.append({**e, "duplicate_of": holder})
            continue
        if old is not None:
            del table.by_id[item]
            table.replaced.append(old)
            release(old)
            holder = by_hash.get(key)
        if holder is not None:
            wait(e, holder)
            continue
        table.by_id[item] = e
        by_hash[key] = item
    table.duplicates.extend(sorted(waiting.values(), key=lambda d: d["slot"]))
    table.duplicates.sort(key=lambda d: d["slot"])
    return table


def items_basis(ws: Workspace, family: str, marker_stamps: dict[str, str] | None = None) -> str:
    """A digest of everything an item table is derived from, by listing only: the stamps
    of the family's marker files and journal files, and the shard size. Any marker or batch
    written, replaced or removed changes it."""
    if marker_stamps is None:
        marker_stamps = ws.marker_stamps(f"{family}/images")
    journal = ws.loc.list_stamps(f"_meta/batches/{family}")
    h = hashlib.sha256(f"{COUNTS_FORMAT}\0{ws.shard_size}\0".encode())
    for stamps in (marker_stamps, journal):
        for k in sorted(stamps):
            h.update(f"{posixpath.basename(k)}\0{stamps[k]}\0".encode())
        h.update(b"\1")
    return h.hexdigest()


@dataclass
class ItemCounts:
    """What ``status`` and planning need of an item table, small whatever the corpus size:
    how many items, planned but not done, and duplicates, the slots in use, the live items
    of each shard, the shards that are done, and the files each done shard found gone."""

    family: str
    items: int
    pending: int
    duplicates: int
    length: int
    live: dict[int, int]  # shard -> live items in it
    done: frozenset[int] = frozenset()  # shards whose marker was read
    gone: dict[int, frozenset[str]] = field(default_factory=dict)  # shard -> fingerprints of files gone when it ran
    digests: dict[int, str] = field(default_factory=dict)  # shard -> live_digest of its live slots

    @classmethod
    def of(cls, ws: Workspace, table: ItemTable) -> ItemCounts:
        s = ws.shard_size
        slots: dict[int, list[int]] = {}
        for slot in table.by_id.slots():
            slots.setdefault(slot // s, []).append(slot)
        live = {k: len(v) for k, v in slots.items()}
        gone: dict[int, set[str]] = {}
        for e in table.missing:
            if e.get("fp") is not None:
                gone.setdefault(e["slot"] // s, set()).add(e["fp"])
        return cls(
            table.family,
            len(table),
            table.pending,
            len(table.duplicates),
            table.length,
            live,
            table.done,
            {k: frozenset(v) for k, v in gone.items()},
            {k: live_digest(v) for k, v in slots.items()},
        )

    def to_dict(self, basis: str) -> dict[str, Any]:
        return {
            "format": COUNTS_FORMAT,
            "basis": basis,
            "family": self.family,
            "items": self.items,
            "pending": self.pending,
            "duplicates": self.duplicates,
            "length": self.length,
            "live": {str(k): v for k, v in sorted(self.live.items())},
            "done": sorted(self.done),
            "gone": {str(k): sorted(v) for k, v in sorted(self.gone.items())},
            "digests": {str(k): v for k, v in sorted(self.digests.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemCounts:
        live = {int(k): int(v) for k, v in d["live"].items()}
        done = frozenset(int(k) for k in d["done"])
        gone = {int(k): frozenset(str(f) for f in v) for k, v in d["gone"].items()}
        digests = {int(k): str(v) for k, v in d["digests"].items()}
        if set(digests) != set(live):
            raise ValueError("live digests and live counts name different shards")
        head = (str(d["family"]), int(d["items"]), int(d["pending"]), int(d["duplicates"]), int(d["length"]))
        return cls(*head, live, done, gone, digests)


COUNTS_FORMAT = 2


def _counts_key(family: str) -> str:
    return f"_meta/item-counts/{family}.json"


def cached_counts(ws: Workspace, family: str, basis: str) -> ItemCounts | None:
    """The counts stored for ``family`` if they were derived from exactly ``basis`` (see
    :func:`items_basis`), else ``None``."""
    cached = ws.loc.read_json_or_none(_counts_key(family))
    if isinstance(cached, dict) and cached.get("format") == COUNTS_FORMAT and cached.get("basis") == basis:
        try:
            return ItemCounts.from_dict(cached)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.debug("item counts of %s unreadable, derived anew: %s", family, exc)
    return None


def _counts(ws: Workspace, family: str) -> tuple[ItemCounts, ItemTable | None]:
    """``family``'s counts, with the item table when it had to be derived for them (else
    ``None``): from the cache when it was derived from exactly the markers and journal
    listed now, else derived anew and stored for the next caller."""
    if family in DERIVED:
        table = derived_table(ws, family)
        return ItemCounts.of(ws, table), table
    cached = cached_counts(ws, family, items_basis(ws, family))
    if cached is not None:
        return cached, None
    table = item_table(ws, family)
    counts = ItemCounts.of(ws, table)
    store_counts(ws, table, counts)
    return counts, table


def item_counts(ws: Workspace, family: str) -> ItemCounts:
    """The counts of ``family``'s item table, from ``_meta/item-counts/<family>.json`` when
    that was derived from exactly the markers and journal listed now, else derived anew (and
    stored for the next caller). The markers stay the truth: the file is a cache keyed by
    their listing, so ``status`` on 302,652 items reads a few listings and one small file,
    not every marker's entries, and its memory does not grow with the corpus."""
    return _counts(ws, family)[0]


class ItemView:
    """A family's items as a run plans with them: the counts (:func:`item_counts`, from the
    cache when it is current) at once, the whole table only when asked (:meth:`table`).

    A run with nothing to do decides so from the counts alone: a shard is done when its
    marker's version and live digest match the counts' (see :func:`flows.shards.pending_of`).
    """

    def __init__(self, ws: Workspace, family: str) -> None:
        self.ws = ws
        self.family = family
        self.counts, self._table = _counts(ws, family)  # the table only when derived now

    def __len__(self) -> int:
        return len(self._table) if self._table is not None else self.counts.items

    @property
    def length(self) -> int:
        return self._table.length if self._table is not None else self.counts.length

    def table(self) -> ItemTable:
        """The item table, derived from the markers now (once)."""
        if self._table is None:
            self._table = item_table(self.ws, self.family)  # derived families: see item_table
        return self._table


def store_counts(ws: Workspace, table: ItemTable, counts: ItemCounts | None = None) -> None:
    if table.basis is None or table.family in DERIVED:
        return
    counts = counts or ItemCounts.of(ws, table)
    try:
        ws.loc.write_json(_counts_key(table.family), counts.to_dict(table.basis))
    except Exception as exc:  # a cache: whoever cannot write it derives the counts next time
        log.debug("item counts of %s not written: %s", table.family, exc)


# Per-slot index arrays (strings) that mirror item tables; not stages of their own.
INDEX_ARRAYS = frozenset({"item", "parent"})


def is_index_array(array: str) -> bool:
    return array.rsplit("/", 1)[-1] in INDEX_ARRAYS


# Families whose items are made from another family's, ``multiplier`` per parent, at slot
# ``parent_slot * multiplier + k`` (so their shards never need a journal of their own).
DERIVED = {"augmented": "annotated"}


def derived_table(ws: Workspace, family: str) -> ItemTable:
    """Items of a derived family: variant ``k`` of each live parent, where its shard is done.

    Item ids are ``<parent id>-a<k>``; each entry records its ``parent``.
    """
    parent_table = item_table(ws, DERIVED[family])
    m = int(ws.config().get(f"{family}_multiplier", 0))
    table = ItemTable(family, parent_table.length * m)
    if m == 0:
        return table
    s = ws.shard_size
    done = ws.markers(f"{family}/images")
    for pid, pe in parent_table.by_id.items():
        for k in range(m):
            slot = pe["slot"] * m + k
            marker = done.get(slot // s)
            if marker is not None and marker.get("parents", {}).get(str(pe["slot"])) == pe["sha256"]:
                table.by_id[f"{pid}-a{k:02d}"] = {"slot": slot, "parent": pid, "source": pid, "sha256": pe["sha256"]}
    return table


def write_item_index(ws: Workspace, table: ItemTable) -> None:
    """Mirror the table into ``<family>/item`` (ids by slot) for plain zarr/xarray readers,
    and its counts into ``_meta/item-counts`` (for ``status``).

    Derived families also get ``<family>/parent`` (the parent's id by slot).

    Each column says ``"complete": false`` in its attributes while it is written and
    ``true`` once it and the family's other arrays agree with the table, so a run killed in
    between leaves a column that the next run knows to write again
    (:func:`item_index_current`), not one whose missing chunks read as empty ids.
    """
    store_counts(ws, table)
    columns = {"item": table.ids_array()}
    if table.family in DERIVED:
        parents = np.full(table.length, "", dtype=object)
        for e in table.by_id.values():
            parents[e["slot"]] = e["parent"]
        columns["parent"] = parents
    written = []
    for name, values in columns.items():
        key = f"{table.family}/{name}"
        if ws.has_array(key):
            arr = ws.array(key, mode="r+")
            if arr.attrs.get(COMPLETE) is not False:
                arr.update_attributes({COMPLETE: False})
            if arr.shape[0] != len(values):
                arr.resize((len(values),))
        else:
            arr = ws.group().create_array(
                key,
                shape=(len(values),),
                chunks=(65536,),
                dtype=str,
                fill_value="",
                dimension_names=("item",),
                attributes={COMPLETE: False},
            )
        step = arr.chunks[0]
        for a in range(0, len(values), step):  # a chunk at a time: 302,652 ids are not all encoded at once
            arr[a : a + step] = values[a : a + step].astype(str)
        written.append(arr)
    # xarray opens a family as one Dataset only when every array agrees on the item axis.
    for name in ws.list_arrays():
        if name.startswith(f"{table.family}/") and name.rsplit("/", 1)[1] not in columns:
            ws.grow(name, table.length)
    for arr in written:
        arr.update_attributes({COMPLETE: True})


COMPLETE = "complete"  # attribute of an index column: written whole (see write_item_index)


def item_index_current(ws: Workspace, family: str, length: int) -> bool:
    """Whether ``<family>/item`` was written whole (see :func:`write_item_index`) for a
    table of ``length`` slots. A column of an older version, which does not say, is not."""
    key = f"{family}/item"
    if not ws.has_array(key):
        return False
    arr = ws.array(key)
    return int(arr.shape[0]) == length and arr.attrs.get(COMPLETE) is True
