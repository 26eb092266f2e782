"""Pseudo-labels: the trained segmenter over ``corpus/images``, one shard per task.

Writes ``corpus/masks`` (class ids, uint8) and ``corpus/confidence`` (per item, the mean
over pixels of the top softmax probability, float32). The producer version is the
checkpoint's content digest (plus the test-time augmentation switch), so a re-run with
the same model does nothing and a new model relabels every shard.

Inference: batches, and optionally the mean of the image's and its mirror's softmax (flip
TTA), by one of two engines (``engine``):

- ``torch``: ``torch.inference_mode``, channels-last, bf16 autocast on GPU and on CPUs with
  native bf16 (AVX512-BF16 or AMX; measured 18.6 against 9.6 images/s in fp32 at 512 px
  on a 2-core EPYC; ``precision="fp32"`` turns it off);
- ``onnxruntime``: the same network exported to ONNX (once per worker process
  and checkpoint) and run by ONNX Runtime's CPU provider in fp32. On a 2-core Xeon without
  bf16 it ran the model about 2x faster than channels-last PyTorch (bench.pseudolabel).

``auto`` picks ONNX Runtime on CPUs where PyTorch would run fp32, PyTorch elsewhere. The
engine's outputs agree with PyTorch's to about 1e-7 in the logits; which engine ran is part
of the producer version. The model (or session) is loaded once per worker process and kept
for the next shard with the same checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.workspace import Workspace, mask_spec
from tasks.decode import batch_reader
from tasks.device import autocast, pick_device, use_bf16
from tasks.ingest import ShardResult
from tasks.segment import load_segmenter
from tasks.shards import ModelCache
from tasks.tensors import to_unit

log = logging.getLogger(__name__)

IMAGES, MASKS, CONFIDENCE = "corpus/images", "corpus/masks", "corpus/confidence"
CONFIDENCE_MAP = "corpus/confidence_map"  # optional: per pixel, top probability x 255 (uint8)
CODE_VERSION = "pseudolabel-1"
_MODELS = ModelCache()
T = TypeVar("T")
R = TypeVar("R")


class PseudolabelOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("latest", description="checkpoint tag or name under models/unet")
    batch_size: int = Field(16, ge=1, description="images per forward pass")
    flip_tta: bool = Field(False, description="average the prediction with its mirror's")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 where the hardware has it")
    confidence_map: bool = Field(False, description="also write corpus/confidence_map, per pixel")
    engine: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="auto: ONNX Runtime where PyTorch would run fp32 on a CPU, else PyTorch"
    )
    readers: int = Field(0, ge=0, description="threads reading images ahead; 0: 1 on a CPU, up to 8 on a GPU")
    device: str = "auto"
    gpu_decode: bool = Field(
        True, description="on a GPU, decode the corpus's JPEG chunks on the device (nvJPEG) rather than on the host"
    )

    @model_validator(mode="after")
    def _engine_fits(self) -> PseudolabelOptions:
        if self.engine == "onnxruntime" and (self.precision == "bf16" or self.device not in ("auto", "cpu")):
            raise ValueError("engine onnxruntime runs fp32 on the CPU: not with precision bf16 or device cuda")
        return self


@dataclass(frozen=True)
class PseudolabelShardSpec:
    workspace: str
    shard: int
    version: str
    checkpoint: str  # resolved checkpoint name
    slots: list[int]  # live corpus items in this shard
    options: dict[str, Any]


def producer_version(digest: str, options: PseudolabelOptions) -> str:
    key = f"{CODE_VERSION}|{digest}|{options.flip_tta}|{options.precision}|{options.confidence_map}"
    if options.engine != "auto":
        key += f"|{options.engine}"  # versions written before the engine option keep their key
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def prepare_arrays(ws: Workspace, confidence_map: bool = False) -> None:
    """Create or grow ``corpus/masks`` and ``corpus/confidence`` to the corpus's length."""
    length = ws.length(IMAGES)
    size = int(ws.array(IMAGES).shape[1])
    ws.require_array(MASKS, mask_spec(size), length, owner="pseudolabel")
    if confidence_map:
        ws.require_array(CONFIDENCE_MAP, mask_spec(size), length, owner="pseudolabel")
    if not ws.has_array(CONFIDENCE):
        ws.group().create_array(
            CONFIDENCE,
            shape=(length,),
            chunks=(ws.shard_size,),
            dtype="float32",
            fill_value=float("nan"),
            dimension_names=("item",),
        )
    else:
        ws.grow(CONFIDENCE, length)


