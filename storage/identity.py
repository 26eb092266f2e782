"""Who is writing: the machine (host, boot, PID namespace), the process and its start time.

Temporary files and leases carry these, so a later run can tell a dead writer's leftovers
from a live one's, even between containers that share a host name.
"""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

TMP_PREFIX = ".tmp-"


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def machine_identity() -> dict[str, str]:
    """Host name, boot id and PID namespace of this process ('' where /proc cannot say).

    Two processes whose identities are equal and complete run on the same kernel, booted
    once, in the same PID namespace: only then does a pid mean the same process to both.
    """
    return {
        "host": socket.gethostname(),
        "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        "pidns": _pid_namespace(),
    }


def identity_complete(ident: dict[str, Any]) -> bool:
    return all(str(ident.get(k) or "") for k in ("host", "boot_id", "pidns"))


def same_machine(ident: dict[str, Any]) -> bool:
    """True only when ``ident`` is provably this machine and this PID namespace."""
    mine = machine_identity()
    return identity_complete(mine) and all(str(ident.get(k) or "") == mine[k] for k in mine)


def machine_digest(ident: dict[str, Any] | None = None) -> str:
    """16 hex digits naming a machine and PID namespace (``x`` * 16 when not provable)."""
    ident = ident if ident is not None else machine_identity()
    if not identity_complete(ident):
        return "x" * 16
    text = "\0".join(str(ident[k]) for k in ("host", "boot_id", "pidns"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat``
    field 22), or '' when it cannot be read (no such process, or no /proc)."""
    raw = _read_text(f"/proc/{int(pid)}/stat")
    if not raw or ")" not in raw:
        return ""
    fields = raw.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else ""  # fields[0] is field 3 (state)


_tmp_prefix: tuple[int, str] | None = None


def tmp_prefix() -> str:
    """``.tmp-<machine digest>_<pid>_<start time>_`` of this process (recomputed after a fork)."""
    global _tmp_prefix
    pid = os.getpid()
    if _tmp_prefix is None or _tmp_prefix[0] != pid:
        _tmp_prefix = (pid, f"{TMP_PREFIX}{machine_digest()}_{pid}_{process_start(pid) or 0}_")
    return _tmp_prefix[1]


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_state(pid: int) -> str:
    """The state letter of process ``pid`` (``/proc/<pid>/stat`` field 3: R, S, D, Z, ...),
    or '' when it cannot be read."""
    raw = _read_text(f"/proc/{int(pid)}/stat")
    if not raw or ")" not in raw:
        return ""
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0] if fields else ""


def process_running(pid: int, start: str = "") -> bool:
    """Whether ``pid`` runs here and, when its start time is known, is still the same process.

    A zombie is not running: a SIGKILLed worker whose parent died with it stays a zombie
    until init reaps it, and in a container whose PID 1 does not reap it stays one for good.
    """
    if not pid_alive(pid):
        return False
    if process_state(pid) in ("Z", "X"):
        return False
    if start and start != "0":
        now = process_start(pid)
        if now and now != start:
            return False  # the pid was reused by another process
    return True
