"""Building large metadata structures without Python's cyclic garbage collector.

Planning a run over 302,652 items parses a journal, a marker index and a listing into
millions of small dicts, lists and strings, none of them in a reference cycle. Each
allocation burst triggers the collector, and every full collection walks the whole heap
again: on a no-op re-ingest of 302,652 items that was 2-3 s of 10. :func:`bulk` pauses the
collector while such structures are built (nested and from several threads: it resumes
when the last one leaves), and leaves it as it was when someone else had turned it off.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import ParamSpec, TypeVar, overload

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


T = TypeVar("T")


class Indexed(Sequence[T]):
    """A sequence that makes its ``i``-th item with :meth:`_item` (``0 <= i < len``): the
    lazy and columnar sequences here share its indexing (negative indices, bounds, slices
    as lists)."""

    __slots__ = ()

    def _item(self, i: int) -> T:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> list[T]: ...
    def __getitem__(self, i: int | slice) -> T | list[T]:
        n = len(self)
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._item(i)

    def __iter__(self) -> Iterator[T]:
        return (self._item(i) for i in range(len(self)))


class Lazy(Indexed[T]):
    """``n`` items, each made by ``make(i)`` when it is asked for and not kept: what a run
    hands out one at a time (the shard specs of 302,652 files) is never all held at once."""

    __slots__ = ("_n", "_make")

    def __init__(self, n: int, make: Callable[[int], T]) -> None:
        self._n, self._make = n, make

    def __len__(self) -> int:
        return self._n

    def _item(self, i: int) -> T:
        return self._make(i)


class Joined(Indexed[T]):
    """Several sequences one after the other, without copying them."""

    __slots__ = ("_parts", "_starts")

    def __init__(self, parts: Iterable[Sequence[T]]) -> None:
        self._parts = [p for p in parts if len(p)]
        self._starts = list(itertools.accumulate((len(p) for p in self._parts), initial=0))

    def __len__(self) -> int:
        return self._starts[-1]

    def _item(self, i: int) -> T:
        k = bisect.bisect_right(self._starts, i) - 1
        return self._parts[k][i - self._starts[k]]
