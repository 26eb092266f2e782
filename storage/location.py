"""Where bytes live: a local directory or an ``s3://bucket/prefix``, behind one interface.

Everything that touches a file or an object goes through :class:`Location`; callers speak
in workspace-relative keys (``"_meta/workspace.json"``) and never build paths themselves.

Writes are atomic and durable. A local file is written beside its target under a
temporary name, ``fsync``-ed, renamed over the target, and then the directory (and every
directory the write had to create) is ``fsync``-ed too, so that after a power cut a
marker is either there whole or not there at all. An S3 PUT is atomic by nature. Zarr's
own writes go through the same path (:meth:`Location.zarr_store`).

Every mutation first calls :func:`storage.writepoints.write_point` (crash tests) and,
while a workspace lease's fence is active in the calling context (see
``storage.lease.Fence``), checks that the lease is still held: a run that has lost its
lease raises ``LeaseLost`` instead of writing.

Temporary files are named ``.tmp-<machine>_<pid>_<start>_<random>``: the machine
identity (host name, boot id and PID namespace), the writer's pid and its process start
time, so that a later run can tell a dead writer's leftovers from a live one's, even
between containers that share a host name (``storage.lease.sweep_stale_tmp``).

S3 credentials and the endpoint come from the standard AWS variables and files
(``AWS_ENDPOINT_URL`` for an S3-compatible server); nothing here logs them.
"""

from __future__ import annotations

import contextvars
import errno
import gzip
import json
import logging
import os
import posixpath
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import fsspec

from storage.bulk import bulk_build
from storage.identity import TMP_PREFIX, tmp_prefix
from storage.writepoints import write_point

ObjectHook = Callable[[dict[str, Any]], Any]

log = logging.getLogger(__name__)


# -- durable local writes ---------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory: nothing more to do
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _missing_dirs(path: str) -> list[str]:
    """The directories of ``path`` (itself included) that do not exist yet, outermost first."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing[::-1]


def _open_tmp(directory: str) -> tuple[int, str]:
    prefix = tmp_prefix()
    for _ in range(100):
        tmp = os.path.join(directory, prefix + secrets.token_hex(6))
        try:
            # 0o666 less the umask, as a plain open() would: not mkstemp's 0o600
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def write_file_durably(target: str, data: Any, exclusive: bool = False) -> bool:
    """Write ``data`` (bytes-like) to the local file ``target`` atomically and durably.

    Temporary file beside the target, fsync, then ``os.replace`` (or, ``exclusive``,
    ``os.link``, which fails if the target exists: then nothing is written and the result
    is False), then fsync of the directory and of the parents of every directory created.
    """
    parent = os.path.dirname(target)
    missing = _missing_dirs(parent)
    if missing:
        os.makedirs(parent, exist_ok=True)
    fd, tmp = _open_tmp(parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)
    for d in missing:  # the entry of each new directory, in its parent
        _fsync_dir(os.path.dirname(d))
    return True


# -- fencing hook -------------------------------------------------------------------------


class WriteGuard(Protocol):
    """What ``storage.lease.Fence`` offers: raise before a write that must not happen."""

    def guard(self, loc: Location, key: str) -> None: ...


# The fence of the workspace lease that the current flow (or shard task) runs under; set by
# ``storage.lease.fencing``. Context variables follow asyncio tasks and ``to_thread``.
current_fence: contextvars.ContextVar[WriteGuard | None] = contextvars.ContextVar("mangaka_fence", default=None)


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def absolute(url: str) -> str:
    """``url`` as it is when remote, else as an absolute local path (runs elsewhere find it)."""
    return url if is_remote(url) else os.path.abspath(url)


def s3_storage_options() -> dict[str, Any]:
    """Options for s3fs from the standard AWS environment (endpoint for S3-compatible servers)."""
    # Every request has a time limit, so a hung connection surfaces as a transient error
    # (retried by the shard task) instead of a task that never ends; botocore's own retries
    # absorb short throttling first.
    opts: dict[str, Any] = {
        # Other processes (Dask workers, other runs) write markers and shards all the time:
        # a cached listing would make a flow miss what its own tasks just wrote.
        "use_listings_cache": False,
        # A workspace's objects are small (JSON, shards, checkpoints): one GET each. With
        # more, s3fs asks every object's size first (a HEAD before each GET).
        "max_concurrency": 1,
        "config_kwargs": {
            "connect_timeout": float(os.environ.get("MANGAKA_S3_CONNECT_TIMEOUT", "10")),
            "read_timeout": float(os.environ.get("MANGAKA_S3_READ_TIMEOUT", "60")),
            "retries": {"max_attempts": 5, "mode": "adaptive"},
        },
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def filesystem(url: str, asynchronous: bool = False) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the root path inside it."""
    if not is_remote(url):
        path = url[len("file://") :] if url.startswith("file://") else url
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    protocol, _, rest = url.partition("://")
    if protocol not in ("s3", "s3a"):
        raise ValueError(f"unsupported location {url!r}: use a local directory or s3://bucket/prefix")
    fs = fsspec.filesystem("s3", asynchronous=asynchronous, **s3_storage_options())
    return fs, rest.rstrip("/")


