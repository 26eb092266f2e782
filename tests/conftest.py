"""Shared fixtures: a real S3 server (moto) on loopback, one Prefect API, one Dask cluster.

Order matters: the S3 variables and ``PREFECT_API_URL`` are exported before the Dask
workers start, so the worker processes inherit them, exactly as in a real run.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Commands the suite runs without the session's server start a temporary one of their own,
# stopped with them: no kept server outlives the suite (tests/test_apiserver.py tests that one).
os.environ.setdefault("MANGAKA_API_IDLE", "0")
# Kept command help (flows/cli/helpcache.py) goes to a folder of the suite's, not the user's.
os.environ.setdefault("MANGAKA_CACHE_DIR", tempfile.mkdtemp(prefix="mangaka-cache-"))


@pytest.fixture(autouse=True)
def _no_kept_server_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests that run commands with a clean environment (the default kept Prefect server, as a
    user gets it) leave that server behind for its idle time; stop the ones under the test's
    folder when it ends, so none burns the suite's CPU for ten minutes."""
    yield
    tmp = getattr(request.node, "funcargs", {}).get("tmp_path")
    if tmp is None:
        return
    import psutil

    root = str(tmp)
    for proc in psutil.process_iter(["cmdline"]):
        try:
            server = "flows.apiserver" in " ".join(proc.info["cmdline"] or [])
            if server and proc.environ().get("PREFECT_HOME", "").startswith(root):
                proc.terminate()
                proc.wait(10)
        except (psutil.Error, OSError):
            continue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, the way zarr's and s3fs's own suites test S3."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test; returns its name."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{_free_port()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def cluster(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect API and one 2-worker Dask LocalCluster for every flow test."""
    from flows.runtime import RunConfig, session

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    with session(RunConfig(workspace="unused", n_workers=2)) as address:
        yield address


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real ``prefect server start`` on 127.0.0.1 with its own database (the operator's
    server, as deploy/README.md starts it); yields the environment to reach it."""
    import signal
    import subprocess
    import sys
    import time

    import httpx

    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MANGAKA_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=url,  # the UI's pages call the API here, not at the default port
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        deadline = time.monotonic() + 120
        while not healthy():
            assert proc.poll() is None and time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(0.5)
        yield {**env, "PREFECT_API_URL": url}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


# -- small images the tests draw themselves ---------------------------------------------------
def jpeg_bytes(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95, **save)
    return buf.getvalue()


def rotated_jpeg(array: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``array`` whose EXIF says to show it rotated (``orientation`` 2-8)."""
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with a tiny body: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def gradient(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 255, 3)
    img = (base[None, None, :] + (x[..., None] * 3 + y[..., None] * 2)) % 256
    return img.astype(np.uint8)


HOSTILE = {
    "empty.jpg": lambda: b"",
    "truncated.jpg": lambda: jpeg_bytes(gradient(300, 300, 7))[:1500],
    "notanimage.png": lambda: b"this is a text file, not a picture\n" * 20,
    "bomb.png": lambda: png_header_only(60000, 60000),
}


def write_hostile(folder: Path) -> dict[str, str]:
    """Write one file of each hostile kind; returns name -> expected reason fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in HOSTILE.items():
        (folder / name).write_bytes(make())
    (folder / "README.txt").write_text("not named like an image: skipped, not quarantined")
    return {"empty.jpg": "empty", "truncated.jpg": "truncated", "notanimage.png": "not an image", "bomb.png": "bomb"}


def make_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as tf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tf.add(p, arcname=str(p.relative_to(folder)))
    return archive
