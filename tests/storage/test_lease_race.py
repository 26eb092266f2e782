"""Racing for one lease: of N threads or N processes that try at the same moment (each a
random few ms late), exactly one gets it, every time, locally and on S3 (moto's server,
which honours ``If-None-Match: *`` as S3 does). Also when they race to take over a stale
holder, and when they race for a lease just released."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storage.identity import machine_identity
from storage.lease import LeaseHeld, WorkspaceLease, generation_key, generations
from storage.location import Location

NAME = "render-lineart"


def _stale_holder(loc: Location) -> None:
    """A holder of this machine whose process is gone: every racer judges it stale at once."""
    top = max(generations(loc, NAME), default=0)
    body = {"token": "dead", **machine_identity(), "pid": 2**22 + 1, "pid_start": "1", "released": False}
    assert loc.create_json(generation_key(NAME, top + 1), body)


def _try(loc: Location, rng: random.Random) -> WorkspaceLease | None:
    time.sleep(rng.uniform(0, 0.008))
    lease = WorkspaceLease(loc, NAME, ttl=60)
    try:
        lease.acquire()
    except LeaseHeld:
        return None
    return lease


def _race_threads(loc: Location, n: int, trial: int, seed: int) -> list[WorkspaceLease]:
    barrier = threading.Barrier(n)
    won: list[WorkspaceLease] = []
    lock = threading.Lock()

    def racer(i: int) -> None:
        rng = random.Random(seed * 1000 + trial * 100 + i)
        barrier.wait()
        got = _try(loc, rng)
        if got is not None:
            with lock:
                won.append(got)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return won


def _thread_trials(loc: Location, n: int, trials: int, seed: int) -> list[int]:
    winners_per_trial = []
    for trial in range(trials):
        if trial % 3 == 1:
            _stale_holder(loc)  # race to take over
        won = _race_threads(loc, n, trial, seed)
        winners_per_trial.append(len(won))
        for lease in won:
            lease.release()
    return winners_per_trial


def _process_racer(url: str, i: int, trials: int, barrier: Any, results: Any) -> None:
    loc = Location(url)
    for trial in range(trials):
        rng = random.Random(trial * 100 + i + os.getpid())
        barrier.wait()  # everybody ready
        got = _try(loc, rng)
        results.put((trial, i, got is not None))
        barrier.wait()  # everybody has tried: the winner lets go
        if got is not None:
            got.release()
        if i == 0 and trial % 3 == 0:
            _stale_holder(loc)  # the next trial races to take over a dead holder
        barrier.wait()


def _process_trials(url: str, n: int, trials: int) -> list[int]:
    ctx = mp.get_context("spawn")  # no fork of a process with fsspec's event loop threads
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_racer, args=(url, i, trials, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    got: dict[int, int] = {t: 0 for t in range(trials)}
    try:
        for _ in range(n * trials):
            trial, _i, won = results.get(timeout=300)
            got[trial] += int(won)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [got[t] for t in range(trials)]


def test_threads_race_locally(tmp_path: Path) -> None:
    loc = Location(str(tmp_path / "ws"))
    assert _thread_trials(loc, n=8, trials=30, seed=1) == [1] * 30


def test_threads_race_on_s3(bucket: str) -> None:
    loc = Location(f"s3://{bucket}/ws")
    assert _thread_trials(loc, n=6, trials=12, seed=2) == [1] * 12


def test_processes_race_locally(tmp_path: Path) -> None:
    assert _process_trials(str(tmp_path / "ws"), n=4, trials=15) == [1] * 15


@pytest.mark.usefixtures("s3_server")
def test_processes_race_on_s3(bucket: str) -> None:
    assert _process_trials(f"s3://{bucket}/ws", n=4, trials=8) == [1] * 8
