"""Benchmark: ingestion of 512x512 JPEGs against a plain single-process PIL loop.

    make bench            # or: .venv/bin/python -m bench.ingest --count 1024

The corpus is drawn by ``synth`` at 512 px (JPEG, cached under ``bench/.cache``). The
baseline decodes and resizes every file in one process with PIL and stores nothing.
mangaka runs the real ``ingest-images`` flow (Prefect + a Dask LocalCluster of one worker
per core) and also hashes, converts, compresses with zstd and writes Zarr shards. Both are
timed on the same files after a warm-up read; the cluster and Prefect server start once,
before the timed run (their start-up is reported separately). Peak memory is the highest
sum of resident memory over the process tree, sampled every 50 ms, for two corpus sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

from tests.faults import Background

HERE = Path(__file__).resolve().parent


def make_corpus(count: int, size: int = 512) -> Path:
    from tasks.synth import write_synth_shard

    root = HERE / ".cache" / f"synth-{size}"
    images = root / "images"
    have = len(list(images.glob("*.jpg"))) if images.exists() else 0
    if have < count:
        from concurrent.futures import ProcessPoolExecutor

        step = 64
        with ProcessPoolExecutor() as pool:
            jobs = [
                pool.submit(write_synth_shard, str(root), 11, size, i, min(i + step, count), 0)
                for i in range(have, count, step)
            ]
            for job in jobs:
                job.result()
    return images


def baseline(files: list[Path], size: int) -> float:
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return time.perf_counter() - t0


class PeakRSS(Background):
    """Highest total RSS of this process and its children while active (``peak``), and the
    highest RSS of each process (``peaks``, by pid; this process is ``me``)."""

    def __init__(self) -> None:
        self.peak = 0
        self.peaks: dict[int, int] = {}
        self.me = os.getpid()
        self._stop = threading.Event()
        super().__init__(self._run)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    rss = p.memory_info().rss
                    total += rss
                    self.peaks[p.pid] = max(self.peaks.get(p.pid, 0), rss)
            self.peak = max(self.peak, total)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def mangaka_run(src: Path, size: int) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one ingest-images flow run into a new workspace."""
    from flows.ingest import ingest_images
    from tasks.ingest import IngestOptions

    ws = tempfile.mkdtemp(prefix="mangaka-bench-")
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = ingest_images(workspace=ws, src=str(src), options=IngestOptions(size=size))
            dt = time.perf_counter() - t0
        assert r["stored"] > 0
        return dt, mem.peak
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2048)
    ap.add_argument("--sizes", default="512,256", help="target sizes to ingest the 512 px JPEGs at")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "ingest.json"))
    a = ap.parse_args()
    from flows.runtime import RunConfig, session

    src = make_corpus(a.count)
    files = sorted(src.glob("*.jpg"))[: a.count]
    sub = Path(tempfile.mkdtemp(prefix="bench-src-"))
    half = sub / "half"
    full = sub / "full"
    half.mkdir()
    full.mkdir()
    for i, f in enumerate(files):
        os.link(f, full / f.name)
        if i < len(files) // 2:
            os.link(f, half / f.name)
    baseline(files[:32], 512)  # warm the page cache and PIL
    n = len(files)
    results: dict[str, object] = {"images": n, "source": "512x512 JPEG (synth)", "cores": os.cpu_count()}
    t_start = time.perf_counter()
    with session(RunConfig(workspace="unused")):
        results["startup_s"] = round(time.perf_counter() - t_start, 1)
        for size in [int(s) for s in a.sizes.split(",")]:
            # interleave the two, best of `repeats`: this machine's speed drifts between runs
            t_base, t_ours, mem_half, mem_full = float("inf"), float("inf"), 0, 0
            for _ in range(a.repeats):
                t_base = min(t_base, baseline(files, size))
                t, mem_full = mangaka_run(full, size)
                t_ours = min(t_ours, t)
            _, mem_half = mangaka_run(half, size)
            results[f"size_{size}"] = {
                "baseline_images_per_s": round(n / t_base, 1),
                "mangaka_images_per_s": round(n / t_ours, 1),
                "speedup": round(t_base / t_ours, 2),
                "peak_rss_mb": {str(n // 2): round(mem_half / 2**20), str(n): round(mem_full / 2**20)},
            }
    result = results
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    shutil.rmtree(sub, ignore_errors=True)


if __name__ == "__main__":
    main()
