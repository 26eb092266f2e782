"""The Prefect API of the embedded default: one local server per ``PREFECT_HOME``, kept between commands.

Prefect without a configured server starts a temporary one in every process that needs it,
and its start costs ~10 s of a 2-core machine (importing the server and checking its
database), more than a no-op command's whole work. So the command line starts one server
for the ``PREFECT_HOME`` it uses (the server's database lives there), leaves it running
after the command, and the next command finds it (``$PREFECT_HOME/mangaka-api.json``,
checked by a health request) instead of starting another. The server stops itself once it
has served no request and held no connection for ``MANGAKA_API_IDLE`` seconds (default
600); ``mangaka api-server --stop`` stops it at once. ``MANGAKA_API_IDLE=0`` gives every
command a temporary server of its own, stopped when the command ends (the old way). With
``PREFECT_API_URL`` set (a real server, ``mangaka serve``, a cluster) none of this runs.

The server listens on 127.0.0.1 only, on a port chosen when it starts, and has no UI.
Its address is known before it is ready, so the command starts its Dask workers (which must
inherit ``PREFECT_API_URL``) while the server is still starting.

Run as a module (``python -m flows.apiserver --port P --idle S``) it *is* the server.
Nothing here imports Prefect in the command's process except through the health check.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import env_number
from storage.identity import pid_alive

IDLE_ENV = "MANGAKA_API_IDLE"
DEFAULT_IDLE = 600.0
RECORD = "mangaka-api.json"
LOG = "mangaka-api.log"


def idle_seconds() -> float:
    """``MANGAKA_API_IDLE``: seconds a kept server waits for the next command (0: none kept)."""
    return float(env_number(IDLE_ENV, DEFAULT_IDLE, minimum=0))


def prefect_home() -> Path:
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check at ``url`` (``http://host:port/api``)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    """A local Prefect server this command started or found: its URL, and how to wait for it."""

    url: str
    process: subprocess.Popen[bytes] | None  # None: found running, started by an earlier command
    kept: bool
    log: Path | None = None

    def wait(self, timeout: float = 180.0) -> None:
        """Return once the server answers; a clear error (with its log's end) if it died or hung."""
        deadline = time.monotonic() + timeout
        while not healthy(self.url, timeout=1.0):
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the local Prefect server exited with code {self.process.returncode}{self._tail()}")
            if time.monotonic() > deadline:
                what = f"the local Prefect server at {self.url} did not answer in {timeout:.0f} s"
                raise RuntimeError(what + self._tail())
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop a temporary server (a kept one outlives the command: see the module docstring)."""
        if self.process is None or self.kept:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.log is not None:
            self.log.unlink(missing_ok=True)

    def _tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        return ("; its log ends: " + " | ".join(lines)) if lines else ""


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One command at a time finds or starts the kept server of a PREFECT_HOME (one database, one server)."""
    with open(home / "mangaka-api.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_record(home: Path | None = None) -> dict[str, Any] | None:
    path = (home or prefect_home()) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "url" in record and "pid" in record else None


def _start(port: int, idle: float, kept: bool, home: Path) -> ApiServer:
    log = home / (LOG if kept else f"mangaka-api-{port}.log")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})
    args = [sys.executable, "-m", "flows.apiserver", "--port", str(port), "--idle", str(idle if kept else 0)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # A kept server is nobody's child: Ctrl-C in the terminal and the end of the
            # command's process group leave it alone (it stops when idle).
            start_new_session=kept,
        )
    return ApiServer(f"http://127.0.0.1:{port}/api", process, kept, log)


def find_or_start() -> ApiServer:
    """The kept server of this PREFECT_HOME if one answers, else a new one (kept, or temporary
    with ``MANGAKA_API_IDLE=0``). The returned server may still be starting: call ``wait``."""
    idle = idle_seconds()
    home = prefect_home()
    if idle == 0:
        return _start(_free_port(), 0, False, home)
    with _locked(home):
        record = read_record(home)
        alive = bool(record) and pid_alive(int(record["pid"]))  # type: ignore[index]
        if record and alive and healthy(str(record["url"])):
            return ApiServer(str(record["url"]), None, True)
        if record and alive and record.get("starting") and time.time() - record["started"] < 120:
            # Another command started it a moment ago and is waiting for it too.
            return ApiServer(str(record["url"]), None, True)
        server = _start(_free_port(), idle, True, home)
        assert server.process is not None
        body = {"url": server.url, "pid": server.process.pid, "idle_s": idle, "started": time.time(), "starting": True}
        (home / RECORD).write_text(json.dumps(body))
        return server