def pick_engine(engine: str, device: str, precision: str) -> tuple[str, torch.device]:
    """The engine and device that run: ``auto`` is ONNX Runtime where PyTorch would run fp32 on
    a CPU, PyTorch otherwise; ``onnxruntime`` runs on the CPU even where a GPU is present
    (:class:`PseudolabelOptions` refuses it with bf16 or a CUDA device)."""
    if engine == "onnxruntime":
        return "onnxruntime", torch.device("cpu")
    dev = pick_device(device)
    if engine == "auto" and dev.type == "cpu" and not use_bf16(precision, dev):
        return "onnxruntime", dev
    return "torch", dev


class Segmenter(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Unit ``(N, 3, H, W)`` float32 RGB in [0, 1] -> ``(N, C, H, W)`` logits."""
        ...


class OnnxSegmenter:
    """A segmenter exported to ONNX and run by ONNX Runtime's CPU provider.

    Any batch size and any side that is a multiple of 32, like the PyTorch network; fp32
    NCHW in, logits out. ``threads`` defaults to PyTorch's intra-op thread count (1 in a
    Dask worker, all cores in a plain process). Larger batches run ``max_batch`` images at
    a time: ONNX Runtime's memory arena keeps its peak, which at 512 px was 2.1 GB for 16
    images and 1.07 GB for 8, at the same speed (8.39 and 8.26 images/s on one thread;
    PyTorch's peak for 16 was 1.25 GB).
    """

    def __init__(self, model: torch.nn.Module, threads: int | None = None, max_batch: int = 8) -> None:
        import warnings

        import onnxruntime as ort

        self.max_batch = max_batch
        graph_file = io.BytesIO()  # exported in memory: no temporary file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the network's shape checks
            torch.onnx.export(
                model.eval(),
                (torch.zeros(1, 3, 64, 64),),
                graph_file,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
                dynamo=False,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
            )
        graph = graph_file.getvalue()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Unit ``(N, 3, H, W)`` float32 RGB in [0, 1] -> ``(N, C, H, W)`` float32 logits (on the CPU)."""
        x = x.float().contiguous()
        parts = [
            torch.from_numpy(self.session.run(None, {"x": x[i : i + self.max_batch].numpy()})[0])
            for i in range(0, len(x), self.max_batch)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def release_models() -> None:
    """Drop this process's kept segmenter (and ONNX Runtime session with its memory arena)."""
    _MODELS.clear()


def _model(ws: Workspace, checkpoint: str, options: PseudolabelOptions) -> tuple[Segmenter, torch.device, str]:
    """This worker process's segmenter, its device and engine; loaded (and exported) once per
    checkpoint and kept for the next shard."""
    engine, dev = pick_engine(options.engine, options.device, options.precision)

    def load() -> tuple[Segmenter, torch.device, str]:
        model, _, _ = load_segmenter(ws, checkpoint, str(dev))
        if engine == "onnxruntime":
            return OnnxSegmenter(model), dev, engine
        return model.to(memory_format=torch.channels_last), dev, engine

    return _MODELS.get(load, ws.url, checkpoint, dev, engine)


def infer(
    model: Segmenter,
    images: np.ndarray | torch.Tensor,
    device: torch.device,
    batch: int,
    flip: bool,
    bf16: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For RGB ``(N, S, S, 3)`` uint8 images in 0..255: class ids ``(N, S, S)`` uint8, confidences ``(N,)``
    float32 (mean top probability) and the top probability per pixel ``(N, S, S)`` as uint8
    (x 255). ``model`` is a PyTorch network or an :class:`OnnxSegmenter`."""
    preds, confs, maps = [], [], []
    layout = torch.channels_last if isinstance(model, torch.nn.Module) else torch.contiguous_format
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = to_unit(images[i : i + batch], device)
            x = x.contiguous(memory_format=layout)
            with autocast(device, bf16):
                probs = model(x).float().softmax(1)
                if flip:
                    probs = (probs + model(x.flip(-1)).float().softmax(1).flip(-1)) / 2
            top, pred = probs.max(1)
            preds.append(pred.byte().cpu().numpy())
            confs.append(top.mean((1, 2)).cpu().numpy().astype(np.float32))
            maps.append((top * 255).round().byte().cpu().numpy())
    return np.concatenate(preds), np.concatenate(confs), np.concatenate(maps)


def read_ahead(read: Callable[[T], R], batches: list[T], threads: int) -> Iterator[R]:
    """``read(batch)`` for each batch, in order, read ahead by ``threads`` threads.

    Decode prefetching: up to ``2 * threads - 1`` batches past the one being inferred are
    read and decompressed meanwhile (one reader, one batch ahead, on a CPU, where inference
    has the cores; more on a GPU worker, where one reader thread, about 1,000 images/s at
    512 px on a 2-core Xeon (bench.pseudolabel), would starve the device).
    """
    depth = 2 * threads
    with ThreadPoolExecutor(threads) as pool:
        pending = deque(pool.submit(read, b) for b in batches[:depth])
        for b in batches[depth:]:
            yield pending.popleft().result()
            pending.append(pool.submit(read, b))
        while pending:
            yield pending.popleft().result()


def pseudolabel_shard(spec: PseudolabelShardSpec) -> ShardResult:
    ws = Workspace(spec.workspace)
    if ws.is_done(MASKS, spec.shard, spec.version, live=spec.slots):
        return ShardResult(MASKS, spec.shard, skipped=True)
    t0 = time.perf_counter()
    opts = PseudolabelOptions(**spec.options)
    model, device, engine = _model(ws, spec.checkpoint, opts)
    bf16 = engine == "torch" and use_bf16(opts.precision, device)
    start = spec.shard * ws.shard_size
    n = len(ws.shard_slots(spec.shard, ws.length(IMAGES)))
    size = int(ws.array(IMAGES).shape[1])
    live = [s - start for s in spec.slots]
    masks = np.zeros((n, size, size), np.uint8)
    conf = np.full(n, np.nan, np.float32)
    cmap = np.zeros_like(masks)
    batches = [live[i : i + opts.batch_size] for i in range(0, len(live), opts.batch_size)]
    readers = opts.readers or (min(8, os.cpu_count() or 1) if device.type == "cuda" else 1)

    read, finish = batch_reader(ws, IMAGES, start, device, opts.gpu_decode and engine == "torch")
    for batch, got in zip(batches, read_ahead(read, batches, readers), strict=True):
        pred, c, top = infer(model, finish(got), device, opts.batch_size, opts.flip_tta, bf16)
        masks[batch], conf[batch], cmap[batch] = pred, c, top
    holes = sorted(set(range(n)) - set(live))
    ws.write_shard(MASKS, spec.shard, masks, holes)
    if opts.confidence_map:
        ws.write_shard(CONFIDENCE_MAP, spec.shard, cmap, holes)
        ws.write_marker(CONFIDENCE_MAP, spec.shard, spec.version)
    ws.write_shard(CONFIDENCE, spec.shard, conf)
    ws.write_marker(CONFIDENCE, spec.shard, spec.version)
    ws.write_marker(MASKS, spec.shard, spec.version, live=spec.slots, checkpoint=spec.checkpoint)
    dt = time.perf_counter() - t0
    log.info("pseudolabel shard %d: %d images in %.1f s (%s)", spec.shard, len(live), dt, engine)
    return ShardResult(MASKS, spec.shard, False, len(live), 0, dt)


def miou_against(ws: Workspace, truth: dict[str, np.ndarray], classes: list[str]) -> dict[str, Any]:
    """mIoU of ``corpus/masks`` against truth masks by item id (items without truth are skipped).

    ``truth``: id -> ``(H, W)`` uint8 class ids (255 = ignore), the shape of the corpus masks.
    """
    from storage.items import item_table
    from tasks.segment import confusion, iou_from_confusion

    table = item_table(ws, "corpus")
    masks = ws.array(MASKS)
    done = set(ws.markers(MASKS))
    conf = torch.zeros(len(classes), len(classes), dtype=torch.long)
    n = 0
    for item, e in table.by_id.items():
        if item in truth and e["slot"] // ws.shard_size in done:
            conf += confusion(
                torch.from_numpy(np.array(masks[e["slot"]])), torch.from_numpy(np.array(truth[item])), len(classes)
            )
            n += 1
    return {**iou_from_confusion(conf, classes), "images": n}
