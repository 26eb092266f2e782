"""Workspace leases: one run of a flow at a time on one workspace, and the sweep of dead writers' files.

A lease is ``_meta/leases/<name>.json`` naming its holder (run, host, pid) and a heartbeat
time that a thread of the holder renews every ``ttl/4`` seconds. Another run of the same
flow on the same workspace finds it and waits (up to ``wait`` seconds) or refuses with a
message that names the holder. A lease is stale, and taken over with a warning, when its
heartbeat is older than ``ttl`` or when its holder ran on this host and its process is
gone (a SIGKILLed run releases nothing).

Taking a lease writes it and reads it back after a short pause: of two runs that raced,
only the one whose write survived goes on (the object stores have no compare-and-swap
that every S3-compatible server honours).

On a local workspace, acquiring a lease also removes the temporary files that a killed
writer left behind (``.tmp-<host>-<pid>-*`` of this host whose process is gone): they
are never data, but a killed run must leave the workspace exactly as an uninterrupted one.

This module must never import Prefect, Dask or torch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from storage.location import TMP_PREFIX, Location, safe_key

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live run holds the lease."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_tmp(loc: Location) -> int:
    """Delete this host's temporary files whose writer process is gone; return how many."""
    if loc.remote or not os.path.isdir(loc.root):
        return 0
    host = socket.gethostname()
    removed = 0
    for dirpath, _dirs, files in os.walk(loc.root):
        for name in files:
            if not name.startswith(TMP_PREFIX):
                continue
            parts = name[len(TMP_PREFIX) :].rsplit("-", 2)
            if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
                continue
            if pid_alive(int(parts[1])):
                continue
            try:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        log.info("removed %d temporary file(s) left by killed writers", removed)
    return removed


class WorkspaceLease:
    """``with WorkspaceLease(loc, "render-lineart", run="..."):`` holds the lease for the block."""

    def __init__(
        self, loc: Location, name: str, run: str = "", wait: float = 0.0, ttl: float = 120.0, poll: float = 2.0
    ) -> None:
        self.loc = loc
        self.name = name
        self.key = f"_meta/leases/{safe_key(name)}.json"
        self.run = run
        self.wait = wait
        self.ttl = ttl
        self.poll = poll
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "token": self.token,
            "run": self.run,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "heartbeat": time.time(),
        }

    def current(self) -> dict[str, Any] | None:
        try:
            got: dict[str, Any] = self.loc.read_json(self.key)
            return got
        except (FileNotFoundError, ValueError):
            return None

    def stale(self, held: dict[str, Any]) -> str | None:
        age = time.time() - float(held.get("heartbeat", 0))
        if held.get("host") == socket.gethostname() and not pid_alive(int(held.get("pid", 0))):
            return f"its process {held.get('pid')} is gone"
        if age > self.ttl:
            return f"no heartbeat for {age:.0f} s"
        return None

    def describe(self, held: dict[str, Any]) -> str:
        age = time.time() - float(held.get("heartbeat", 0))
        run = f"run {held['run']}, " if held.get("run") else ""
        return f"{run}pid {held.get('pid')} on {held.get('host')}, heartbeat {age:.0f} s ago"

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        announced = False
        while True:
            held = self.current()
            if held is not None and held.get("token") != self.token:
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
            self.loc.write_json(self.key, self._body())
            # let a racing writer's write land, then see whose survived (a local rename is
            # visible at once; an S3 PUT may take a moment to be read back)
            time.sleep(0.2 if self.loc.remote else 0.02)
            again = self.current()
            if again is not None and again.get("token") == self.token:
                break
        sweep_stale_tmp(self.loc)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            held = self.current()
            if held is not None and held.get("token") != self.token:
                log.error("the %s lease on %s was taken over by %s", self.name, self.loc.url, self.describe(held))
                return
            self.loc.write_json(self.key, self._body())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self.current()
        if held is not None and held.get("token") == self.token:
            self.loc.delete(self.key)

    def __enter__(self) -> WorkspaceLease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
