"""The sweep of temporary files that killed writers left behind (run when a lease is taken).

They are never data, but a killed run leaves them on disk; a file of a writer still
running must not be touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time

from storage.identity import (
    TMP_PREFIX,
    identity_complete,
    machine_digest,
    machine_identity,
    process_running,
    tmp_prefix,
)
from storage.location import Location
from storage.zarrstore import is_temporary_name

log = logging.getLogger(__name__)
DEFAULT_TTL = 120.0
_OUR_TMP = re.compile(rf"^{re.escape(TMP_PREFIX)}([0-9a-fx]{{16}})_(\d+)_(\d+)_")


def _local_now(root: str) -> float:
    """The local file system's clock now: the mtime of a probe file (equal to time.time()
    on a local disk, the server's clock on a network file system)."""
    probe = os.path.join(root, f"{tmp_prefix()}clock")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o666)
    except OSError:
        return time.time()
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)


def sweep_stale_tmp(loc: Location, ttl: float = DEFAULT_TTL) -> int:
    """Delete temporary files whose writer is gone; return how many.

    A ``.tmp-<machine>_<pid>_<start>_*`` file of this machine and PID namespace is removed
    when its writer process is gone (or its pid now names another process). Any other
    temporary file (another container's, an older version's ``.tmp-<host>-<pid>-*``, or
    zarr's own ``*.<32 hex>.partial``, whose writer cannot be known) is removed only when
    older than ``ttl`` on the file system's clock: a live writer finishes a write in
    milliseconds, and its file's mtime moves while it writes.
    """
    if loc.remote or not os.path.isdir(loc.root):
        return 0
    mine = machine_digest() if identity_complete(machine_identity()) else None
    now = _local_now(loc.root)
    removed = 0
    for dirpath, _dirs, files in os.walk(loc.root):
        for name in files:
            if not is_temporary_name(name):
                continue
            path = os.path.join(dirpath, name)
            m = _OUR_TMP.match(name)
            if m and mine is not None and m[1] == mine:
                if process_running(int(m[2]), m[3]):
                    continue
            else:
                try:
                    age = now - os.lstat(path).st_mtime
                except FileNotFoundError:
                    continue
                if age <= ttl:
                    continue
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d temporary file(s) left by killed writers", removed)
    return removed
