"""Benchmark: Danbooru scale, measured: 302,652 tiny images through the real commands.

    .venv/bin/python -m bench.scale [--counts 20000,302652] [--stores local,s3]

A synthetic corpus of distinct 16 px JPEGs (noise, so every content hash differs; cached
under ``bench/.cache/tiny-16``) keeps compute near zero, so what is measured is the
machinery: planning, journals, markers, item tables, Prefect, Dask, start-up. For every
corpus size and store (a local directory, or a moto S3 server on loopback whose every
request is counted), each step is the real command line in a fresh process, exactly as a
user runs it, start-up included:

1. ``ingest-images`` of every file (all new; the first command also starts the kept local
   Prefect server, see ``flows/apiserver.py``),
2. the same again (nothing new: a no-op; each no-op step and ``status`` runs three times,
   its median reported),
3. ``render-lineart --method xdog`` (the cheapest bulk stage),
4. the same again (a no-op),
5. ``status``,

plus a no-op with a temporary Prefect server of its own (``MANGAKA_API_IDLE=0``: the cost
without the kept server). Reported per step: wall seconds, peak resident memory of the
command and its Dask workers (sampled every 50 ms; the Prefect server apart), S3 requests
by kind; per store: bytes of ``_meta`` per item. Goals (2 cores): ingest ≤ 5 min, no-ops ≤
10 s, ``status`` ≤ 3 s, ``_meta`` ≤ 1% of the corpus bytes of real 512 px images (Danbooru2019
Portraits: 16 GB of JPEGs for 302,652 images, 53 KB each), a no-op's S3 requests not
growing with the items beyond the listing, peak memory at the largest size within 1.2x of
the smallest.

Writes ``bench/results/scale.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MANGAKA = [sys.executable, "-m", "flows.cli"]
DANBOORU_JPEG_BYTES = 16e9 / 302_652


def _draw(start: int, stop: int, root: str) -> None:
    import cv2

    for i in range(start, stop):
        path = Path(root) / f"t{i:06d}.jpg"
        if not path.exists():
            rng = np.random.default_rng(i)
            ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            path.write_bytes(buf.tobytes())


def tiny_corpus(count: int) -> Path:
    """``count`` distinct 16 px JPEGs in one folder (cached); returns a folder with exactly those."""
    root = HERE / ".cache" / "tiny-16"
    root.mkdir(parents=True, exist_ok=True)
    step = 5000
    with ProcessPoolExecutor() as pool:
        for job in [pool.submit(_draw, i, min(i + step, count), str(root)) for i in range(0, count, step)]:
            job.result()
    view = HERE / ".cache" / f"tiny-16-{count}"
    if not view.exists() or len(os.listdir(view)) != count:
        shutil.rmtree(view, ignore_errors=True)
        view.mkdir()
        for i in range(count):  # hard links: a folder of exactly the first `count` files
            os.link(root / f"t{i:06d}.jpg", view / f"t{i:06d}.jpg")
    return view


# -- a counted S3 server ----------------------------------------------------------------


class CountedS3:
    """moto's S3 on 127.0.0.1, counting every request by kind (GET, PUT, HEAD, LIST, DELETE, POST)."""

    def __init__(self) -> None:
        import logging

        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            method = environ.get("REQUEST_METHOD", "?")
            query = environ.get("QUERY_STRING", "")
            kind = "LIST" if method == "GET" and ("list-type" in query or "prefix=" in query) else method
            with self._lock:
                self.counts[kind] += 1
            return app(environ, start_response)

        self.server = make_server("127.0.0.1", 0, counted, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def take(self) -> dict[str, int]:
        with self._lock:
            out = dict(self.counts)
            self.counts.clear()
        return out

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def object_bytes(self, bucket: str, prefix: str) -> int:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, **_creds())
        total = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def stop(self) -> None:
        self.server.shutdown()


def _creds() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


# -- one command, measured ----------------------------------------------------------------


def _is_server(p: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "flows.apiserver" in " ".join(p.cmdline())
    return False


@contextlib.contextmanager
def peak_of(pid: int) -> Iterator[dict[str, int]]:
    """Highest total RSS of process ``pid`` and its descendants (a Prefect server apart), and
    of the command's own process alone (``command``: the flow; the rest are Dask workers)."""
    got = {"peak": 0, "command": 0}
    stop = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):
                got["command"] = max(got["command"], root.memory_info().rss)
                for p in [root, *root.children(recursive=True)]:
                    if not _is_server(p):
                        with contextlib.suppress(psutil.Error):
                            total += p.memory_info().rss
            got["peak"] = max(got["peak"], total)
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield got
    finally:
        stop.set()
        t.join()


