"""Workspace leases: one run of a flow at a time on one workspace, fencing, and the sweep of dead writers' files.

Layout: a lease is a directory of numbered *generations*::

    _meta/leases/<name>/000000000007.json    {"token", "run", "host", "boot_id", "pidns",
                                              "pid", "pid_start", "heartbeat", "beats",
                                              "generation", "released"}

The holder is the highest generation, unless its body says ``released``. Acquiring reads
the highest generation and, if there is none or it is released or stale, *creates*
generation + 1 with an atomic create (``Location.create_bytes``: a hard link locally, a
conditional PUT on S3), so of any number of racing runs exactly one wins; the losers
read again and find the winner. Renewing rewrites the holder's own generation file every
``ttl/4`` seconds. A holder has lost its lease as soon as a higher generation exists.
Releasing writes ``released: true`` into the holder's own generation (it is never
deleted, so numbers only grow) and deletes the generations below it. A single-file lease
``_meta/leases/<name>.json`` of earlier versions counts as a generation-0 holder.

Staleness never compares two machines' clocks. The heartbeat's age is the storage's
clock now (the modification time of a probe ``_meta/leases/<name>/.clock-<token>`` that
the judge writes and deletes) minus the modification time of the holder's generation
file (file mtime locally, ``LastModified`` on S3): two stamps of the same clock. A holder
whose process is gone is stale at once, but only when it provably ran on this machine in
this PID namespace (host name, boot id and PID-namespace inode all equal) and its pid is
gone or now belongs to a process with another start time; containers that share a host
name are judged by their heartbeat alone.

Fencing: :meth:`WorkspaceLease.fence` is a small picklable :class:`Fence`. While it is
active in a context (:func:`fencing`; ``flows.ops`` sets it in the flow and in every
shard task it runs on Dask), every write, exclusive create and delete through a
:class:`~storage.location.Location` (and its zarr stores) inside the workspace first
checks that no higher generation exists (one listing of the lease directory; in the
holder's process also that its own renewal has succeeded within the ttl) and raises
:class:`LeaseLost`, a permanent error, instead of writing.

On a local workspace, acquiring a lease also removes the temporary files that killed
writers left behind (see :func:`sweep_stale_tmp`): they are never data, but a killed run
must leave the workspace exactly as an uninterrupted one.

This module must never import Prefect, Dask or torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from storage.identity import (
    machine_identity,
    process_running,
    process_start,
    same_machine,
)
from storage.location import Location, current_fence, safe_key
from storage.sweep import DEFAULT_TTL, sweep_stale_tmp

log = logging.getLogger(__name__)

LEASES = "_meta/leases"
_GENERATION = re.compile(r"^(\d{12})\.json$")


class LeaseHeld(RuntimeError):
    """Another live run holds the lease."""


class LeaseLost(RuntimeError):
    """This run no longer holds its lease (taken over, or not renewed within its ttl): it must not write.

    A permanent error: retrying cannot make the lease this run's again.
    """


def lease_dir(name: str) -> str:
    return f"{LEASES}/{safe_key(name)}"


def generation_key(name: str, generation: int) -> str:
    return f"{lease_dir(name)}/{generation:012d}.json"


def generations(loc: Location, name: str) -> dict[int, float | None]:
    """Generation number -> modification time (storage clock) of every generation of lease ``name``."""
    out: dict[int, float | None] = {}
    for key, mtime in loc.mtimes(lease_dir(name)).items():
        m = _GENERATION.match(key.rsplit("/", 1)[-1])
        if m:
            out[int(m[1])] = mtime
    return out


# -- fencing ---------------------------------------------------------------------------------

# Leases held by this process, by token: the flow process's fence also asks its own lease
# whether renewal has kept up.
_HELD: weakref.WeakValueDictionary[str, WorkspaceLease] = weakref.WeakValueDictionary()
_LOCATIONS: dict[str, Location] = {}


def _location(url: str) -> Location:
    loc = _LOCATIONS.get(url)
    if loc is None:
        loc = _LOCATIONS[url] = Location(url)
    return loc


@dataclass(frozen=True)
class Fence:
    """The identity of one held lease, small enough to ship with every shard task."""

    url: str
    name: str
    generation: int
    token: str

    def relative(self, loc: Location, key: str) -> str | None:
        """``key`` of ``loc`` relative to the fenced workspace, or None if outside it."""
        base = self.url.rstrip("/")
        url = loc.url.rstrip("/")
        if url == base:
            return safe_key(key)
        if url.startswith(base + "/"):
            return safe_key(f"{url[len(base) + 1 :]}/{key}")
        return None

    def guard(self, loc: Location, key: str) -> None:
        """Raise :class:`LeaseLost` before a write to the fenced workspace if the lease is lost."""
        rel = self.relative(loc, key)
        if rel is None or rel == LEASES or rel.startswith(LEASES + "/"):
            return  # another place, or the lease machinery itself
        self.check()

    def check(self) -> None:
        held = _HELD.get(self.token)
        if held is not None:
            reason = held.lost_reason
            if reason is not None:
                raise LeaseLost(reason)
        gens = generations(_location(self.url), self.name)
        top = max(gens, default=None)
        if top == self.generation:
            return
        if top is not None and top > self.generation:
            why = f"taken over by generation {top}"
        else:
            why = "its lease file is gone"
        raise LeaseLost(
            f"the {self.name} lease on {self.url} (generation {self.generation}) is no longer this run's: "
            f"{why}; this run stops writing"
        )


def active_fence() -> Fence | None:
    fence = current_fence.get()
    return fence if isinstance(fence, Fence) else None


def held_lease(fence: Fence | None) -> WorkspaceLease | None:
    """The lease object behind ``fence`` when this process holds it."""
    return _HELD.get(fence.token) if fence is not None else None


@contextlib.contextmanager
def fencing(fence: Fence | None) -> Iterator[None]:
    """Make ``fence`` guard every write in this context (nothing changes for None)."""
    if fence is None:
        yield
        return
    token = current_fence.set(fence)
    try:
        yield
    finally:
        current_fence.reset(token)


# -- the lease ---------------------------------------------------------------------------------


class WorkspaceLease:
    """``with WorkspaceLease(loc, "render-lineart", run="..."):`` holds the lease for the block."""

    def __init__(
        self,
        loc: Location,
        name: str,
        run: str = "",
        wait: float = 0.0,
        ttl: float = DEFAULT_TTL,
        poll: float = 2.0,
    ) -> None:
        self.loc = loc
        self.name = name
        self.dir = lease_dir(name)
        self.legacy_key = f"{LEASES}/{safe_key(name)}.json"
        self.run = run
        self.wait = wait
        self.ttl = ttl
        self.poll = poll
        self.token = uuid.uuid4().hex
        self.generation: int | None = None
        self._beats = 0
        self._renewed: float | None = None  # monotonic time just before the last renewal that landed
        self._lost: str | None = None
        self._clock: tuple[float, float] | None = None  # (storage stamp, monotonic time it was taken)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what is stored ----------------------------------------------------------------------
    @property
    def key(self) -> str:
        """This run's generation file (once acquired)."""
        if self.generation is None:
            raise RuntimeError(f"the {self.name} lease is not held")
        return generation_key(self.name, self.generation)

    def _body(self, generation: int, released: bool = False) -> dict[str, Any]:
        ident = machine_identity()
        pid = os.getpid()
        return {
            "name": self.name,
            "token": self.token,
            "run": self.run,
            "generation": generation,
            **ident,
            "pid": pid,
            "pid_start": process_start(pid),
            "heartbeat": time.time(),  # the holder's clock: shown, never judged
            "beats": self._beats,
            "released": released,
        }

    def _top(self) -> dict[str, Any] | None:
        """The highest generation (released or not): its body plus ``generation`` and ``mtime``."""
        gens = generations(self.loc, self.name)
        if gens:
            top = max(gens)
            body = self.loc.read_json_or_none(generation_key(self.name, top))
            held = dict(body) if isinstance(body, dict) else {"unreadable": True}
            held.update(generation=top, mtime=gens[top])
            return held
        body = self.loc.read_json_or_none(self.legacy_key)
        if body is None:
            return None
        held = dict(body) if isinstance(body, dict) else {"unreadable": True}
        held.update(generation=0, mtime=self.loc.mtime(self.legacy_key), legacy=True)
        return held

    def current(self) -> dict[str, Any] | None:
        """Who holds the lease (its body, ``generation`` and ``mtime``), or None if nobody does."""
        held = self._top()
        if held is None or held.get("released"):
            return None
        return held

    # -- judging a holder ----------------------------------------------------------------------
    def storage_clock(self) -> float:
        """The storage's clock now, from a probe object (re-taken every ttl/4 of our monotonic time)."""
        mono = time.monotonic()
        if self._clock is None or mono - self._clock[1] > self.ttl / 4:
            try:
                stamp = self.loc.storage_now(f"{self.dir}/.clock-{self.token}")
            except Exception as exc:  # read-only credentials, say: this machine's clock it is
                log.debug("no clock probe on %s (%s): judging by this machine's clock", self.loc.url, exc)
                stamp = time.time()
            self._clock = (stamp, mono)
        return self._clock[0] + (time.monotonic() - self._clock[1])

    def age(self, held: dict[str, Any]) -> float | None:
        """Seconds since the holder's last renewal landed, on the storage's clock."""
        mtime = held.get("mtime")
        if mtime is None:
            beat = held.get("heartbeat")
            return None if beat is None else time.time() - float(beat)
        return self.storage_clock() - float(mtime)

    def stale(self, held: dict[str, Any]) -> str | None:
        """Why ``held`` may be taken over, or None while it is alive."""
        if held.get("released"):
            return "it was released"
        pid = int(held.get("pid") or 0)
        if pid and same_machine(held) and not process_running(pid, str(held.get("pid_start") or "")):
            return f"its process {pid} on this machine is gone"
        age = self.age(held)
        if age is not None and age > self.ttl:
            return f"no heartbeat for {age:.0f} s (ttl {self.ttl:.0f} s)"
        return None

    def describe(self, held: dict[str, Any]) -> str:
        age = self.age(held)
        run = f"run {held['run']}, " if held.get("run") else ""
        beat = f"heartbeat {age:.0f} s ago" if age is not None else "no heartbeat"
        return f"{run}pid {held.get('pid')} on {held.get('host')}, {beat}, generation {held.get('generation')}"

    # -- holding ---------------------------------------------------------------------------------
    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        announced = False
        tried: float | None = None  # monotonic time before our last create attempt
        while True:
            held = self._top()
            if held is not None and held.get("token") == self.token and tried is not None:
                # ours: a create whose answer was lost on the way and whose retry met "exists"
                self.generation, self._renewed = int(held["generation"]), tried
                break
            if held is not None and not held.get("released"):
                why = self.stale(held)
                if why is None:
                    if time.monotonic() >= deadline:
                        raise LeaseHeld(
                            f"another {self.name} run holds {self.loc.url} ({self.describe(held)}); "
                            f"wait for it to finish, or set MANGAKA_LEASE_WAIT=SECONDS to queue behind it"
                        )
                    if not announced:
                        log.warning("waiting for the %s lease on %s (%s)", self.name, self.loc.url, self.describe(held))
                        announced = True
                    time.sleep(self.poll)
                    continue
                log.warning("taking over the %s lease on %s: %s", self.name, self.loc.url, why)
            nxt = int(held["generation"]) + 1 if held is not None else 1
            tried = time.monotonic()
            self._beats = 0
            if self.loc.create_json(generation_key(self.name, nxt), self._body(nxt)):
                self.generation, self._renewed = nxt, tried
                break
            # another run created that generation first: read again, it is the holder now
        self._lost = None
        _HELD[self.token] = self
        # The sweep walks the whole workspace (~1 s at 302,652 items on a local disk) and
        # touches only files of writers that are gone or long quiet, never a live run's: it
        # runs beside the flow's planning instead of before it.
        self._sweeper = threading.Thread(target=self._sweep, name=f"sweep-{self.name}", daemon=True)
        self._sweeper.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def fence(self) -> Fence:
        if self.generation is None:
            raise RuntimeError(f"the {self.name} lease is not held")
        return Fence(self.loc.url, self.name, self.generation, self.token)

    @property
    def lost_reason(self) -> str | None:
        """Why this holder must stop writing, or None while it holds the lease."""
        if self._lost is None and self._renewed is not None and not self._stop.is_set():
            late = time.monotonic() - self._renewed
            if late > self.ttl:
                self._lose(
                    f"the {self.name} lease on {self.loc.url} was not renewed for {late:.0f} s "
                    f"(ttl {self.ttl:.0f} s), so another run may have taken it over; this run stops writing"
                )
        return self._lost

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
            log.error("%s", reason)

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds the lease."""
        self.fence().check()

    def _renew(self) -> None:
        gens = generations(self.loc, self.name)
        top = max(gens, default=None)
        if top is None or top != self.generation:
            if top is not None and self.generation is not None and top > self.generation:
                held = self.current()
                who = self.describe(held) if held else f"generation {top}"
                self._lose(f"the {self.name} lease on {self.loc.url} was taken over by {who}; this run stops writing")
            else:
                self._lose(f"the {self.name} lease file on {self.loc.url} is gone; this run stops writing")
            raise LeaseLost(self._lost)
        t0 = time.monotonic()
        self._beats += 1
        self.loc.write_json(self.key, self._body(top))
        self._renewed = t0

    def _beat(self) -> None:
        """Renew every ttl/4 until released; an error is logged and retried at the next beat."""
        interval = self.ttl / 4
        while not self._stop.wait(interval):
            if self.lost:
                return
            try:
                self._renew()
            except LeaseLost:
                return
            except Exception as exc:  # a transient fault must not end the renewals
                log.warning(
                    "could not renew the %s lease on %s (%s: %s); retrying in %.0f s",
                    self.name,
                    self.loc.url,
                    type(exc).__name__,
                    exc,
                    interval,
                )

    def _sweep(self) -> None:
        try:
            sweep_stale_tmp(self.loc, self.ttl)
        except Exception as exc:  # tidying up must never fail a run
            log.warning("could not sweep temporary files in %s: %s", self.loc.url, exc)

    def swept(self, timeout: float = 60) -> None:
        """Wait for the sweep that taking the lease started (see :meth:`acquire`)."""
        sweeper = getattr(self, "_sweeper", None)
        if sweeper is not None:
            sweeper.join(timeout=timeout)

    def release(self) -> None:
        self.swept()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.ttl))
            self._thread = None
        _HELD.pop(self.token, None)
        if self.generation is None:
            return
        try:
            gens = generations(self.loc, self.name)
            if max(gens, default=None) != self.generation:
                log.warning("not releasing the %s lease on %s: another run holds it now", self.name, self.loc.url)
                return
            self.loc.write_json(self.key, self._body(self.generation, released=True))
            for g in sorted(gens):
                if g < self.generation:
                    self.loc.delete(generation_key(self.name, g))
            self.loc.delete(self.legacy_key)
        except Exception as exc:  # the run's own outcome matters more than the lease's
            log.warning(
                "could not release the %s lease on %s (%s); the next run takes it over once its heartbeat "
                "is %.0f s old",
                self.name,
                self.loc.url,
                exc,
                self.ttl,
            )

    def __enter__(self) -> WorkspaceLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
