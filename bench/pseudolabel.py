"""Benchmark: pseudo-labelling throughput at 512x512 on this machine's CPU (or a GPU).

    .venv/bin/python -m bench.pseudolabel [--count 256] [--flow-count 1024] [--device auto]

On a GPU (``--device auto`` finds it) the model-only rates run on the device (plus bf16 at
batch 64), only the PyTorch engine is measured, the flow's LocalCluster has a GPU worker
per device, and the figures go to ``bench/results/pseudolabel-gpu.json``.

On a GPU the corpus's JPEG chunks are decoded on the device (nvJPEG): ``device_decode_images_per_s``
is that decode alone, and the end-to-end figures include it.

1. Model only (random weights of the default segmenter; the work does not depend on the
   weights), batch 16, all cores of one process: eager NCHW, channels-last, channels-last
   with bf16 autocast (emulated on CPUs without bf16), ONNX Runtime fp32.
2. End to end in one process, per engine: one shard through ``pseudolabel_shard`` (read
   ``--count`` JPEG-sourced images from a workspace, infer, write masks and confidences).
3. Host work per shard besides the network: reading images (one reader thread, and one per
   core), writing masks.
4. End to end as ``mangaka pseudolabel`` runs it, per engine: the real flow over the
   LocalCluster (one single-threaded worker per core, shards of 256, ``--flow-count``
   images), timed from the flow call to its return after a warm-up run; the Prefect
   server's and the cluster's start are not counted. Peak memory of the process tree, and
   the same for a larger corpus (``--memory-count``) with the default engine.
5. ``by_codec``: step 2 and the one-thread read rate of step 3 for the same images stored
   raw (zstd, lossless) against JPEG (the default).

Writes ``bench/results/pseudolabel.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from models.registry import create
from tasks.device import cpu_has_bf16, pick_device
from tasks.pseudolabel import pick_engine, release_models

HERE = Path(__file__).resolve().parent


def model_rate(
    model: torch.nn.Module,
    size: int,
    batch: int,
    channels_last: bool,
    bf16: bool = False,
    reps: int = 3,
    device: torch.device = torch.device("cpu"),  # noqa: B008
) -> float:
    x = torch.rand(batch, 3, size, size, device=device)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return reps * batch / (time.perf_counter() - t0)


def onnxruntime_rate(model: torch.nn.Module, size: int, batch: int, reps: int = 3) -> float:
    """The same network as ``pseudolabel --engine onnxruntime`` runs it (fp32, CPU provider)."""
    from tasks.pseudolabel import OnnxSegmenter

    onnx = OnnxSegmenter(model)
    x = torch.rand(batch, 3, size, size)
    onnx(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        onnx(x)
    return reps * batch / (time.perf_counter() - t0)


def checkpointed_workspace(count: int, size: int, model_name: str, codec: str = "jpeg") -> str:
    """A workspace of ``count`` ingested synth JPEGs (shards of 256, images stored with
    ``codec``) and a segmenter checkpoint ``bench`` with random weights."""
    from safetensors.torch import save

    from bench.lineart import corpus_workspace
    from storage.checkpoints import save_checkpoint
    from storage.workspace import Workspace

    url = corpus_workspace(count, size, codec=codec)
    ws = Workspace(url)
    model = create("segmenter", model_name, num_classes=7)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(ws, "unet", "bench", save(state), {"model": model_name, "num_classes": 7})
    ws.update_config(classes=["background", "skin", "face", "eye", "mouth", "hair", "clothes"])
    return url


def flow_rate(url: str, count: int, engine: str, device: str = "cpu") -> tuple[float, dict[str, int]]:
    """Images per second of the real ``pseudolabel`` flow over a LocalCluster, warm, and the
    peak resident memory (MB) during the timed run: of the whole process tree (this process,
    the Dask workers, the Prefect server), of the largest Dask worker, and of this process
    (the flow's; it also holds the benchmark's own data)."""
    import os

    from distributed import Client

    from bench.ingest import PeakRSS
    from flows.pseudolabel import pseudolabel
    from flows.runtime import RunConfig, session
    from tasks.pseudolabel import PseudolabelOptions

    opts = PseudolabelOptions(engine=engine, device=device)
    with session(RunConfig(url, None, device)) as address, Client(address) as client:
        workers = set(client.run(os.getpid).values())
        pseudolabel(workspace=url, options=opts, shards="0:2", force=True)  # warm both workers: imports, model
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            r = pseudolabel(workspace=url, options=opts, force=True)
            dt = time.perf_counter() - t0
    assert r["labelled"] == count, r
    mb = 2**20
    peaks = {
        "tree": round(mem.peak / mb),
        "largest_worker": round(max(mem.peaks.get(pid, 0) for pid in workers) / mb),
        "flow_process": round(mem.peaks.get(mem.me, 0) / mb),
    }
    return count / dt, peaks


def end_to_end(url: str, count: int, engine: str, device: str = "cpu") -> float:
    """One shard of ``count`` images through ``pseudolabel_shard`` in this process."""
    from storage.workspace import Workspace
    from tasks.pseudolabel import PseudolabelOptions, PseudolabelShardSpec, prepare_arrays, pseudolabel_shard

    prepare_arrays(Workspace(url))
    options = PseudolabelOptions(engine=engine, device=device).model_dump()
    spec = PseudolabelShardSpec(url, 0, f"bench-{engine}", "bench", list(range(count)), options)
    t0 = time.perf_counter()
    pseudolabel_shard(spec)
    return count / (time.perf_counter() - t0)


def host_rates(url: str, count: int, size: int) -> dict[str, float]:
    """What a shard costs the host besides the network: reading and decompressing
    ``corpus/images`` in batches of 16 through ``read_ahead`` with one thread (a CPU worker)
    and with one per core (a GPU worker's readers), and encoding and writing one shard of
    synth portrait masks (the task's last step, one thread). On a GPU worker these bound
    the rate whatever the device does."""
    import os

    import numpy as np

    from storage.workspace import Workspace
    from tasks.pseudolabel import IMAGES, MASKS, read_ahead
    from tasks.synth import draw_portrait

    ws = Workspace(url)
    batches = [list(range(i, min(i + 16, count))) for i in range(0, count, 16)]
    out: dict[str, float] = {}
    for threads in (1, os.cpu_count() or 1, 1, os.cpu_count() or 1):  # the first pass warms the page cache
        t0 = time.perf_counter()
        for _ in read_ahead(lambda b: ws.read_items(IMAGES, b), batches, threads):
            pass
        out[f"read_images_per_s_{threads}_threads"] = round(count / (time.perf_counter() - t0), 1)
    drawn = [draw_portrait(11, i, size).mask for i in range(16)]
    masks = np.stack([drawn[i % 16] for i in range(count)])
    t0 = time.perf_counter()
    ws.write_shard(MASKS, 0, masks)
    out["write_masks_per_s_1_thread"] = round(count / (time.perf_counter() - t0), 1)
    return out


def device_decode_rate(url: str, count: int, device: torch.device, batch: int = 64) -> float:
    """Images per second decoded on ``device`` from the stored JPEG chunks (nvJPEG, batches of
    ``batch``), the chunk bytes read beforehand: what a GPU worker's decoding costs."""
    from storage.workspace import Workspace
    from tasks.decode import decode_on_device

    ws = Workspace(url)
    size = int(ws.array("corpus/images").shape[1])
    batches = [ws.read_chunks("corpus/images", list(range(i, min(i + batch, count)))) for i in range(0, count, batch)]
    decode_on_device(batches[0], size, device)  # warm nvJPEG
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for chunks in batches:
        decode_on_device(chunks, size, device)
    torch.cuda.synchronize(device)
    return count / (time.perf_counter() - t0)


def _round(v: float | str) -> float | str:
    return round(v, 2) if isinstance(v, float) else v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--count", type=int, default=256, help="images of the in-process shard (at most 256)")
    ap.add_argument("--flow-count", type=int, default=1024, help="images of the flow runs (0: skip)")
    ap.add_argument("--memory-count", type=int, default=2048, help="images of a larger flow run (0: skip)")
    ap.add_argument("--model", default="unet-mobilenetv2-small")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", default=None, help="default: results/pseudolabel.json (pseudolabel-gpu.json on a GPU)")
    a = ap.parse_args()
    dev = pick_device(a.device)
    device = dev.type
    gpu = device == "cuda"
    out = a.out or str(HERE / "results" / ("pseudolabel-gpu.json" if gpu else "pseudolabel.json"))
    model = create("segmenter", a.model, num_classes=7).eval()
    rates = {
        "eager_nchw_batch16": model_rate(model, a.size, 16, False, device=dev),
        "channels_last_batch16": model_rate(model, a.size, 16, True, device=dev),
        "channels_last_bf16_batch16": model_rate(model, a.size, 16, True, bf16=True, device=dev),
    }
    if gpu:
        rates["channels_last_bf16_batch64"] = model_rate(model, a.size, 64, True, bf16=True, device=dev)
    else:
        rates["onnxruntime_fp32_batch16"] = onnxruntime_rate(model, a.size, 16)
    result: dict[str, Any] = {
        "size": a.size,
        "model": a.model,
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(dev) if gpu else "cpu",
        "cpu_has_bf16": cpu_has_bf16(),
        "model_only_images_per_s": {k: round(v, 2) for k, v in rates.items()},
    }
    engines = ("torch",) if gpu else ("torch", "onnxruntime")
    url = checkpointed_workspace(max(a.count, a.flow_count), a.size, a.model)
    result["end_to_end_one_shard_images_per_s"] = {
        engine: round(end_to_end(url, min(a.count, 256), engine, device), 2) for engine in engines
    }
    result["host_one_thread"] = host_rates(url, min(a.count, 256), a.size)
    # the same shard from a raw (zstd) workspace: what JPEG storage changes end to end
    auto = pick_engine("auto", device, "auto")[0]
    raw_url = checkpointed_workspace(min(a.count, 256), a.size, a.model, codec="raw")
    result["by_codec"] = {
        "engine": auto,
        "end_to_end_one_shard_images_per_s": {
            "jpeg": result["end_to_end_one_shard_images_per_s"][auto],
            "raw": round(end_to_end(raw_url, min(a.count, 256), auto, device), 2),
        },
        "read_images_per_s_1_thread": {
            "jpeg": result["host_one_thread"]["read_images_per_s_1_threads"],
            "raw": host_rates(raw_url, min(a.count, 256), a.size)["read_images_per_s_1_threads"],
        },
    }
    if gpu:
        result["device_decode_images_per_s"] = round(device_decode_rate(url, min(a.count, 256), dev), 1)
    result["auto_engine"] = pick_engine("auto", device, "auto")[0]
    release_models()  # the in-process runs' model and session: not part of the flow's memory
    if a.flow_count:
        result["flow_images"] = a.flow_count
        runs = {engine: flow_rate(url, a.flow_count, engine, device) for engine in engines}
        result["flow_images_per_s"] = {engine: round(rate, 2) for engine, (rate, _) in runs.items()}
        result["flow_peak_rss_mb"] = {engine: peak for engine, (_, peak) in runs.items()}
    if a.memory_count:  # the same flow over a larger corpus: peak memory should not grow
        big = checkpointed_workspace(a.memory_count, a.size, a.model)
        rate, peak = flow_rate(big, a.memory_count, result["auto_engine"], device)
        result["flow_larger_corpus"] = {"images": a.memory_count, "images_per_s": round(rate, 2), "peak_rss_mb": peak}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
