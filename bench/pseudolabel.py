"""Benchmark: pseudo-labelling throughput at 512x512 on this machine's CPU (or a GPU).

    .venv/bin/python -m bench.pseudolabel

Model-only rates (random weights of the default segmenter; the work does not depend on
the weights) for eager NCHW vs channels-last in inference mode, then the end-to-end rate
of one shard through ``pseudolabel_shard``: read 256 JPEG-sourced images from a
workspace, infer, write masks and confidences, in one process with all cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from models.registry import create
from tasks.pseudolabel import cpu_has_bf16

HERE = Path(__file__).resolve().parent


def model_rate(
    model: torch.nn.Module, size: int, batch: int, channels_last: bool, bf16: bool = False, reps: int = 3
) -> float:
    x = torch.rand(batch, 3, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
    return reps * batch / (time.perf_counter() - t0)


def onnxruntime_rate(model: torch.nn.Module, size: int, batch: int, reps: int = 3) -> float | str:
    """The same network exported to ONNX and run by ONNX Runtime's CPU provider (fp32).

    Neither package is a mangaka dependency: install ``onnx`` and ``onnxruntime`` to measure.
    """
    import importlib.util

    if not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")):
        return "not installed (pip install onnx onnxruntime)"
    import onnxruntime as ort

    x = torch.rand(batch, 3, size, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.onnx"
        torch.onnx.export(
            model, (x[:1],), path, dynamo=False, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )  # fmt: skip
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    session.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(reps):
        session.run(None, feed)
    return reps * batch / (time.perf_counter() - t0)


def end_to_end(size: int, count: int, model_name: str) -> float:
    from safetensors.torch import save

    from bench.ingest import make_corpus
    from storage.checkpoints import save_checkpoint
    from storage.items import Journal
    from storage.sources import list_sources
    from storage.workspace import Workspace
    from tasks.ingest import IngestOptions, ingest_shard, plan_ingest, prepare_array, shard_specs, source_record
    from tasks.pseudolabel import PseudolabelOptions, PseudolabelShardSpec, prepare_arrays, pseudolabel_shard

    ws = Workspace(tempfile.mkdtemp(prefix="bench-pl-"))
    ws.ensure_config(shard_size=count)
    listing = list_sources(str(make_corpus(count)))
    listing.refs = listing.refs[:count]
    opts = IngestOptions(size=size)
    batch = Journal(ws, "corpus").add(
        opts.version, opts.model_dump(), [source_record(r) for r in plan_ingest(ws, listing).new]
    )
    prepare_array(ws, opts, batch.end)
    for spec in shard_specs(ws, batch):
        ingest_shard(spec)
    model = create("segmenter", model_name, num_classes=7)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_checkpoint(ws, "unet", "bench", save(state), {"model": model_name, "num_classes": 7})
    prepare_arrays(ws)
    spec = PseudolabelShardSpec(ws.url, 0, "bench", "bench", list(range(count)), PseudolabelOptions().model_dump())
    t0 = time.perf_counter()
    pseudolabel_shard(spec)
    return count / (time.perf_counter() - t0)


def _round(v: float | str) -> float | str:
    return round(v, 2) if isinstance(v, float) else v


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--count", type=int, default=256)
    ap.add_argument("--model", default="unet-mobilenetv2-small")
    ap.add_argument("--out", default=str(HERE / "results" / "pseudolabel.json"))
    a = ap.parse_args()
    model = create("segmenter", a.model, num_classes=7).eval()
    result = {
        "size": a.size,
        "model": a.model,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "model_only_images_per_s": {
            "eager_nchw_batch16": round(model_rate(model, a.size, 16, False), 2),
            "channels_last_batch16": round(model_rate(model, a.size, 16, True), 2),
            "channels_last_bf16_batch16": round(model_rate(model, a.size, 16, True, bf16=True), 2),
        },
        "onnxruntime_fp32_batch16": _round(onnxruntime_rate(model, a.size, 16)),
        "cpu_has_bf16": cpu_has_bf16(),
        "end_to_end_images_per_s": round(end_to_end(a.size, a.count, a.model), 2),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