def safe_key(key: str) -> str:
    """Normalise a relative key and refuse any that would leave its root."""
    norm = posixpath.normpath(key.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"key {key!r} escapes its root")
    return "" if norm == "." else norm


def _precondition_failed(exc: BaseException) -> bool:
    """An S3 conditional write refused because the object exists (HTTP 412)."""
    if isinstance(exc, FileExistsError):
        return True
    cause = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "412") or status == 412
    return False


def _mtime_of(info: dict[str, Any]) -> float | None:
    """Modification time of an fsspec ``info``/``ls`` entry, on the storage's own clock."""
    stamp = info.get("LastModified", info.get("mtime"))
    if stamp is None:
        return None
    if hasattr(stamp, "timestamp"):
        return float(stamp.timestamp())
    return float(stamp)


# A JSON document longer than this is stored gzip-compressed (markers and ingestion journals
# list every item of a shard: ~250 bytes an item as text, ~75 compressed; the corpus's 302,652
# items would carry 150 MB of _meta, about 1% of their JPEGs, instead of ~45 MB).
GZIP_OVER = 4096


def json_bytes(obj: Any) -> bytes:
    """A workspace JSON document as stored: sorted keys; small ones readable as they are
    (one key a line), larger ones compact and gzip-compressed (``zcat`` shows them).
    The bytes depend only on ``obj`` (no time stamp in the gzip header), so a resumed run
    writes exactly what an uninterrupted one does."""
    compact = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    if len(compact) <= GZIP_OVER // 2:
        return json.dumps(obj, indent=1, sort_keys=True).encode()
    return gzip.compress(compact, compresslevel=1, mtime=0)  # level 6: 7% smaller, 3x the time


def json_text(raw: bytes) -> bytes:
    """The JSON text of a stored document, plain or gzip-compressed (see :func:`json_bytes`)."""
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"a damaged compressed document: {exc}") from exc
    return raw


