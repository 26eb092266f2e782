"""Hand the flow process's freed heap memory back to the operating system between phases and tasks.

glibc keeps memory that Python frees in its arenas (one per thread that allocated, up to
eight per core), so a process's resident size keeps the high-water mark of every phase it
went through: on a 302,652-image ingest (2 cores) the flow process rose from 184 MB after
planning to 238 MB while its shards ran, although no Python object grew between the 100th
and the 1,100th shard. ``malloc_trim(0)`` returns the free pages of every arena; the flow
calls it after planning, after each finished task and before deriving the item table
(measured: 222 MB rather than 238 MB while the shards ran).

While a flow plans and runs the shards of an ingestion (:func:`lean`), allocations above
128 KB are mapped and unmapped on their own. glibc's default raises that threshold to the
size of every large block freed (up to 32 MB): after the first numpy temporary of a few MB,
the listing's columns, the journal's pieces and the comparison's arrays of a 302,652-file
no-op ingest all came from the heap and left it fragmented (peak 210 MB, 198 MB with the
threshold kept).

Workers do not call it: a shard's buffers (200 MB for 256 images at 512 px) would fault in
page by page again in the next shard, the cost that ``MALLOC_TRIM_THRESHOLD_`` had (see
``flows.runtime.worker_environ``). Elsewhere than glibc (macOS, musl) :func:`trim` does
nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import time
from collections.abc import Callable, Iterator

# At most one trim per this many seconds in a process: a trim walks every arena (about a
# millisecond per 100 MB of heap here), so shards of a few milliseconds do not pay it each.
MIN_INTERVAL = 0.5

_last = 0.0  # when the last trim ran (the flow calls trim from one thread)
_lean = 0  # how many lean() blocks are open

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
LEAN_MMAP = 128 << 10  # glibc's initial threshold
# Where glibc's sliding thresholds end up on 64-bit systems (after the first free of a block
# of 32 MB): what the process gets back after a lean block, e.g. for training in the flow.
MMAP_MAX, TRIM_MAX = 32 << 20, 64 << 20


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


@functools.cache
def _mallopt() -> Callable[[int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


@contextlib.contextmanager
def lean() -> Iterator[None]:
    """Allocations above 128 KB are mapped on their own inside the block (see the module's
    text); blocks nest. Nothing happens where the C library is not glibc."""
    global _lean
    fn = _mallopt()
    if fn is not None and not _lean:
        fn(M_MMAP_THRESHOLD, LEAN_MMAP)
    _lean += 1
    try:
        yield
    finally:
        _lean -= 1
        if fn is not None and not _lean:
            fn(M_MMAP_THRESHOLD, MMAP_MAX)
            fn(M_TRIM_THRESHOLD, TRIM_MAX)


def trim(force: bool = False) -> None:
    """Return free heap pages to the OS (at most once per :data:`MIN_INTERVAL` unless ``force``)."""
    global _last
    fn = _malloc_trim()
    now = time.monotonic()
    if fn is None or (not force and now - _last < MIN_INTERVAL):
        return
    _last = now
    fn(0)
