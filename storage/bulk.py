"""Building large metadata structures without Python's cyclic garbage collector.

Planning a run over 302,652 items parses a journal, a marker index and a listing into
millions of small dicts, lists and strings, none of them in a reference cycle. Each
allocation burst triggers the collector, and every full collection walks the whole heap
again: on a no-op re-ingest of 302,652 items that was 2-3 s of 10. :func:`bulk` pauses the
collector while such structures are built (nested and from several threads: it resumes
when the last one leaves), and leaves it as it was when someone else had turned it off.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0
_paused_by_us = False


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """Pause cyclic garbage collection inside (reference counting still frees everything
    that is not in a cycle); usable as a decorator through :func:`bulk_build`."""
    global _depth, _paused_by_us
    with _lock:
        if _depth == 0:
            _paused_by_us = gc.isenabled()
            if _paused_by_us:
                gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _paused_by_us:
                _paused_by_us = False
                gc.enable()


def bulk_build(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run ``fn`` under :func:`bulk`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with bulk():
            return fn(*args, **kwargs)

    return wrapper
