"""Benchmark: what Prefect + Dask cost on top of the work, and peak memory against corpus size.

    .venv/bin/python -m bench.orchestration [--counts 2048,20000] [--memory-counts 1000,10000] [--only overhead]

1. Overhead. The same shard function (``render-lineart --method xdog``, 512 px, shards of
   256: the cheapest bulk stage, so the worst case for overhead) over the same shards of
   the same workspace, three ways on the same cores: a plain ``ProcessPoolExecutor`` loop
   (the anchor), ``distributed`` alone (``client.map`` on the flow's LocalCluster), and the
   real flow (Prefect task runs, retries, artifacts, markers, lease, run record), with
   Prefect's flow-run heartbeats (the default) and without (``MANGAKA_FLOW_HEARTBEATS=off``:
   the engine waits up to 1 s for the heartbeat thread at the end of every run). The pool,
   the cluster and the Prefect server are started and warmed first; their start-up is
   reported apart; each figure is the best of three. Overhead = flow seconds / loop
   seconds - 1. Goal: at most 5%. The same for pseudolabel (the heaviest bulk stage).
2. Peak memory: the highest total resident memory of the process tree (flow process,
   Dask workers, Prefect server), sampled every 50 ms, during ``render-lineart`` over
   corpora of the given sizes. Goal: flat in the corpus size.

Writes ``bench/results/orchestration.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def fresh_specs(url: str, method: str) -> list[Any]:
    """Shard specs of every corpus shard, with the method's markers cleared (so all run)."""
    from storage.items import item_table
    from storage.workspace import Workspace
    from tasks.lineart import LineartShardSpec, array_name, prepare_array, producer_version

    ws = Workspace(url)
    table = item_table(ws, "corpus")
    prepare_array(ws, method)
    shards = list(range(ws.shards_of(table.length)))
    ws.clear_markers(array_name(method), shards)
    version = producer_version(method, "")
    return [
        LineartShardSpec(url, s, method, version, "", [x for x, _ in table.slots_in(ws.shard_slots(s, table.length))])
        for s in shards
    ]


def overhead(count: int, workers: int) -> dict[str, Any]:
    from distributed import Client

    from bench.lineart import corpus_workspace
    from flows.lineart import render_lineart
    from flows.runtime import HEARTBEATS_ENV, RunConfig, flow_heartbeats, session
    from tasks.lineart import lineart_shard

    url = corpus_workspace(count, 512, varied_corpus(count) if count > 2048 else None)
    plains = []
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(lineart_shard, fresh_specs(url, "xdog")))  # warm: imports, page cache
        for _ in range(3):
            specs = fresh_specs(url, "xdog")
            t0 = time.perf_counter()
            list(pool.map(lineart_shard, specs))
            plains.append(time.perf_counter() - t0)
    plain = min(plains)
    t0 = time.perf_counter()
    with session(RunConfig(url, None, "cpu", workers)) as address, Client(address) as client:
        startup = time.perf_counter() - t0
        render_lineart(workspace=url, method="xdog", force=True)  # warm workers, server, imports
        dasks = []
        for _ in range(3):
            specs = fresh_specs(url, "xdog")
            t0 = time.perf_counter()
            client.gather(client.map(lineart_shard, specs, pure=False))
            dasks.append(time.perf_counter() - t0)
        dask_only = min(dasks)
        runs: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(3):
            for beats in runs:
                os.environ[HEARTBEATS_ENV] = beats
                with flow_heartbeats():
                    t0 = time.perf_counter()
                    r = render_lineart(workspace=url, method="xdog", force=True)
                    runs[beats].append(time.perf_counter() - t0)
                assert r["rendered"] == count
        os.environ.pop(HEARTBEATS_ENV)
    flow, flow_off = min(runs["on"]), min(runs["off"])
    return {
        "stage": "render-lineart xdog, 512 px",
        "images": count,
        "shard_size": 256,
        "shards": len(specs),
        "plain_loop_s": round(plain, 3),
        "dask_only_s": round(dask_only, 3),
        "flow_s": round(flow, 3),
        "flow_no_heartbeats_s": round(flow_off, 3),
        "plain_runs_s": [round(f, 3) for f in plains],
        "flow_runs_s": [round(f, 3) for f in runs["on"]],
        "flow_no_heartbeats_runs_s": [round(f, 3) for f in runs["off"]],
        "startup_s": round(startup, 2),
        "overhead_dask_pct": round(100 * (dask_only / plain - 1), 1),
        "overhead_flow_pct": round(100 * (flow / plain - 1), 1),
        "overhead_flow_no_heartbeats_pct": round(100 * (flow_off / plain - 1), 1),
        "flow_fixed_cost_s": round(flow - dask_only, 3),
    }


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)  # as in a Dask worker (OMP_NUM_THREADS=1): one core per process


