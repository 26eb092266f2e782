"""Input corpora: a folder, a ``.tar`` archive, or an ``s3://bucket/prefix``.

Listing returns :class:`SourceRef` records (small, picklable: what a task needs to read one
file again, plus a fingerprint of its listing metadata); :class:`SourceReader` reads their
bytes. Nothing is ever extracted to disk, and a folder's symlinks that lead outside the
folder are refused, so no input can make mangaka read or write outside what it was given.

Every local file is read through :func:`read_regular_file`: a FIFO, a device or a socket
is refused without blocking, and no read is larger than its limit. A member whose name is
not UTF-8 is refused at listing (it could not be journalled), and a compressed tar is
refused with a usage error: members are read in place, at their offset, which needs an
uncompressed archive.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import struct
import tarfile
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import IO, Any

import numpy as np

from storage.bulk import Indexed, bulk_build
from storage.location import child_url, exists_dir, filesystem, is_remote
from storage.workspace import WorkspaceError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


class NotRegularFile(ValueError):
    """A path that is a FIFO, a device, a socket or a folder: mangaka reads only regular files."""


class CompressedTar(WorkspaceError, ValueError):
    """A source that cannot be read as one (a compressed tar, a plain file that is no
    archive): a usage error (the command line exits 2)."""


_O_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def _not_regular(mode: int) -> NotRegularFile:
    kind = next((name for test, name in _KINDS if test(mode)), "something else")
    return NotRegularFile(f"not a regular file but {kind}: mangaka reads only regular files")


def _open_regular(path: str) -> int:
    """A descriptor of ``path`` open for reading, or :class:`NotRegularFile`; never blocks.

    ``stat`` refuses a FIFO or a device before it is opened at all; ``O_NONBLOCK`` makes
    opening one that took its place since return at once, and ``fstat`` of the descriptor
    refuses it. The descriptor is blocking again when returned (regular files only).
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(st.st_mode)
    fd = os.open(path, _O_READ)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(st.st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular_file(path: str, limit: int | None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises :class:`NotRegularFile` (a ``ValueError``) for a FIFO, device, socket or folder,
    without blocking, and ``ValueError`` for a file over ``limit`` bytes (``None``: no
    limit), read or not: at most ``limit + 1`` bytes are ever read. ``OSError`` (missing,
    permission, I/O) propagates unchanged.
    """
    fd = _open_regular(path)
    with open(fd, "rb", closefd=True) as f:
        if limit is None:
            return f.read()
        size = os.fstat(fd).st_size
        if size > limit:
            raise ValueError(f"file is {size} bytes, over the {limit}-byte limit")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"file is over the {limit}-byte limit")
    return data


def read_file(url: str, limit: int | None = None) -> bytes:
    """The bytes of one file a user named (a local path or ``s3://bucket/key``), at most
    ``limit`` of them: locally exactly as :func:`read_regular_file`; on S3 an object over
    ``limit`` is refused (``ValueError``) before it is read. A missing one is
    ``FileNotFoundError``."""
    fs, path = filesystem(url)
    if not is_remote(url):
        return read_regular_file(path, limit)
    if limit is not None:
        size = int(fs.size(path) or 0)
        if size > limit:
            raise ValueError(f"file is {size} bytes, over the {limit}-byte limit")
    return bytes(fs.cat_file(path))


class OutsideFolder(ValueError):
    """A name read from an input file (labelme's ``imagePath``) that is absolute, or that
    leads outside the folder every such name must stay inside."""

    def __init__(self, rel: str, absolute: bool) -> None:
        super().__init__(f"{rel!r} is absolute" if absolute else f"{rel!r} leads outside the folder")
        self.rel = rel
        self.absolute = absolute


def read_relative(base: str, rel: str, root: str, limit: int | None = None) -> bytes:
    """The bytes of the file ``rel`` names relative to the file ``base``, which lies in the
    folder ``root`` (local, or ``s3://``; ``base`` as a path, ``bucket/key`` or URL).

    ``rel`` comes from an untrusted file: backslashes count as separators, and an absolute
    ``rel`` or one that leads outside ``root`` (locally after following every link) is
    :class:`OutsideFolder`, never read. Otherwise as :func:`read_file`.
    """
    rel = rel.replace("\\", "/")
    if os.path.isabs(rel):
        raise OutsideFolder(rel, absolute=True)
    if is_remote(root):
        protocol = root.partition("://")[0]
        _, root_path = filesystem(root)
        base_path = filesystem(base)[1] if is_remote(base) else base
        target = posixpath.normpath(posixpath.join(posixpath.dirname(base_path), rel))
        if posixpath.commonpath([root_path, target]) != root_path:
            raise OutsideFolder(rel, absolute=False)
        return read_file(f"{protocol}://{target}", limit)
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(os.path.dirname(base), rel))
    if os.path.commonpath([real_root, target]) != real_root:
        raise OutsideFolder(rel, absolute=False)
    return read_regular_file(target, limit)


COMPRESSIONS = (
    (b"\x1f\x8b", "gzip", "gunzip"),
    (b"BZh", "bzip2", "bunzip2"),
    (b"\xfd7zXZ\x00", "xz", "unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"),
)
"""Magic bytes of the compressions a tar commonly comes in, the name, and the tool that undoes it."""


def check_source(src: str) -> None:
    """Refuse a local source that is a compressed file (by its magic bytes, whatever its
    name) with :class:`CompressedTar`, a usage error; :func:`list_sources` calls it, and a
    command can call it before it starts a run.

    An uncompressed tar whose first member's name happens to start like a magic number
    ("BZh...") is not refused: its first header parses as a tar header.
    """
    if is_remote(src):
        return
    path = os.path.abspath(os.path.expanduser(src))
    if not os.path.isfile(path):
        return
    fd = _open_regular(path)
    with open(fd, "rb", closefd=True) as f:
        head = f.read(8)
    for magic, name, tool in COMPRESSIONS:
        if head.startswith(magic) and not _readable(path, "r:"):
            what = "tar" if _readable(path, "r") else "file"
            article = "an" if name == "xz" else "a"
            raise CompressedTar(
                f"{src} is {article} {name}-compressed {what}: mangaka reads members in place and needs an "
                f"uncompressed .tar; decompress it first ({tool})"
            )


def _readable(path: str, mode: str) -> bool:
    """Whether the first header of ``path`` parses as a tar (``"r:"`` plain, ``"r"`` any compression)."""
    try:
        with tarfile.open(path, mode):  # type: ignore[call-overload]
            return True
    except (OSError, EOFError, tarfile.TarError):
        return False


def is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def item_id(relpath: str) -> str:
    """An item's id: the source file's stem."""
    return posixpath.splitext(posixpath.basename(relpath))[0]


@dataclass(frozen=True, slots=True)
class SourceRef:
    """One input file: how to read it again and what its listing said about it (slotted:
    a listing of 302,652 files holds one of these each)."""

    source: str  # display name: path, s3://..., or archive.tar::member
    kind: str  # "file" | "tar" | "s3"
    path: str  # file path, archive path, or s3 path (bucket/key)
    relpath: str  # path inside the corpus root
    size: int
    mtime: float
    offset: int = 0  # data offset inside a tar archive

    @property
    def id(self) -> str:
        return item_id(self.relpath)

    @property
    def listing_digest(self) -> bytes:
        """:func:`listing_digest` of this file."""
        return listing_digest(self.source, self.size, self.mtime)

    @property
    def fingerprint(self) -> str:
        """Changes when the file at this place changes (size or time), without reading it."""
        return fingerprint_of(self.source, self.size, self.mtime).hex()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceRef:
        return cls(**d)


def record_digest(record: dict[str, Any]) -> bytes | None:
    """:func:`listing_digest` of a journal record (``SourceRef.to_dict`` plus its
    fingerprint), or None for a record that lacks place, size or time (written by hand or
    by an older tool: planning compares its fingerprint)."""
    try:
        return listing_digest(record["source"], record["size"], record["mtime"])
    except KeyError:
        return None


def fingerprint_of(source: str, size: int, mtime: float) -> bytes:
    """:attr:`SourceRef.fingerprint` as its 20 bytes."""
    return hashlib.sha1(f"{source}\0{size}\0{mtime}".encode()).digest()


_SIZE_TIME = struct.Struct("<qd")


def listing_digest(source: str, size: int, mtime: float) -> bytes:
    """20 bytes that change with any of a file's place, size and time: what planning
    compares of a listed file and a journal record (the :attr:`SourceRef.fingerprint`
    writes the time as text, which costs three times as much to make)."""
    return hashlib.sha1(source.encode() + _SIZE_TIME.pack(size, mtime)).digest()


class Texts:
    """Strings held as one UTF-8 buffer and their end offsets (about 19 bytes a file path of
    11 characters, against about 68 as a list of str); each is decoded when asked for.
    Lone surrogates (undecodable file names, as ``os`` gives them) pass through."""

    __slots__ = ("_buf", "_end")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._end = array("q")

    def append(self, text: str) -> None:
        self._buf += text.encode("utf-8", "surrogatepass")
        self._end.append(len(self._buf))

    def raw(self, i: int) -> bytes:
        return bytes(self._buf[self._end[i - 1] if i else 0 : self._end[i]])

    def __getitem__(self, i: int) -> str:
        return self.raw(i).decode("utf-8", "surrogatepass")

    def __len__(self) -> int:
        return len(self._end)

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    def encoded(self) -> Iterator[bytes]:
        """Each string's UTF-8 bytes, in order."""
        return (self.raw(i) for i in range(len(self)))

    def truncate(self, n: int) -> None:
        if n < len(self._end):
            del self._buf[self._end[n - 1] if n else 0 :]
            del self._end[n:]

    def _keys(self, start: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The strings from ``start`` on as rows of a zero-padded ``uint8`` matrix, with
        their lengths; ``None`` when the matrix would cost more than sorting Python's way.
        Filled a column at a time: no temporary of the matrix's size."""
        n = len(self) - start
        if n <= 0:
            return np.zeros((0, 1), dtype=np.uint8), np.zeros(0, dtype=np.int64)
        first = self._end[start - 1] if start else 0
        ends = np.frombuffer(self._end, dtype=np.int64)[start:]
        lengths = np.diff(ends, prepend=first)
        del ends  # an array with a view on it cannot grow
        width = max(1, int(lengths.max()))
        if width > KEY_WIDTH and n * width > KEY_BYTES:
            return None
        keys = np.zeros((n, width), dtype=np.uint8)
        _scatter(keys, lengths, np.frombuffer(self._buf, dtype=np.uint8)[first:], to_keys=True)
        return keys, lengths

    def sort_from(self, start: int) -> np.ndarray | None:
        """Sort the strings from ``start`` on (UTF-8 bytes sort as their code points do; a
        name holds no NUL, so the padding puts a prefix first). Returns where each string
        now in place ``start + k`` was (``start`` + the k-th value), or ``None`` when they
        were in order already."""
        first = self._end[start - 1] if start else 0
        got = self._keys(start)
        if got is None:  # very long names: sort their bytes objects
            order = np.array(sorted(range(start, len(self)), key=self.raw), dtype=np.int64) - start
            if np.array_equal(order, np.arange(len(order))):
                return None
            tail = b"".join([self.raw(start + int(i)) for i in order])
            lengths = np.array([len(self.raw(start + int(i))) for i in order], dtype=np.int64)
            self.truncate(start)
            self._buf += tail
            self._end.frombytes((first + np.cumsum(lengths)).astype(np.int64).tobytes())
            return order
        keys, lengths = got
        rows = keys.view(f"S{keys.shape[1]}").ravel()
        order = rows.argsort(kind="stable")
        if np.array_equal(order, np.arange(len(order))):
            return None
        rows.sort(kind="stable")  # the key matrix itself, in place
        del rows
        lengths = lengths[order]
        # the same bytes in another order: written over the old ones, the buffer keeps its size
        buf = np.frombuffer(self._buf, dtype=np.uint8)[first:]
        _scatter(keys, lengths, buf, to_keys=False)
        ends = np.frombuffer(self._end, dtype=np.int64)[start:]
        np.cumsum(lengths, out=ends)
        ends += first
        del buf, ends
        return order


def _scatter(keys: np.ndarray, lengths: np.ndarray, flat: np.ndarray, to_keys: bool) -> None:
    """Copy between the rows of ``keys`` (``lengths`` bytes of each) and ``flat``, where they
    lie one after another: into ``keys`` when ``to_keys``, else into ``flat``."""
    starts = np.cumsum(lengths) - lengths
    for j in range(keys.shape[1]):
        has = np.flatnonzero(lengths > j)
        if len(has) == len(lengths):
            at = starts + j
            if to_keys:
                keys[:, j] = flat[at]
            else:
                flat[at] = keys[:, j]
        else:
            at = starts[has] + j
            if to_keys:
                keys[has, j] = flat[at]
            else:
                flat[at] = keys[has, j]
        del at, has


# Sorting a folder's names as a padded byte matrix costs 2-3 bytes a byte of the longest
# name, against about 120 bytes a name as Python objects; past this width (and size) the
# names are sorted as objects.
KEY_WIDTH = 40
KEY_BYTES = 16 << 20


_COLUMN_TYPES = {"q": np.int64, "d": np.float64, "H": np.uint16}


class RefList(Indexed[SourceRef]):
    """The refs of a listing, held as columns: each file's path inside the corpus root, its
    size and its time, and a small table of what the files share (kind and the prefixes of
    source and path). A listing of 302,652 files holds about 45 bytes a file this way
    (paths of 11 characters), against about 335 as :class:`SourceRef` objects; a ref is
    built when it is asked for. A ref whose source or path is not its shared prefix plus
    its relpath is kept whole.
    """

    __slots__ = ("_rel", "_size", "_mtime", "_offset", "_group", "_groups", "_group_of", "_whole")

    def __init__(self, refs: Iterable[SourceRef] = ()) -> None:
        self._rel = Texts()
        self._size = array("q")
        self._mtime = array("d")
        self._offset: array[int] | None = None  # members' offsets in a tar: made at the first
        self._group = array("H")
        # (kind, source prefix, path prefix or None, path when the path is the same for all)
        self._groups: list[tuple[str, str, str | None, str | None]] = []
        self._group_of: dict[tuple[str, str, str | None, str | None], int] = {}
        self._whole: dict[int, SourceRef] = {}
        for ref in refs:
            self.append(ref)

    def group(self, kind: str, source_prefix: str, path_prefix: str | None, path: str | None = None) -> int:
        """The number of a group of refs: source is ``source_prefix + relpath``; path is
        ``path_prefix + relpath``, or ``path`` for every ref when ``path_prefix`` is None."""
        key = (kind, source_prefix, path_prefix, path)
        g = self._group_of.get(key)
        if g is None:
            g = self._group_of[key] = len(self._groups)
            self._groups.append(key)
        return g

    def add(self, group: int, relpath: str, size: int, mtime: float, offset: int = 0) -> None:
        self._rel.append(relpath)
        self._size.append(size)
        self._mtime.append(mtime)
        if self._offset is not None:
            self._offset.append(offset)
        elif offset:
            self._offset = array("q", bytes(8 * (len(self._size) - 1)))
            self._offset.append(offset)
        self._group.append(group)

    def append(self, ref: SourceRef) -> None:
        rel, n = ref.relpath, len(ref.relpath)
        if n and ref.source.endswith(rel) and len(self._groups) < 65535:
            head = ref.source[:-n]
            if ref.path.endswith(rel):
                self.add(self.group(ref.kind, head, ref.path[:-n]), rel, ref.size, ref.mtime, ref.offset)
                return
            self.add(self.group(ref.kind, head, None, ref.path), rel, ref.size, ref.mtime, ref.offset)
            return
        self._whole[len(self._rel)] = ref
        self.add(0, rel, ref.size, ref.mtime, ref.offset)

    def _columns(self) -> list[array[Any]]:
        cols: list[array[Any]] = [self._size, self._mtime, self._group]
        return cols if self._offset is None else [*cols, self._offset]

    def truncate(self, n: int) -> None:
        """Drop the refs from ``n`` on."""
        self._rel.truncate(n)
        for col in self._columns():
            del col[n:]
        self._whole = {k: v for k, v in self._whole.items() if k < n}

    def sort_from(self, start: int) -> None:
        """Sort the refs from ``start`` on by relpath (a folder's files, once listed)."""
        n = len(self._rel)
        if n - start < 2:
            return
        at = self._rel.sort_from(start)
        if at is None:
            return
        for col in self._columns():
            view = np.frombuffer(col, dtype=_COLUMN_TYPES[col.typecode])
            view[start:] = view[start:][at]  # the right side is a copy
            del view  # an array with a view on it cannot grow
        if self._whole:
            moved = {start + j: start + int(i) for j, i in enumerate(at)}
            self._whole = {k: v for k, v in self._whole.items() if k < start} | {
                k: self._whole[i] for k, i in moved.items() if i in self._whole
            }

    def __len__(self) -> int:
        return len(self._rel)

    def _item(self, i: int) -> SourceRef:
        whole = self._whole.get(i) if self._whole else None
        if whole is not None:
            return whole
        kind, source_prefix, path_prefix, path = self._groups[self._group[i]]
        rel = self._rel[i]
        source = source_prefix + rel
        if path_prefix is not None:
            path = source if path_prefix == source_prefix else path_prefix + rel
        assert path is not None
        offset = self._offset[i] if self._offset is not None else 0
        return SourceRef(source, kind, path, rel, self._size[i], self._mtime[i], offset)

    def digests(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The :func:`listing_digest` (``S20``) of each ref from ``start`` to ``stop``, in
        order, without building refs."""
        stop = len(self) if stop is None else min(stop, len(self))
        sha1, pack = hashlib.sha1, _SIZE_TIME.pack
        heads = [g[1].encode() for g in self._groups]
        whole = self._whole
        out = bytearray()  # grown a digest at a time: no object per file is kept
        rels = (self._rel.raw(i) for i in range(start, stop))
        sizes, times = self._size[start:stop], self._mtime[start:stop]
        if len(heads) == 1 and not whole:
            head = heads[0]
            for r, n, t in zip(rels, sizes, times, strict=True):
                out += sha1(head + r + pack(n, t)).digest()
        else:
            groups = self._group[start:stop]
            for i, (r, n, t, g) in enumerate(zip(rels, sizes, times, groups, strict=True), start):
                out += whole[i].listing_digest if i in whole else sha1(heads[g] + r + pack(n, t)).digest()
        return np.frombuffer(out, dtype="S20")


class Picked(Indexed[SourceRef]):
    """Some refs of a listing, by position (8 bytes each: the new files of 302,652)."""

    __slots__ = ("_refs", "_at")

    def __init__(self, refs: Sequence[SourceRef], at: Iterable[int] = ()) -> None:
        self._refs = refs
        self._at = array("q", at)

    def append(self, position: int) -> None:
        self._at.append(position)

    def __len__(self) -> int:
        return len(self._at)

    def _item(self, i: int) -> SourceRef:
        return self._refs[self._at[i]]


def listing_digests(refs: Sequence[SourceRef], start: int = 0, stop: int | None = None) -> np.ndarray:
    """The :func:`listing_digest` of each of ``refs[start:stop]`` (``S20``), in order."""
    if isinstance(refs, RefList):
        return refs.digests(start, stop)
    stop = len(refs) if stop is None else min(stop, len(refs))
    return np.frombuffer(b"".join(refs[i].listing_digest for i in range(start, stop)), dtype="S20")


@dataclass
class Listing:
    """What a corpus holds: readable image files, plus what was passed over and why."""

    refs: Sequence[SourceRef]  # a RefList from the listers here
    skipped_names: int  # files not named like images
    refused: list[tuple[str, str]]  # (source, reason) for files that must not be read


@bulk_build
def list_sources(src: str, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> Listing:
    """List the files under ``src`` (folder, ``.tar``, or ``s3://`` prefix) named with one
    of ``suffixes`` (images by default), sorted; other suffixes than images' want a folder
    or a prefix."""
    if suffixes != IMAGE_SUFFIXES and not is_remote(src) and not os.path.isdir(src):
        raise ValueError(f"{src} must be a folder")
    if is_remote(src):
        return _list_s3(src, suffixes)
    path = os.path.abspath(os.path.expanduser(src))
    if os.path.isdir(path):
        return _list_folder(path, suffixes)
    if os.path.isfile(path):
        check_source(src)
        if tarfile.is_tarfile(path):
            return _list_tar(path)
    if os.path.exists(path):
        raise CompressedTar(f"{src} is neither a folder nor a .tar archive")
    raise FileNotFoundError(f"{src} does not exist")


def _list_folder(root: str, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> Listing:
    """Every file under ``root`` in sorted order (a folder's files by name, then its
    sub-folders by name, each the same way), with one ``stat`` a file: a corpus of 302,652
    files is listed in a few seconds. A folder's entries are taken one at a time as the
    system gives them (no list of them all is held) and its records sorted after. Symlinked
    folders are not followed; a symlinked file is listed only when it points inside
    ``root``."""
    refs = RefList()
    head = os.path.join(root, "")  # every file's source and path: head + its relpath
    files = refs.group("file", head, head)
    refused: list[tuple[str, str]] = []
    skipped = 0
    real_root = os.path.realpath(root)
    stack: list[tuple[str, str]] = [(root, "")]  # (folder, its path relative to root, with "/")
    while stack:
        folder, prefix = stack.pop()
        start = len(refs)
        subdirs: list[tuple[str, str]] = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    name, full = entry.name, entry.path
                    try:
                        is_dir = entry.is_dir()  # follows a symlink, as os.walk's split does
                    except OSError:
                        is_dir = False
                    if is_dir:
                        if not entry.is_symlink():
                            subdirs.append((full, f"{prefix}{name}/"))
                        continue
                    stem = name.lstrip(".")  # posixpath.splitext's suffix, without its cost per file
                    dot = stem.rfind(".")
                    if (stem[dot:].lower() if dot > 0 else "") not in suffixes:
                        skipped += 1
                        continue
                    try:
                        full.encode("utf-8")
                    except UnicodeEncodeError:
                        shown = full.encode("utf-8", "backslashreplace").decode()
                        refused.append((shown, "file name is not valid UTF-8: rename it"))
                        continue
                    if entry.is_symlink():
                        target = os.path.realpath(full)
                        if os.path.commonpath([real_root, target]) != real_root:
                            refused.append((full, "symlink points outside the source folder"))
                            continue
                    try:
                        st = entry.stat()  # follows a symlink (inside root, checked above)
                    except OSError as exc:
                        refused.append((full, f"cannot stat: {exc.strerror or exc}"))
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        skipped += 1
                        continue
                    refs.add(files, prefix + name, st.st_size, st.st_mtime)
        except OSError as exc:
            refs.truncate(start)
            refused.append((folder, f"cannot list: {exc.strerror or exc}"))
            continue
        refs.sort_from(start)  # one folder: the same prefix, so by name
        subdirs.sort()
        stack.extend(reversed(subdirs))
    return Listing(refs, skipped, refused)


def _list_tar(archive: str) -> Listing:
    refs = RefList()
    refused: list[tuple[str, str]] = []
    skipped = 0
    with tarfile.open(archive, "r:") as tf:  # names that are not UTF-8 come with surrogates
        for m in tf:
            if not m.isfile():
                skipped += int(not m.isdir())
                continue
            rel = posixpath.normpath(m.name).lstrip("/")
            if not is_image_name(rel):
                skipped += 1
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                shown = f"{archive}::{rel}".encode("utf-8", "backslashreplace").decode()
                refused.append((shown, "file name is not valid UTF-8: rename it"))
                continue
            refs.append(SourceRef(f"{archive}::{rel}", "tar", archive, rel, m.size, float(m.mtime), m.offset_data))
    refs.sort_from(0)
    return Listing(refs, skipped, refused)


def _s3_ref(path: str, rel: str, info: dict[str, Any]) -> SourceRef:
    mtime = info.get("LastModified") or info.get("mtime") or 0
    stamp = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
    return SourceRef(f"s3://{path}", "s3", path, rel, int(info.get("size") or 0), stamp)


def _list_s3(src: str, suffixes: frozenset[str] = IMAGE_SUFFIXES) -> Listing:
    fs, root = filesystem(src)
    refs = RefList()
    skipped = 0
    found: dict[str, dict[str, Any]] = fs.find(root, detail=True)
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        rel = path[len(root) :].lstrip("/")
        if posixpath.splitext(rel)[1].lower() not in suffixes:
            skipped += 1
            continue
        refs.append(_s3_ref(path, rel, info))
    return Listing(refs, skipped, [])


def list_folder(url: str, suffix: str, what: str = "folder") -> Listing:
    """The files directly in the folder ``url`` (local or ``s3://``) whose names end with
    ``suffix`` (any case), sorted by name; ``what`` names the folder in reasons.

    Sub-folders and anything that is not a (link to a) regular file are passed over; a
    local link that leads outside the folder is refused. Each ``source`` is written the
    way ``url`` was given. A folder that does not exist is ``FileNotFoundError``.
    """
    if not exists_dir(url):
        raise FileNotFoundError(f"{url} is not a folder")
    fs, root = filesystem(url)
    refs = RefList()
    refused: list[tuple[str, str]] = []
    skipped = 0
    if is_remote(url):
        for info in sorted(fs.ls(root, detail=True), key=lambda i: str(i["name"])):
            path = str(info["name"])
            name = posixpath.basename(path)
            if info.get("type") != "file" or not name.lower().endswith(suffix):
                skipped += 1
                continue
            refs.append(_s3_ref(path, name, info))
        return Listing(refs, skipped, refused)
    real_root = os.path.realpath(root)
    for name in sorted(os.listdir(root)):
        full = os.path.join(root, name)
        if not name.lower().endswith(suffix) or not os.path.isfile(full):
            skipped += 1
            continue
        if os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
            refused.append((child_url(url, name), f"symlink points outside the {what}"))
            continue
        st = os.stat(full)
        refs.append(SourceRef(child_url(url, name), "file", full, name, st.st_size, st.st_mtime))
    return Listing(refs, skipped, refused)


class SourceReader:
    """Reads the bytes of many sources, keeping archives and S3 clients open between reads."""

    def __init__(self) -> None:
        self._archives: dict[str, IO[bytes]] = {}
        self._s3: Any = None

    def read(self, ref: SourceRef, limit: int | None = None) -> bytes:
        """Return the file's bytes; refuse (ValueError) files larger than ``limit`` bytes."""
        if limit is not None and ref.size > limit:
            raise ValueError(f"file is {ref.size} bytes, over the {limit}-byte limit")
        if ref.kind == "file":
            return read_regular_file(ref.path, limit)
        if ref.kind == "tar":
            f = self._archives.get(ref.path)
            if f is None:
                f = self._archives[ref.path] = open(_open_regular(ref.path), "rb")  # noqa: SIM115 - closed in close()
            f.seek(ref.offset)
            return f.read(ref.size)
        if ref.kind == "s3":
            if self._s3 is None:
                self._s3, _ = filesystem("s3://")
            return bytes(self._s3.cat_file(ref.path))
        raise ValueError(f"unknown source kind {ref.kind!r}")

    def close(self) -> None:
        for f in self._archives.values():
            f.close()
        self._archives.clear()

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
