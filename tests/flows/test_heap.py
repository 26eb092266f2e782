"""flows.heap.trim: freed heap pages between live allocations go back to the OS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flows import heap

needs_glibc = pytest.mark.skipif(heap._malloc_trim() is None, reason="no malloc_trim (not glibc)")

# A fresh interpreter fills ~100 MB with 1 KB blocks (large enough to come from malloc,
# not pymalloc), frees fifteen of every sixteen and keeps the rest, so the free memory lies
# between live blocks where glibc does not give it back by itself. RSS is read from /proc.
FRAGMENT = """
import json, os
from flows import heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

keep, junk = [], []
for i in range(100_000):
    (keep if i % 16 == 0 else junk).append(bytes(1024))
filled = rss()
del junk
freed = rss()
heap.trim(force=True)
print(json.dumps({"filled": filled, "freed": freed, "trimmed": rss(), "kept": len(keep)}))
"""


@needs_glibc
def test_trim_returns_memory_freed_between_live_blocks() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENT], capture_output=True, text=True, check=True, timeout=60)
    m = json.loads(out.stdout)
    junk = 93_750 * 1024  # the freed blocks' payload
    assert m["filled"] - m["freed"] < junk / 4  # glibc keeps it: the holes are not at the top
    assert m["freed"] - m["trimmed"] > junk / 2  # trim hands most of it back


@needs_glibc
def test_trim_runs_at_most_once_per_interval_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: calls.append)
    heap.trim(force=True)
    heap.trim()  # within MIN_INTERVAL of the last: skipped
    heap.trim(force=True)
    assert calls == [0, 0]
    monkeypatch.setattr(heap, "_last", heap._last - heap.MIN_INTERVAL)
    heap.trim()
    assert calls == [0, 0, 0]


def test_lean_blocks_nest_and_close_on_an_error() -> None:
    from flows import heap

    with heap.lean():
        with heap.lean():
            assert heap._lean == 2
        assert heap._lean == 1
        big = bytearray(8 << 20)  # mapped on its own inside the block, and unmapped
        del big
    assert heap._lean == 0
    try:
        with heap.lean():
            raise KeyError("x")
    except KeyError:
        pass
    assert heap._lean == 0