def stop_kept(timeout: float = 15.0) -> str:
    """Stop this PREFECT_HOME's kept server; says what it did."""
    home = prefect_home()
    with _locked(home):
        record = read_record(home)
        if not record or not pid_alive(int(record["pid"])):
            (home / RECORD).unlink(missing_ok=True)
            return "no kept Prefect server is running for " + str(home)
        pid = int(record["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        (home / RECORD).unlink(missing_ok=True)
        return f"stopped the kept Prefect server at {record['url']} (pid {pid})"


def describe_kept() -> str:
    home = prefect_home()
    record = read_record(home)
    if not record or not pid_alive(int(record["pid"])) or not healthy(str(record["url"])):
        return f"no kept Prefect server is running for {home}"
    return (
        f"a kept Prefect server runs at {record['url']} (pid {record['pid']}) for {home}; it stops after "
        f"{float(record.get('idle_s', DEFAULT_IDLE)):.0f} s without a request (`mangaka api-server --stop`: now)"
    )


def cli_options(p: argparse.ArgumentParser) -> None:
    """The options of ``mangaka api-server``."""
    p.add_argument("--stop", action="store_true", help="stop the kept server now (the next command starts one)")


def cli_command(a: argparse.Namespace, config: Any) -> int:
    """``mangaka api-server [--stop]``: say where this PREFECT_HOME's kept server runs, or stop it."""
    if os.environ.get("PREFECT_API_URL"):
        print(f"PREFECT_API_URL is set ({os.environ['PREFECT_API_URL']}): commands use that server, none is kept")
    print(stop_kept() if a.stop else describe_kept())
    return 0


# -- the server process ---------------------------------------------------------------


def serve(port: int, idle: float) -> None:
    """Prefect's API app on 127.0.0.1:``port`` under uvicorn, stopping after ``idle`` quiet seconds (0: never)."""
    import uvicorn
    from prefect.server.api.server import create_app

    app = create_app()
    quiet = {"open": 0, "since": time.monotonic()}

    async def tracked(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        quiet["open"] += 1
        try:
            await app(scope, receive, send)
        finally:
            quiet["open"] -= 1
            quiet["since"] = time.monotonic()

    server = uvicorn.Server(uvicorn.Config(tracked, host="127.0.0.1", port=port, log_level="error", lifespan="on"))

    def watch() -> None:
        while not server.should_exit:
            time.sleep(min(5.0, max(0.2, idle / 10)))
            if server.started and quiet["open"] == 0 and time.monotonic() - quiet["since"] > idle:
                server.should_exit = True

    if idle > 0:
        threading.Thread(target=watch, name="idle-watch", daemon=True).start()

    def ready() -> None:  # the record says "starting" until the server answers
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        quiet["since"] = time.monotonic()  # idle counts from the moment it answers
        _mark_ready()

    threading.Thread(target=ready, name="ready", daemon=True).start()
    try:
        server.run()
    finally:
        _forget()


def _mark_ready() -> None:
    home = prefect_home()
    record = read_record(home)
    if record and record.get("pid") == os.getpid():
        record.pop("starting", None)
        with contextlib.suppress(OSError):
            (home / RECORD).write_text(json.dumps(record))


def _forget() -> None:
    """Remove the record when it is this server's (a newer one may have replaced it)."""
    home = prefect_home()
    record = read_record(home)
    if record and record.get("pid") == os.getpid():
        (home / RECORD).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.apiserver", description="mangaka's local Prefect server")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--idle", type=float, default=DEFAULT_IDLE, help="stop after this many quiet seconds (0: never)")
    args = ap.parse_args(argv)
    serve(args.port, args.idle)  # uvicorn stops cleanly on SIGTERM and SIGINT


if __name__ == "__main__":
    main()
