"""Write points: every change a run makes to a workspace, numbered, so tests can crash at each.

Every mutation of stored bytes (``Location.write_bytes``, exclusive creates, deletes, and
the writes zarr itself makes through the workspace's store) calls :func:`write_point`
*before* it happens. In a normal run that is one dictionary lookup. With
``MANGAKA_WRITE_POINTS=<dir>`` set (crash tests only), every process of the run (the
command, its Dask workers) takes the next number from a counter shared through ``<dir>``
and appends ``<n> <op> <key>`` to ``<dir>/log``; with ``MANGAKA_CRASH_AT=<n>`` as well,
the process that draws number ``n`` kills its whole process group with SIGKILL before
the write, exactly as a power cut or an OOM kill would stop the run there.

So a crash test enumerates the write points of a stage from the storage layer itself:
run once to count them, then once per point, killed there, and resumed. A new write in
any stage is covered without a new test.

This module must never import Prefect, Dask or torch.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Callable

POINTS_ENV = "MANGAKA_WRITE_POINTS"
CRASH_ENV = "MANGAKA_CRASH_AT"

# In-process observers (tests of code that runs in one process, such as training): each is
# called with (op, key) before the write and may raise to stop the writer there.
HOOKS: list[Callable[[str, str], None]] = []


def write_point(op: str, key: str) -> None:
    """Called before every mutation of a workspace (``op``: write, create, delete)."""
    for hook in HOOKS:
        hook(op, key)
    folder = os.environ.get(POINTS_ENV)
    if not folder:
        return
    _count(folder, op, key)


def _count(folder: str, op: str, key: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "counter"), "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        raw = fh.read().strip()
        n = int(raw or 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(n).encode())
        fh.flush()
        with open(os.path.join(folder, "log"), "a", encoding="utf-8") as log:
            log.write(f"{n} {op} {key}\n")
        crash = os.environ.get(CRASH_ENV)
        if crash and n == int(crash):
            with open(os.path.join(folder, "crashed"), "w", encoding="utf-8") as mark:
                mark.write(f"{n} {op} {key}\n")
            os.killpg(os.getpgid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)  # not in a group of our own: at least this process
