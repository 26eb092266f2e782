"""Zarr stores whose writes and deletes go through :class:`~storage.location.Location`.

Defined on first use (importing zarr costs 0.2 s, and most commands never open an array);
module-level names, so a pickled store finds its class again (PEP 562 ``__getattr__``).
"""

from __future__ import annotations

import asyncio
import posixpath
import re
from typing import Any

from storage.identity import TMP_PREFIX
from storage.location import Location, _precondition_failed, write_file_durably

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


def store_class(name: str) -> Any:
    """``DurableLocalStore`` or ``GuardedFsspecStore``, defined on first use."""
    _define_stores()
    return globals()[name]


def _define_stores() -> None:
    if all(n in globals() for n in _STORES):
        return
    from pathlib import Path

    from zarr.abc.store import Store
    from zarr.core.buffer import Buffer
    from zarr.storage import FsspecStore, LocalStore
    from zarr.storage._fsspec import ALLOWED_EXCEPTIONS, _dereference_path

    class _GuardedDeletes(Store):
        """Deletes announced and fenced like Location's: the part both stores share."""

        loc: Location

        async def delete(self, key: str) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", key)
            await super().delete(key)  # type: ignore[safe-super]  # the concrete store's, next in the MRO

        async def delete_dir(self, prefix: str) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", prefix)
            await super().delete_dir(prefix)

        async def clear(self) -> None:
            self._check_writable()
            await asyncio.to_thread(self.loc.before_mutation, "delete", "")
            await super().clear()

    class DurableLocalStore(_GuardedDeletes, LocalStore):
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

    class GuardedFsspecStore(_GuardedDeletes, FsspecStore):
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

    for cls in (DurableLocalStore, GuardedFsspecStore):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls
