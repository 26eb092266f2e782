"""Benchmark: ingestion of 512x512 JPEGs against a plain single-process PIL loop.

    make bench            # or: .venv/bin/python -m bench.ingest --count 1024

The corpus is drawn by ``synth`` at 512 px (JPEG, cached under ``bench/.cache``). The
baseline decodes and resizes every file in one process with PIL and stores nothing.
mangaka runs the real ``ingest-images`` flow (Prefect + a Dask LocalCluster of one worker
per core) and also hashes, checks and writes Zarr shards: with ``--codec jpeg`` (the
default) a conforming source is validated and stored byte for byte, others are decoded and
encoded once; with ``raw`` every image is decoded and compressed with zstd. Four runs: the
JPEG corpus into jpeg and raw workspaces at 512, the same portraits as PNG files into a
jpeg workspace, and the JPEGs at 256 (resized). Each reports the stored bytes against the
sources' and one reader thread's read rate; the jpeg run also checks that items read back
equal a plain libjpeg-turbo decode of their source. Both are timed on the same files after
a warm-up read; the cluster and Prefect server start once, before the timed runs (their
start-up is reported separately). Peak memory is the highest sum of resident memory over
the process tree, sampled every 50 ms.
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


def png_corpus(files: list[Path]) -> Path:
    """The same portraits as PNG files (cached): a corpus no image of which is stored as it is."""
    root = HERE / ".cache" / "synth-512-png"
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        out = root / (f.stem + ".png")
        if not out.exists():
            with Image.open(f) as im:
                im.save(out, format="PNG")
    return root


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mangaka_run(src: Path, size: int, codec: str = "jpeg", keep: bool = False) -> tuple[float, int, str]:
    """Seconds and peak RSS (bytes) of one ingest-images flow run into a new workspace, and
    the workspace (deleted unless ``keep``)."""
    from flows.ingest import ingest_images
    from tasks.ingest import IngestOptions

    ws = tempfile.mkdtemp(prefix="mangaka-bench-")
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = ingest_images(workspace=ws, src=str(src), options=IngestOptions(size=size, codec=codec))
            dt = time.perf_counter() - t0
        assert r["stored"] > 0
        return dt, mem.peak, ws
    finally:
        if not keep:
            shutil.rmtree(ws, ignore_errors=True)


def read_rate(ws_url: str, count: int, size: int | None = None) -> float:
    """Images per second read from ``corpus/images`` by one thread, batches of 16 (warm)."""
    from storage.workspace import Workspace

    ws = Workspace(ws_url)
    batches = [list(range(i, min(i + 16, count))) for i in range(0, count, 16)]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for b in batches:
            ws.read_items("corpus/images", b, size)
        best = min(best, time.perf_counter() - t0)
    return count / best


def read_back_equals_source(ws_url: str, sample: int = 64) -> dict[str, int]:
    """How many of ``sample`` items read back equal a plain libjpeg-turbo decode of their source."""
    import simplejpeg

    from storage.workspace import Workspace

    ws = Workspace(ws_url)
    entries = [e for m in ws.markers("corpus/images").values() for e in m["entries"] if e["status"] == "ok"]
    entries = entries[:: max(1, len(entries) // sample)][:sample]
    pixels = ws.read_items("corpus/images", [e["slot"] for e in entries])
    equal = sum(
        bool((p == simplejpeg.decode_jpeg(Path(e["source"]).read_bytes(), "RGB")).all())
        for p, e in zip(pixels, entries, strict=True)
    )
    return {"checked": len(entries), "equal": equal}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "ingest.json"))
    a = ap.parse_args()
    from flows.runtime import RunConfig, session

    src = make_corpus(a.count)
    files = sorted(src.glob("*.jpg"))[: a.count]
    sub = Path(tempfile.mkdtemp(prefix="bench-src-"))
    half, full = sub / "half", sub / "full"
    half.mkdir()
    full.mkdir()
    for i, f in enumerate(files):
        os.link(f, full / f.name)
        if i < len(files) // 2:
            os.link(f, half / f.name)
    png = png_corpus(files)
    png_files = sorted(png.glob("*.png"))[: a.count]
    baseline(files[:32], 512)  # warm the page cache and PIL
    n = len(files)
    results: dict[str, object] = {
        "images": n,
        "source": "512x512 baseline JPEG (synth, quality 92)",
        "cores": os.cpu_count(),
    }
    t_start = time.perf_counter()
    runs = [  # (name, source folder, its files, size, codec)
        ("jpeg_512", full, files, 512, "jpeg"),  # every source conforms: stored as it is
        ("raw_512", full, files, 512, "raw"),  # decoded and compressed with zstd (lossless)
        ("png_jpeg_512", png, png_files, 512, "jpeg"),  # PNG sources: decoded, encoded once
        ("jpeg_256", full, files, 256, "jpeg"),  # resized: decoded at a DCT scale, encoded once
    ]
    with session(RunConfig(workspace="unused")):
        results["startup_s"] = round(time.perf_counter() - t_start, 1)
        for name, folder, its_files, size, codec in runs:
            # interleave the two, best of `repeats`: this machine's speed drifts between runs
            t_base, t_ours, mem_full = float("inf"), float("inf"), 0
            kept = ""
            for r in range(a.repeats):
                t_base = min(t_base, baseline(its_files, size))
                t, mem_full, ws = mangaka_run(folder, size, codec, keep=r == a.repeats - 1)
                t_ours = min(t_ours, t)
                kept = ws
            source_bytes = sum(f.stat().st_size for f in its_files)
            stored = tree_bytes(Path(kept) / "corpus" / "images")
            row: dict[str, object] = {
                "codec": codec,
                "baseline_images_per_s": round(n / t_base, 1),
                "mangaka_images_per_s": round(n / t_ours, 1),
                "speedup": round(t_base / t_ours, 2),
                "stored_bytes_vs_source": round(stored / source_bytes, 3),
                "stored_mb": round(stored / 2**20, 1),
                "source_mb": round(source_bytes / 2**20, 1),
                "read_images_per_s_1_thread": round(read_rate(kept, min(n, 512)), 1),
            }
            if name == "jpeg_512":
                row["read_at_256_images_per_s_1_thread"] = round(read_rate(kept, min(n, 512), 256), 1)
                row["read_back_equals_source_decode"] = read_back_equals_source(kept)
                _, mem_half, _ = mangaka_run(half, size, codec)
                row["peak_rss_mb"] = {str(n // 2): round(mem_half / 2**20), str(n): round(mem_full / 2**20)}
            else:
                row["peak_rss_mb"] = {str(n): round(mem_full / 2**20)}
            shutil.rmtree(kept, ignore_errors=True)
            results[name] = row
            print(name, json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    shutil.rmtree(sub, ignore_errors=True)


if __name__ == "__main__":
    main()
