"""Helpers of the fault tests: the ``mangaka`` command in a process group of its own, a
background thread for the length of a ``with`` block, and a fault-injecting HTTP proxy for an
S3 server on loopback.

Between a client and moto's server it forwards every request unchanged, except that a
seeded share of them meet a fault instead: ``503 SlowDown``, ``500 InternalError``, or a
connection closed without any answer. ``permanent`` makes every write (PUT/POST/DELETE)
fail with ``403 AccessDenied`` until it is switched off, the way a revoked credential or a
locked bucket behaves.
"""

from __future__ import annotations

import http.client
import random
import socket
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import urlparse


def start_cli(
    args: list[str], cwd: Path, env: dict[str, str], stderr: int | IO[Any] = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """Start ``mangaka ARGS`` in a process group of its own, so that a crash or a SIGKILL of
    the group ends all of it (command, temporary server, Dask workers); stdout is dropped."""
    from tests.test_cli import MANGAKA

    return subprocess.Popen(
        [*MANGAKA, *args],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


class Background:
    """``target`` runs in a daemon thread for as long as the ``with`` block; :meth:`stop`
    (called on leaving the block, before the thread is joined) makes it return."""

    def __init__(self, target: Callable[[], object]) -> None:
        self.thread = threading.Thread(target=target, daemon=True)

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.thread.join()


HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    403: ("AccessDenied", "Access Denied"),
}


class FaultProxy(Background):
    def __init__(self, target: str, rate: float = 0.0, seed: int = 0) -> None:
        u = urlparse(target)
        self.target = (u.hostname or "127.0.0.1", u.port or 80)
        self.rate = rate
        self.permanent = False
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "503": 0, "500": 0, "dropped": 0, "403": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _error(self, status: int) -> None:
                code, message = ERRORS[status]
                body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                body += f"<Message>{message}</Message></Error>"
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                body = self._body()
                fault = proxy.pick(self.command)
                if fault == "dropped":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None:
                    self._error(int(fault))
                    return
                conn = http.client.HTTPConnection(*proxy.target, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        super().__init__(self.server.serve_forever)

    def pick(self, method: str) -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            if self.permanent and method in ("PUT", "POST", "DELETE"):
                self.counts["403"] += 1
                return "403"
            if self.rng.random() >= self.rate:
                return None
            fault = self.rng.choice(["503", "500", "dropped"])
            self.counts[fault] += 1
            return fault

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