def pseudolabel_overhead(count: int, workers: int) -> dict[str, Any]:
    """The same measurement on the heaviest bulk stage: pseudolabel shards of 256 at 512 px."""
    from bench.pseudolabel import checkpointed_workspace
    from flows.pseudolabel import pseudolabel
    from flows.runtime import RunConfig, session
    from storage.checkpoints import load_checkpoint
    from storage.items import item_table
    from storage.workspace import Workspace
    from tasks.pseudolabel import (
        MASKS,
        PseudolabelOptions,
        PseudolabelShardSpec,
        prepare_arrays,
        producer_version,
        pseudolabel_shard,
    )

    url = checkpointed_workspace(count, 512, "unet-mobilenetv2-small")
    ws = Workspace(url)
    prepare_arrays(ws)
    opts = PseudolabelOptions()
    version = producer_version(load_checkpoint(ws, "unet").digest, opts)
    table = item_table(ws, "corpus")
    shards = list(range(ws.shards_of(table.length)))
    specs = [
        PseudolabelShardSpec(
            url, s, version, "bench", [x for x, _ in table.slots_in(ws.shard_slots(s, table.length))], opts.model_dump()
        )
        for s in shards
    ]
    with ProcessPoolExecutor(workers, initializer=_one_thread) as pool:
        list(pool.map(pseudolabel_shard, specs))  # warm: imports, model load, first inference
        ws.clear_markers(MASKS, shards)
        t0 = time.perf_counter()
        list(pool.map(pseudolabel_shard, specs))
        plain = time.perf_counter() - t0
    with session(RunConfig(url, None, "cpu", workers)):
        pseudolabel(workspace=url, options=opts, force=True)  # warm every worker the same way
        t0 = time.perf_counter()
        r = pseudolabel(workspace=url, options=opts, force=True)
        flow = time.perf_counter() - t0
    assert r["labelled"] == count
    return {
        "stage": "pseudolabel, 512 px",
        "images": count,
        "shard_size": 256,
        "shards": len(specs),
        "plain_loop_s": round(plain, 2),
        "flow_s": round(flow, 2),
        "overhead_flow_pct": round(100 * (flow / plain - 1), 1),
    }


def varied_corpus(count: int, base: int = 2048) -> Path:
    """``count`` distinct 512 px JPEGs: the first ``base`` synth portraits, then mirrored and
    colour-rotated copies of them (drawing 10,000 portraits at 512 px takes most of an hour
    on 2 cores; memory depends on the corpus size, not on what the pictures show)."""
    import cv2

    from bench.ingest import make_corpus

    src = sorted(make_corpus(base, 512).glob("*.jpg"))[:base]
    out = HERE / ".cache" / "varied-512"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"v{i:06d}.jpg"
        if path.exists():
            continue
        img = cv2.imread(str(src[i % base]))
        k = i // base
        if k:
            img = np.roll(img, k % 3, axis=2)
            if k % 2:
                img = img[:, ::-1]
            img = cv2.convertScaleAbs(img, alpha=1.0, beta=float(k))
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out


def peak_memory(counts: list[int], workers: int) -> dict[str, Any]:
    from bench.ingest import PeakRSS
    from bench.lineart import corpus_workspace
    from flows.lineart import render_lineart
    from flows.runtime import RunConfig, session

    out: dict[str, Any] = {}
    for n in counts:
        url = corpus_workspace(n, 512, varied_corpus(max(counts)))  # its first n files
        with session(RunConfig(url, None, "cpu", workers)), PeakRSS() as mem:
            t0 = time.perf_counter()
            r = render_lineart(workspace=url, method="xdog")
            seconds = time.perf_counter() - t0
        assert r["rendered"] == n
        out[str(n)] = {"peak_rss_mb": round(mem.peak / 2**20), "images_per_s": round(n / seconds, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", default="2048,20000", help="corpus sizes of the xdog overhead runs")
    ap.add_argument("--memory-counts", default="1000,10000")
    ap.add_argument("--only", choices=("overhead",), help="only the xdog overhead runs (keeps the other figures)")
    args = ap.parse_args()
    workers = os.cpu_count() or 1
    out = HERE / "results" / "orchestration.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    runs = [overhead(int(c), workers) for c in args.counts.split(",")]
    result = {
        "benchmark": "orchestration",
        "cores": workers,
        "overhead": runs[0],
        "overhead_runs": runs,
    }
    if args.only:
        for key in ("overhead_pseudolabel", "peak_memory_render_lineart_xdog"):
            if key in previous:
                result[key] = previous[key]
    else:
        result["overhead_pseudolabel"] = pseudolabel_overhead(512, workers)
        counts = [int(c) for c in args.memory_counts.split(",")]
        result["peak_memory_render_lineart_xdog"] = peak_memory(counts, workers)
    print(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
