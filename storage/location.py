"""Where bytes live: a local directory or an ``s3://bucket/prefix``, behind one interface.

Everything that touches a file or an object goes through :class:`Location`; callers speak
in workspace-relative keys (``"_meta/workspace.json"``) and never build paths themselves.
Writes are atomic: a local file is written beside its target and renamed over it, and an
S3 PUT is atomic by nature, so a killed writer never leaves half a marker behind.

S3 credentials and the endpoint come from the standard AWS variables and files
(``AWS_ENDPOINT_URL`` for an S3-compatible server); nothing here logs them.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import tempfile
from dataclasses import dataclass
from typing import Any

import fsspec

# Temporary files carry their writer's host and pid, so that a later run can tell a dead
# writer's leftovers from a live one's (storage.lease.sweep_stale_tmp).
TMP_PREFIX = ".tmp-"


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def s3_storage_options() -> dict[str, Any]:
    """Options for s3fs from the standard AWS environment (endpoint for S3-compatible servers)."""
    # Every request has a time limit, so a hung connection surfaces as a transient error
    # (retried by the shard task) instead of a task that never ends; botocore's own retries
    # absorb short throttling first.
    opts: dict[str, Any] = {
        # Other processes (Dask workers, other runs) write markers and shards all the time:
        # a cached listing would make a flow miss what its own tasks just wrote.
        "use_listings_cache": False,
        "config_kwargs": {
            "connect_timeout": float(os.environ.get("MANGAKA_S3_CONNECT_TIMEOUT", "10")),
            "read_timeout": float(os.environ.get("MANGAKA_S3_READ_TIMEOUT", "60")),
            "retries": {"max_attempts": 5, "mode": "adaptive"},
        },
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def filesystem(url: str, asynchronous: bool = False) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the root path inside it."""
    if not is_remote(url):
        path = url[len("file://") :] if url.startswith("file://") else url
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    protocol, _, rest = url.partition("://")
    if protocol not in ("s3", "s3a"):
        raise ValueError(f"unsupported location {url!r}: use a local directory or s3://bucket/prefix")
    fs = fsspec.filesystem("s3", asynchronous=asynchronous, **s3_storage_options())
    return fs, rest.rstrip("/")


def safe_key(key: str) -> str:
    """Normalise a relative key and refuse any that would leave its root."""
    norm = posixpath.normpath(key.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"key {key!r} escapes its root")
    return "" if norm == "." else norm


@dataclass
class Location:
    """A root (local directory or S3 prefix) and atomic, key-based access below it."""

    url: str

    def __post_init__(self) -> None:
        self.fs, self.root = filesystem(self.url)
        self.remote = is_remote(self.url)
        if not self.remote:
            # Absolute, so that a Dask worker with another working directory finds the same place.
            self.url = self.root

    def __getstate__(self) -> dict[str, Any]:
        # Filesystems hold sockets and event loops: ship only the URL to Dask workers.
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.__post_init__()

    def path(self, key: str = "") -> str:
        k = safe_key(key)
        return f"{self.root}/{k}" if k else self.root

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def read_bytes(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(key)))

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        if self.remote:
            self.fs.pipe_file(target, data)
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        prefix = f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-"
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=prefix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, json.dumps(obj, indent=1, sort_keys=True).encode())

    def read_json_many(self, keys: list[str]) -> dict[str, Any]:
        """Read many small JSON objects at once (concurrently on S3); missing keys are left out."""
        if not keys:
            return {}
        paths = [self.path(k) for k in keys]
        got = self.fs.cat(paths, on_error="omit")
        by_path = {p.rstrip("/"): v for p, v in got.items()}
        out: dict[str, Any] = {}
        for k, p in zip(keys, paths, strict=True):
            raw = by_path.get(p) or by_path.get(p.lstrip("/"))
            if raw is not None:
                out[k] = json.loads(raw)
        return out

    def list(self, prefix: str) -> list[str]:
        """Keys of the files directly under ``prefix`` (relative to the root), sorted."""
        base = self.path(prefix)
        try:
            names = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        root = self.root.rstrip("/") + "/"
        keys = []
        for name in names:
            name = str(name)
            rel = name[len(root) :] if name.startswith(root) else name
            if not posixpath.basename(rel).startswith(TMP_PREFIX):
                keys.append(rel)
        return sorted(keys)

    def delete(self, key: str) -> None:
        p = self.path(key)
        if self.fs.exists(p):
            self.fs.rm(p, recursive=True)

    def zarr_store(self, read_only: bool = False):  # noqa: ANN201 - zarr types are heavy
        """A zarr v3 store rooted at this location."""
        import zarr.storage

        if not self.remote:
            os.makedirs(self.root, exist_ok=True)
            return zarr.storage.LocalStore(self.root, read_only=read_only)
        fs, path = filesystem(self.url, asynchronous=True)
        return zarr.storage.FsspecStore(fs, path=path, read_only=read_only)