@dataclass
class Location:
    """A root (local directory or S3 prefix) and atomic, key-based access below it."""

    url: str

    def __post_init__(self) -> None:
        self.fs, self.root = filesystem(self.url)
        self.remote = is_remote(self.url)
        if not self.remote:
            # Absolute, so that a Dask worker with another working directory finds the same place.
            self.url = self.root

    def __getstate__(self) -> dict[str, Any]:
        # Filesystems hold sockets and event loops: ship only the URL to Dask workers.
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.__post_init__()

    def path(self, key: str = "") -> str:
        k = safe_key(key)
        return f"{self.root}/{k}" if k else self.root

    def url_of(self, key: str = "") -> str:
        """The full address of ``key``: a local path, or ``s3://bucket/prefix/key``."""
        if not self.remote:
            return self.path(key)
        protocol = self.url.partition("://")[0]
        return f"{protocol}://{self.path(key)}"

    # -- the one gate every mutation passes ---------------------------------------------
    def before_mutation(self, op: str, key: str) -> None:
        """Check the active lease fence (if any), then announce the write point."""
        fence = current_fence.get()
        if fence is not None:
            fence.guard(self, key)
        write_point(op, safe_key(key))

    # -- reads --------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def is_dir(self, key: str = "") -> bool:
        """A folder (locally), or a prefix with objects below it or a bucket (S3)."""
        return bool(self.fs.isdir(self.path(key)))

    def is_file(self, key: str) -> bool:
        return bool(self.fs.isfile(self.path(key)))

    def read_bytes(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(key)))

    def read_json(self, key: str) -> Any:
        """Parse one JSON object; raises if it is missing (FileNotFoundError) or unreadable (ValueError)."""
        return json.loads(json_text(self.read_bytes(key)))

    def read_json_or_none(self, key: str, object_hook: ObjectHook | None = None) -> Any:
        """One JSON object, or None when it is missing, or unreadable (empty or not JSON: logged).

        ``object_hook`` is :func:`json.loads`' (a caller that knows the document's shape
        may share its recurring strings)."""
        try:
            raw = self.read_bytes(key)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return self._parse(key, raw, object_hook)

    def _parse(self, key: str, raw: bytes, object_hook: ObjectHook | None = None) -> Any:
        try:
            if not raw.strip():
                raise ValueError("empty")
            return json.loads(json_text(raw), object_hook=object_hook)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("ignoring unreadable %s in %s (%s): treated as absent", key, self.url, exc)
            return None

    @bulk_build
    def read_json_many(self, keys: list[str], object_hook: ObjectHook | None = None) -> dict[str, Any]:
        """Read many small JSON objects at once (concurrently on S3).

        Missing keys are left out, and so are unreadable ones (empty or invalid JSON, as a
        crash of an older version could leave), each with a warning that names it.
        ``object_hook`` as for :meth:`read_json_or_none`.
        """
        if not keys:
            return {}
        paths = [self.path(k) for k in keys]
        got = self.fs.cat(paths, on_error="omit")
        if not isinstance(got, dict):  # fsspec returns the bare value for a single path
            got = {paths[0]: got}
        by_path = {str(p).rstrip("/"): v for p, v in got.items()}
        out: dict[str, Any] = {}
        for k, p in zip(keys, paths, strict=True):
            raw = by_path.get(p)
            if raw is None:
                raw = by_path.get(p.lstrip("/"))
            if raw is None or isinstance(raw, BaseException):
                continue
            value = self._parse(k, bytes(raw), object_hook)
            if value is not None:
                out[k] = value
        return out

    def mtime(self, key: str) -> float | None:
        """Modification time of ``key`` on the storage's clock (file mtime, S3 LastModified)."""
        try:
            return _mtime_of(self.fs.info(self.path(key)))
        except FileNotFoundError:
            return None

    def _files(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """(key, fsspec info) of every file directly under ``prefix``: one listing."""
        try:
            entries = self.fs.ls(self.path(prefix), detail=True)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        out = []
        for info in entries:
            if info.get("type") == "directory":
                continue
            name = str(info["name"])
            out.append((name[len(root) :] if name.startswith(root) else name, info))
        return out

    def mtimes(self, prefix: str) -> dict[str, float | None]:
        """Key -> modification time (storage clock) of every file directly under ``prefix``."""
        return {key: _mtime_of(info) for key, info in self._files(prefix)}

    def storage_now(self, probe_key: str) -> float:
        """The storage's clock now: the modification time of a probe object written for it.

        Comparing this with another object's modification time compares two stamps of the
        same clock, whatever the clocks of the machines involved say.
        """
        self.write_bytes(probe_key, b"")
        try:
            stamp = self.mtime(probe_key)
        finally:
            try:
                self.delete(probe_key)
            except Exception as exc:  # a stray probe is harmless; say so and go on
                log.debug("probe %s not deleted: %s", probe_key, exc)
        if stamp is None:
            raise FileNotFoundError(probe_key)
        return stamp

    def list(self, prefix: str) -> list[str]:
        """Keys of the files directly under ``prefix`` (relative to the root), sorted."""
        base = self.path(prefix)
        try:
            names = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        keys = []
        for name in names:
            name = str(name)
            rel = name[len(root) :] if name.startswith(root) else name
            if not posixpath.basename(rel).startswith(TMP_PREFIX):
                keys.append(rel)
        return sorted(keys)

    def list_stamps(self, prefix: str) -> dict[str, str]:
        """The files directly under ``prefix`` with a stamp that changes whenever the file
        does: the ETag on S3 (from the same LIST request as the names), size, mtime and inode
        on a local disk (a file is replaced by a rename, so a new inode)."""
        out: dict[str, str] = {}
        for key, e in self._files(prefix):
            if posixpath.basename(key).startswith(TMP_PREFIX):
                continue
            etag = e.get("ETag") or e.get("etag")
            out[key] = str(etag) if etag else f"{e.get('size')}:{e.get('mtime')}:{e.get('ino')}"
        return out

    # -- writes -------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        self.before_mutation("write", key)
        target = self.path(key)
        if self.remote:
            self.fs.pipe_file(target, data)
            return
        write_file_durably(target, data)

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist yet; True if this call created it.

        Atomic between any number of racing writers: exactly one gets True. Locally a
        durable temporary file is hard-linked to the target (``os.link`` refuses an
        existing name); on S3 a conditional PUT (``If-None-Match: *``).
        """
        self.before_mutation("create", key)
        target = self.path(key)
        if self.remote:
            try:
                self.fs.pipe_file(target, data, mode="create")
            except OSError as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True
        return write_file_durably(target, data, exclusive=True)

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json_bytes(obj))

    def create_json(self, key: str, obj: Any) -> bool:
        return self.create_bytes(key, json_bytes(obj))

    def delete(self, key: str) -> None:
        p = self.path(key)
        if self.fs.exists(p):
            self.before_mutation("delete", key)
            self.fs.rm(p, recursive=True)

    def zarr_store(self, read_only: bool = False):  # noqa: ANN201 - zarr types are heavy
        """A zarr v3 store rooted at this location, whose writes pass :meth:`before_mutation`.

        Locally a :class:`zarr.storage.LocalStore` whose files are written like
        :meth:`write_bytes` (temporary name, fsync, rename, directory fsync; never zarr's
        own ``*.<uuid>.partial`` files); on S3 a :class:`zarr.storage.FsspecStore`.
        """
        from storage import zarrstore

        if not self.remote:
            os.makedirs(self.root, exist_ok=True)
            store: Any = zarrstore.store_class("DurableLocalStore")
            return store(self.root, read_only=read_only, loc=self)
        fs, path = filesystem(self.url, asynchronous=True)
        store = zarrstore.store_class("GuardedFsspecStore")
        return store(fs, path=path, read_only=read_only, loc=self)


# -- a user's own files and folders: OUT, --masks DIR, --style-image IMG, ... ---------------
# Commands take local paths and ``s3://`` URLs alike; these are the only places that turn one
# into a folder and a name.


def split_url(url: str) -> tuple[Location, str]:
    """The :class:`Location` of the folder that holds the file ``url`` and the file's name.

    ``url`` is a local path (relative to the working directory, or ``file://``) or
    ``s3://bucket/key``; a URL that names no file (``s3://bucket``) is a ``ValueError``.
    """
    if is_remote(url):
        protocol, _, rest = url.partition("://")
        parent, _, name = rest.rstrip("/").rpartition("/")
        if not parent or not name:
            raise ValueError(f"{url} names no file: give s3://bucket/key")
        return Location(f"{protocol}://{parent}"), name
    _, path = filesystem(url)
    name = os.path.basename(path)
    if not name:
        raise ValueError(f"{url} names no file")
    return Location(os.path.dirname(path)), name


def url_name(url: str) -> str:
    """The last part of a path or URL (``a/b.png`` and ``s3://bucket/a/b.png``: ``b.png``)."""
    return posixpath.basename(url.rstrip("/"))


def child_url(url: str, key: str) -> str:
    """The path or URL of ``key`` below the folder ``url``, written the way ``url`` was given
    (a relative folder gives a relative path); ``key`` may not leave the folder."""
    k = safe_key(key)
    return f"{url.rstrip('/')}/{k}" if url.rstrip("/") else f"/{k}"


def exists_dir(url: str) -> bool:
    """Whether ``url`` is a folder (local), or a bucket or a prefix with objects below it (S3)."""
    return Location(url).is_dir()


def exists_file(url: str) -> bool:
    """Whether ``url`` is a file (local; a link to one counts) or an object (S3)."""
    try:
        loc, name = split_url(url)
    except ValueError:
        return False
    return loc.is_file(name)


def write_file(url: str, data: bytes) -> str:
    """Write one file of the user's (``OUT/x.png`` or ``s3://bucket/x.png``), atomically and
    durably like :meth:`Location.write_bytes`; returns ``url``."""
    loc, name = split_url(url)
    loc.write_bytes(name, data)
    return url


def file_url(url: str) -> str:
    """``url`` as a URL: ``file:///abs/path`` for a local path, unchanged for ``s3://``."""
    if is_remote(url):
        return url
    return "file://" + filesystem(url)[1]
