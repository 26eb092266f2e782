"""How many shards a Prefect task carries: one at first, then enough for the target seconds,
shrinking towards the end so that the workers finish together."""

from __future__ import annotations

import gc
import threading

import pytest

from flows.shards import MAX_SHARDS_PER_TASK, TaskSizer
from storage.bulk import bulk


def test_first_tasks_carry_one_shard_then_the_target_seconds() -> None:
    sizer = TaskSizer(workers=2, target=8.0)
    assert sizer.next_size(1000) == 1 and not sizer.known
    sizer.measure([0.5, 0.5])
    assert sizer.known
    assert sizer.next_size(1000) == 16  # 8 s at 0.5 s a shard
    sizer.measure([0.01] * 10)
    assert sizer.next_size(100_000) == MAX_SHARDS_PER_TASK


def test_tasks_shrink_towards_the_end_so_workers_end_together() -> None:
    """Guided self-scheduling: a task takes at most a quarter of what is left on 2 workers,
    so the last tasks are single shards and no worker is left with a long one alone."""
    sizer = TaskSizer(workers=2, target=8.0)
    sizer.measure([0.5])
    left, sizes = 79, []
    while left:
        n = sizer.next_size(left)
        sizes.append(n)
        left -= n
    assert sum(sizes) == 79
    assert sizes == sorted(sizes, reverse=True), sizes
    assert sizes[0] == 16 and sizes[-3:] == [1, 1, 1], sizes
    assert all(n <= -(-left_before // 4) for n, left_before in zip(sizes, _lefts(79, sizes), strict=True))


def _lefts(total: int, sizes: list[int]) -> list[int]:
    out = []
    for n in sizes:
        out.append(total)
        total -= n
    return out


def test_a_fixed_count_is_kept_up_to_what_is_left() -> None:
    sizer = TaskSizer(workers=4, fixed=5)
    assert sizer.known
    assert [sizer.next_size(n) for n in (100, 5, 3)] == [5, 5, 3]


def test_the_environment_sets_the_target_and_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANGAKA_TASK_SECONDS", "2")
    sizer = TaskSizer(workers=1)
    sizer.measure([0.5])
    assert sizer.next_size(1000) == 4
    monkeypatch.setenv("MANGAKA_TASK_SECONDS", "soon")
    with pytest.raises(ValueError, match="MANGAKA_TASK_SECONDS"):
        TaskSizer(workers=1)


def test_bulk_pauses_the_collector_until_the_last_user_leaves() -> None:
    assert gc.isenabled()
    inside = threading.Event()
    leave = threading.Event()

    def other() -> None:
        with bulk():
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=other)
    with bulk():
        assert not gc.isenabled()
        t.start()
        assert inside.wait(10)
    assert not gc.isenabled()  # the other thread is still building
    leave.set()
    t.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        with bulk():
            pass
        assert not gc.isenabled()  # left off, as someone else had set it
    finally:
        gc.enable()
