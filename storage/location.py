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

import asyncio
import contextvars
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import secrets
import socket
from dataclasses import dataclass
from typing import Any, Protocol

import fsspec

from storage.writepoints import write_point

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


# -- who is writing: machine identity and process start times --------------------------


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def machine_identity() -> dict[str, str]:
    """Host name, boot id and PID namespace of this process ('' where /proc cannot say).

    Two processes whose identities are equal and complete run on the same kernel, booted
    once, in the same PID namespace: only then does a pid mean the same process to both.
    """
    return {
        "host": socket.gethostname(),
        "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
    }


def identity_complete(ident: dict[str, Any]) -> bool:
    return all(str(ident.get(k) or "") for k in ("host", "boot_id", "pidns"))


def same_machine(ident: dict[str, Any]) -> bool:
    """True only when ``ident`` is provably this machine and this PID namespace."""
    mine = machine_identity()
    return identity_complete(mine) and all(str(ident.get(k) or "") == mine[k] for k in mine)


def machine_digest(ident: dict[str, Any] | None = None) -> str:
    """16 hex digits naming a machine and PID namespace (``x`` * 16 when not provable)."""
    ident = ident if ident is not None else machine_identity()
    if not identity_complete(ident):
        return "x" * 16
    text = "\0".join(str(ident[k]) for k in ("host", "boot_id", "pidns"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat``
    field 22), or '' when it cannot be read (no such process, or no /proc)."""
    raw = _read_text(f"/proc/{int(pid)}/stat")
    if not raw or ")" not in raw:
        return ""
    fields = raw.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else ""  # fields[0] is field 3 (state)


_tmp_prefix: tuple[int, str] | None = None


def tmp_prefix() -> str:
    """``.tmp-<machine digest>_<pid>_<start time>_`` of this process (recomputed after a fork)."""
    global _tmp_prefix
    pid = os.getpid()
    if _tmp_prefix is None or _tmp_prefix[0] != pid:
        _tmp_prefix = (pid, f"{TMP_PREFIX}{machine_digest()}_{pid}_{process_start(pid) or 0}_")
    return _tmp_prefix[1]


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


def s3_storage_options() -> dict[str, Any]:
    """Options for s3fs from the standard AWS environment (endpoint for S3-compatible servers)."""
    # Every request has a time limit, so a hung connection surfaces as a transient error
    # (retried by the shard task) instead of a task that never ends; botocore's own retries
    # absorb short throttling first.
    opts: dict[str, Any] = {
        # Other processes (Dask workers, other runs) write markers and shards all the time:
        # a cached listing would make a flow miss what its own tasks just wrote.
        "use_listings_cache": False,
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

    def read_bytes(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(key)))

    def read_json(self, key: str) -> Any:
        """Parse one JSON object; raises if it is missing (FileNotFoundError) or unreadable (ValueError)."""
        return json.loads(self.read_bytes(key))

    def read_json_or_none(self, key: str) -> Any:
        """One JSON object, or None when it is missing, or unreadable (empty or not JSON: logged)."""
        try:
            raw = self.read_bytes(key)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        return self._parse(key, raw)

    def _parse(self, key: str, raw: bytes) -> Any:
        try:
            if not raw.strip():
                raise ValueError("empty")
            return json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("ignoring unreadable %s in %s (%s): treated as absent", key, self.url, exc)
            return None

    def read_json_many(self, keys: list[str]) -> dict[str, Any]:
        """Read many small JSON objects at once (concurrently on S3).

        Missing keys are left out, and so are unreadable ones (empty or invalid JSON, as a
        crash of an older version could leave), each with a warning that names it.
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
            value = self._parse(k, bytes(raw))
            if value is not None:
                out[k] = value
        return out

    def mtime(self, key: str) -> float | None:
        """Modification time of ``key`` on the storage's clock (file mtime, S3 LastModified)."""
        try:
            return _mtime_of(self.fs.info(self.path(key)))
        except FileNotFoundError:
            return None

    def mtimes(self, prefix: str) -> dict[str, float | None]:
        """Key -> modification time (storage clock) of every file directly under ``prefix``."""
        base = self.path(prefix)
        try:
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return {}
        root = self.root.rstrip("/") + "/"
        out: dict[str, float | None] = {}
        for info in entries:
            if info.get("type") == "directory":
                continue
            name = str(info["name"])
            out[name[len(root) :] if name.startswith(root) else name] = _mtime_of(info)
        return out

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
        self.write_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode())

    def create_json(self, key: str, obj: Any) -> bool:
        return self.create_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode())

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
        _define_stores()
        if not self.remote:
            os.makedirs(self.root, exist_ok=True)
            return globals()["DurableLocalStore"](self.root, read_only=read_only, loc=self)
        fs, path = filesystem(self.url, asynchronous=True)
        return globals()["GuardedFsspecStore"](fs, path=path, read_only=read_only, loc=self)