def command(args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*MANGAKA, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with peak_of(proc.pid) as mem:
        out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mangaka {' '.join(args)} failed ({proc.returncode}): {err[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(mem["peak"] / 2**20),
        "peak_rss_command_mb": round(mem["command"] / 2**20),
        "said": out.strip()[-300:],
    }


REPEATS = 3
REPEATED = frozenset({"ingest_noop", "render_noop", "status"})


def run_store(count: int, store: str, s3: CountedS3 | None, tmp: Path) -> dict[str, Any]:
    src = tiny_corpus(count)
    home = tmp / f"prefect-{store}-{count}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MANGAKA_", "AWS_"))}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT))
    if store == "s3":
        assert s3 is not None
        import boto3

        bucket = f"scale-{count}"
        boto3.client("s3", endpoint_url=s3.endpoint, **_creds()).create_bucket(Bucket=bucket)
        env.update(s3.env())
        ws = f"s3://{bucket}/ws"
    else:
        ws = str(tmp / f"ws-{count}")
    g = ["--workspace", ws]
    steps = [
        ("ingest", [*g, "ingest-images", str(src), "--size", "16"], {}),
        ("ingest_noop", [*g, "ingest-images", str(src), "--size", "16"], {}),
        ("render_xdog", [*g, "render-lineart", "--method", "xdog"], {}),
        ("render_noop", [*g, "render-lineart", "--method", "xdog"], {}),
        ("status", [*g, "status"], {}),
        ("render_noop_temporary_server", [*g, "render-lineart", "--method", "xdog"], {"MANGAKA_API_IDLE": "0"}),
    ]
    out: dict[str, Any] = {"items": count, "store": store}
    try:
        for name, args, extra in steps:
            rows = []
            # a no-op changes nothing: run it three times and take the median (this box's
            # speed drifts by 20% between minutes); a first run of a kind is the one counted
            # for S3 requests, since it may still refresh a cache the others then find
            for _ in range(REPEATS if name in REPEATED else 1):
                if s3 is not None:
                    s3.take()
                row = command(args, {**env, **extra}, tmp)
                if s3 is not None:
                    row["s3_requests"] = s3.take()
                    row["s3_requests_total"] = sum(row["s3_requests"].values())
                rows.append(row)
            row = dict(rows[0])
            if len(rows) > 1:
                times = sorted(r["seconds"] for r in rows)
                row["seconds"] = times[len(times) // 2]
                row["seconds_runs"] = [r["seconds"] for r in rows]
                row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
                row["peak_rss_command_mb"] = max(r["peak_rss_command_mb"] for r in rows)
                if s3 is not None:
                    row["s3_requests_total_runs"] = [r["s3_requests_total"] for r in rows]
            out[name] = row
            print(store, count, name, json.dumps(row), flush=True)
    finally:
        subprocess.run([*MANGAKA, "api-server", "--stop"], env=env, capture_output=True, timeout=60)
    if store == "s3":
        assert s3 is not None
        meta = s3.object_bytes(f"scale-{count}", "ws/_meta/")
        images = s3.object_bytes(f"scale-{count}", "ws/corpus/images/")
    else:
        meta = sum(p.stat().st_size for p in (Path(ws) / "_meta").rglob("*") if p.is_file())
        images = sum(p.stat().st_size for p in (Path(ws) / "corpus" / "images").rglob("*") if p.is_file())
        shutil.rmtree(ws, ignore_errors=True)
    out["meta_bytes_per_item"] = round(meta / count, 1)
    out["meta_pct_of_danbooru_jpegs"] = round(100 * meta / (count * DANBOORU_JPEG_BYTES), 3)
    out["corpus_images_bytes_per_item"] = round(images / count, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="20000,302652")
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    a = ap.parse_args()
    counts = [int(c) for c in a.counts.split(",")]
    stores = a.stores.split(",")
    result: dict[str, Any] = {"benchmark": "scale", "cores": os.cpu_count(), "image_px": 16, "runs": []}
    s3 = CountedS3() if "s3" in stores else None
    try:
        with tempfile.TemporaryDirectory(prefix="mangaka-scale-") as t:
            tmp = Path(t)
            for store in stores:
                for count in counts:
                    result["runs"].append(run_store(count, store, s3 if store == "s3" else None, tmp))
                    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        if s3 is not None:
            s3.stop()
    for store in stores:
        runs = [r for r in result["runs"] if r["store"] == store]
        if len(runs) > 1:
            small, big = runs[0], runs[-1]
            for kind, field in (("", "peak_rss_mb"), ("_command", "peak_rss_command_mb")):
                result[f"{store}_peak_rss{kind}_growth"] = {
                    step: round(big[step][field] / max(1, small[step][field]), 2)
                    for step in ("ingest", "ingest_noop", "render_xdog", "render_noop", "status")
                }
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