# -- zarr stores ----------------------------------------------------------------------------
# Defined on first use (importing zarr costs 0.2 s, and most commands never open an array);
# module-level names, so a pickled store finds its class again (PEP 562 __getattr__).

# zarr 3.1's LocalStore writes ``<name minus suffix>.<uuid4 hex>.partial`` and renames it.
ZARR_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


def is_temporary_name(name: str) -> bool:
    """A writer's temporary file (ours, or zarr's own), never data."""
    return name.startswith(TMP_PREFIX) or bool(ZARR_PARTIAL.search(name))


_STORES = ("DurableLocalStore", "GuardedFsspecStore")


def __getattr__(name: str) -> Any:
    if name in _STORES:
        _define_stores()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_stores() -> None:
    if all(n in globals() for n in _STORES):
        return
    from pathlib import Path

    from zarr.core.buffer import Buffer
    from zarr.storage import FsspecStore, LocalStore
    from zarr.storage._fsspec import ALLOWED_EXCEPTIONS, _dereference_path

    class DurableLocalStore(LocalStore):
        """LocalStore whose writes are durable, named like Location's, and announced."""

        def __init__(self, root: Path | str, *, read_only: bool = False, loc: Location | None = None) -> None:
            super().__init__(root, read_only=read_only)
            self.loc = loc if loc is not None else Location(str(root))

        def with_read_only(self, read_only: bool = False) -> DurableLocalStore:
            return type(self)(self.root, read_only=read_only, loc=self.loc)

        def _put(self, key: str, value: Buffer, exclusive: bool = False) -> None:
            if not isinstance(value, Buffer):
                raise TypeError(f"set(): `value` must be a Buffer instance, not {type(value)}")
            self.loc.before_mutation("create" if exclusive else "write", key)
            if not write_file_durably(str(self.root / key), value.as_buffer_like(), exclusive=exclusive):
                raise FileExistsError(key)

        def set_sync(self, key: str, value: Buffer) -> None:
            self._ensure_open_sync()
            self._check_writable()
            self._put(key, value)

        async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
            if not self._is_open:
                await self._open()
            self._check_writable()
            await asyncio.to_thread(self._put, key, value, exclusive)

        def delete_sync(self, key: str) -> None:
            self._ensure_open_sync()
            self._check_writable()
            self.loc.before_mutation("delete", key)
            super().delete_sync(key)

        async def delete(self, key: str) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", key)
            await super().delete(key)

        async def delete_dir(self, prefix: str) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", prefix)
            await super().delete_dir(prefix)

        async def clear(self) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", "")
            await super().clear()

        async def list(self) -> Any:
            async for key in super().list():
                if not is_temporary_name(posixpath.basename(key)):
                    yield key

        async def list_prefix(self, prefix: str) -> Any:
            async for key in super().list_prefix(prefix):
                if not is_temporary_name(posixpath.basename(key)):
                    yield key

        async def list_dir(self, prefix: str) -> Any:
            async for key in super().list_dir(prefix):
                if not is_temporary_name(key):
                    yield key

    class GuardedFsspecStore(FsspecStore):
        """FsspecStore whose writes and deletes are announced and fenced like Location's."""

        def __init__(
            self,
            fs: Any,
            read_only: bool = False,
            path: str = "/",
            allowed_exceptions: tuple[type[Exception], ...] = ALLOWED_EXCEPTIONS,
            loc: Location | None = None,
        ) -> None:
            super().__init__(fs, read_only=read_only, path=path, allowed_exceptions=allowed_exceptions)
            self.loc = loc if loc is not None else Location(f"s3://{path}")

        def with_read_only(self, read_only: bool = False) -> GuardedFsspecStore:
            return type(self)(
                fs=self.fs,
                path=self.path,
                allowed_exceptions=self.allowed_exceptions,
                read_only=read_only,
                loc=self.loc,
            )

        async def set(self, key: str, value: Buffer, byte_range: tuple[int, int] | None = None) -> None:
            if not self._is_open:
                await self._open()
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "write", key)
            await super().set(key, value, byte_range)

        async def set_if_not_exists(self, key: str, value: Buffer) -> None:
            if not self._is_open:
                await self._open()
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "create", key)
            try:
                await self.fs._pipe_file(_dereference_path(self.path, key), value.to_bytes(), mode="create")
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise

        async def delete(self, key: str) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", key)
            await super().delete(key)

        async def delete_dir(self, prefix: str) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", prefix)
            await super().delete_dir(prefix)

        async def clear(self) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", "")
            await super().clear()

    for cls in (DurableLocalStore, GuardedFsspecStore):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
