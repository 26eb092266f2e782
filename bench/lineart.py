"""Benchmark: line art at 512x512: throughput per method, and the render-lineart flow's overhead.

    .venv/bin/python -m bench.lineart [--count 1024]

1. Per method, one process, images already decoded in memory: ``canny``, ``xdog``
   (mangaka's functions, which are plain OpenCV/NumPy), ``artline`` (the default network
   with random weights, batch 8, inference mode; the cost does not depend on the weights).
2. Pipeline overhead: ``render-lineart --method xdog`` (Prefect + a Dask LocalCluster of
   one worker process per core, reading ``corpus/images`` from a Zarr workspace and
   writing ``corpus/lineart/xdog`` with markers) against two bare OpenCV loops over the
   same images on the same cores (a process pool of the same size): one over images
   already decoded in memory whose results stay in memory (no I/O at all: the strictest
   anchor), one that reads the source JPEGs with ``cv2.imread`` and writes PNGs with
   ``cv2.imwrite`` (what a script would do). Goal: the flow at least 0.8x the loop.

Writes ``bench/results/lineart-<count>.json`` (``make bench`` runs 1,024 and 4,096).

    .venv/bin/python -m bench.lineart --quality [--holdouts cel,soft,tone,paint] [--eval-count 64] [--quality-size 256]

3. Quality on drawings never trained on: ``train-lineart``'s default at 256 px with one
   style family held out (``tasks.linepairs``), then boundary F1 (2 px) of the learned
   model, XDoG and Canny on 64 fresh pairs of every family; the held-out family's row is
   the figure. Also ``bench/results/lineart-photos.jpg``: the three methods on labelme's
   example photographs. Writes ``bench/results/lineart-quality.json``.

    .venv/bin/python -m bench.lineart --finetune

4. Fine-tuning on a workspace's annotations (``train-lineart --finetune``) on a style the
   pre-training never saw: ``synth`` held out of the drawn pairs (128 px, the default
   schedule), 160 annotated synth portraits (256 px, ingested by ``ingest-labelme``) to
   fine-tune on (at their own side, the default), then boundary F1 (2 px) of XDoG, Canny,
   the pre-trained and the fine-tuned model on the 80 unannotated portraits of the same
   corpus at 256 px, against their exact line truth. Writes ``bench/results/lineart-finetune.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def corpus_workspace(count: int, size: int, src: Path | None = None, codec: str = "jpeg") -> str:
    """A workspace of ``count`` ingested portraits (shards of 256), its images stored with ``codec``."""
    from bench.ingest import make_corpus
    from storage.items import Journal
    from storage.sources import list_sources
    from storage.workspace import Workspace
    from tasks.ingest import (
        IngestOptions,
        ingest_shard,
        plan_ingest,
        prepare_array,
        resolve_codec,
        shard_specs,
        source_record,
    )

    ws = Workspace(tempfile.mkdtemp(prefix="bench-lineart-"))
    ws.ensure_config(shard_size=256)
    listing = list_sources(str(src or make_corpus(count, size)))
    listing.refs = listing.refs[:count]
    opts = resolve_codec(ws, IngestOptions(size=size, codec=codec))  # type: ignore[arg-type]
    batch = Journal(ws, "corpus").add(
        opts.version, opts.model_dump(), [source_record(r) for r in plan_ingest(ws, listing).new]
    )
    prepare_array(ws, opts, batch.end)
    for spec in shard_specs(ws, batch):
        ingest_shard(spec)
    return ws.url


def _xdog_files(job: tuple[list[str], str]) -> int:
    import cv2

    from tasks.lineart import xdog

    files, out = job
    for f in files:
        rgb = cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)
        cv2.imwrite(os.path.join(out, os.path.basename(f)[:-4] + ".png"), xdog(rgb))
    return len(files)


def _xdog_chunk(images: np.ndarray) -> int:
    from tasks.lineart import xdog

    return sum(int(xdog(img)[0, 0]) for img in images)


def method_rates(images: np.ndarray) -> dict[str, float]:
    import torch  # here only: bench.orchestration imports this module into a flow process

    from models.registry import create
    from tasks.artline import draw_lines
    from tasks.lineart import auto_canny, xdog

    rates = {}
    for name, fn in (("canny", auto_canny), ("xdog", xdog)):
        fn(images[0])
        t0 = time.perf_counter()
        for img in images:
            fn(img)
        rates[name] = round(len(images) / (time.perf_counter() - t0), 2)
    model = create("lineart", "artline-unet-small").eval()
    n = min(len(images), 32)
    draw_lines(model, images[:8], torch.device("cpu"))
    t0 = time.perf_counter()
    draw_lines(model, images[:n], torch.device("cpu"), batch=8)
    rates["artline"] = round(n / (time.perf_counter() - t0), 2)
    return rates


def quality(holdouts: list[str], eval_count: int, size: int) -> dict[str, Any]:
    """Train ``train-lineart``'s default (one run per held-out family) and score every
    family: the learned model against XDoG and Canny on the same images; the held-out
    family's row is the one that counts. Also a contact sheet on real photographs."""
    import torch

    from storage.workspace import Workspace
    from tasks import linepairs
    from tasks.artline import LineartTrainOptions, classic_f1, draw_lines, load_artline, train_lineart
    from tasks.artline_options import FAMILY_NAMES
    from tasks.lineart import dataset_f1

    torch.set_num_threads(os.cpu_count() or 1)
    evals = {f: linepairs.draw_pairs(5000, eval_count, size, [f]) for f in FAMILY_NAMES}
    classic = {f: classic_f1(*evals[f]) for f in FAMILY_NAMES}
    runs = []
    for holdout in holdouts:
        ws = Workspace(tempfile.mkdtemp(prefix="bench-lineart-quality-"))
        opts = LineartTrainOptions(size=size, holdout=holdout, device="cpu")  # type: ignore[arg-type]
        t0 = time.perf_counter()
        r = train_lineart(ws, opts)
        seconds = time.perf_counter() - t0
        model, _, _ = load_artline(ws, "latest")
        families = {}
        for f, (images, lines) in evals.items():
            pred = draw_lines(model, images, torch.device("cpu"))
            families[f] = {"artline": dataset_f1(list(pred), list(lines))["f1"], **classic[f]}
        runs.append(
            {
                "holdout": holdout,
                "train_families": list(opts.train_families()),
                "train_seconds": round(seconds, 1),
                "val_f1": r["last"]["f1"],
                "families": families,
                "options": opts.model_dump(exclude={"device"}),
            }
        )
        print(json.dumps(runs[-1]))
        if holdout == holdouts[0]:
            contact_sheet(model, HERE / "results" / "lineart-photos.jpg")
    return {
        "benchmark": "lineart-quality",
        "size": size,
        "eval_images_per_family": eval_count,
        "tolerance_px": 2,
        "runs": runs,
    }


def finetune_quality(count: int = 240, annotated: int = 160, size: int = 128, side: int = 256) -> dict[str, Any]:
    """Pre-train without ``synth``, fine-tune on annotated synth portraits, score on unannotated ones."""
    import torch

    from flows.labelme import ingest_labelme
    from flows.runtime import RunConfig, session
    from storage.workspace import Workspace
    from tasks.annotations import LabelmeOptions
    from tasks.artline import LineartTrainOptions, draw_lines, load_artline, train_lineart
    from tasks.lineart import dataset_f1, render
    from tasks.synth import draw_portrait, write_synth_shard

    torch.set_num_threads(os.cpu_count() or 1)
    root = Path(tempfile.mkdtemp(prefix="bench-lineart-finetune-"))
    seed = 0
    write_synth_shard(str(root / "src"), seed=seed, size=side, start=0, stop=count, annotated=annotated)
    ws = Workspace(str(root / "ws"))
    with session(RunConfig(ws.url, None, "cpu", os.cpu_count() or 1)):
        ingest_labelme(workspace=ws.url, src=str(root / "src" / "labelme"), options=LabelmeOptions(size=side))
    opts = LineartTrainOptions(size=size, holdout="synth", finetune=True, device="cpu")
    t0 = time.perf_counter()
    r = train_lineart(ws, opts)
    seconds = time.perf_counter() - t0
    unseen = [draw_portrait(seed, i, side) for i in range(annotated, count)]  # never annotated, never trained on
    images, truth = np.stack([p.image for p in unseen]), [p.lines for p in unseen]
    f1 = {m: dataset_f1([render(m, im) for im in images], truth)["f1"] for m in ("xdog", "canny")}
    for label, ref in (("pretrained", r["pretrained"]), ("finetuned", r["checkpoint"])):
        model, _, _ = load_artline(ws, ref)
        f1[label] = dataset_f1(list(draw_lines(model, images, torch.device("cpu"))), truth)["f1"]
    last = r["last"]
    result = {
        "benchmark": "lineart-finetune",
        "size": size,
        "side": side,
        "annotated": annotated,
        "unseen_images": len(unseen),
        "tolerance_px": 2,
        "unseen_f1": f1,
        "annotated_val": {k: last.get(k) for k in ("f1", "xdog_f1", "canny_f1", "pretrained_f1", "val_images")},
        "family_val": {k: last.get(k) for k in ("family", "family_f1", "family_xdog_f1", "family_canny_f1")},
        "train_seconds": round(seconds, 1),
        "options": opts.model_dump(exclude={"device"}),
    }
    print(json.dumps(result, indent=1))
    return result


PHOTOS = HERE.parent.parent / "shared" / "conformance" / "labelme"


def contact_sheet(model: Any, out: Path, side: int = 256) -> None:
    """Canny, XDoG and the learned model on labelme's example photographs (real ones), one row each."""
    import cv2
    import torch

    from tasks.artline import draw_lines
    from tasks.imageio import load_square
    from tasks.lineart import auto_canny, xdog

    # labelme's example photographs: the street scenes and the first frames of its video
    photos = sorted(PHOTOS.glob("semantic_segmentation/data_annotated/*.jpg"))[:4]
    photos += sorted(PHOTOS.glob("video_annotation/data_annotated/*.jpg"))[:2]
    if not photos:
        return
    rows = []
    for path in photos:
        img = np.array(load_square(path.read_bytes(), side))  # writable: torch warns on a read-only one
        drawn = [auto_canny(img), xdog(img), draw_lines(model, img[None], torch.device("cpu"))[0]]
        rows.append(np.concatenate([img, *(np.repeat(d[..., None], 3, axis=2) for d in drawn)], axis=1))
    sheet = np.concatenate(rows, axis=0)
    head = np.full((28, sheet.shape[1], 3), 255, np.uint8)
    for k, name in enumerate(("photo", "canny", "xdog", "artline (learned)")):
        cv2.putText(head, name, (k * side + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(out), np.concatenate([head, sheet], axis=0)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 88])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", action="store_true", help="held-out style-family F1 of train-lineart's default")
    ap.add_argument("--holdouts", default="cel", help="with --quality: one training per held-out family")
    ap.add_argument("--eval-count", type=int, default=64, help="with --quality: pairs scored per family")
    ap.add_argument("--quality-size", type=int, default=256, help="with --quality: training and scoring side")
    ap.add_argument("--finetune", action="store_true", help="train-lineart --finetune on a style never pre-trained on")
    ap.add_argument("--count", type=int, default=1024)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--codec", choices=("jpeg", "raw"), default="jpeg", help="how the corpus is stored")
    ap.add_argument(
        "--varied", action="store_true", help="use synth portraits with mirrored/recoloured copies (large counts)"
    )
    args = ap.parse_args()
    if args.quality:
        result = quality(args.holdouts.split(","), args.eval_count, args.quality_size)
        (HERE / "results" / "lineart-quality.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    if args.finetune:
        result = finetune_quality()
        (HERE / "results" / "lineart-finetune.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    from flows.lineart import render_lineart
    from flows.runtime import RunConfig, session
    from storage.workspace import Workspace

    src = None
    if args.varied:
        from bench.orchestration import varied_corpus

        src = varied_corpus(args.count)
    url = corpus_workspace(args.count, args.size, src, args.codec)
    ws = Workspace(url)
    images = ws.read_items("corpus/images", list(range(args.count)))
    workers = os.cpu_count() or 1
    rates = method_rates(images[:128])
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        chunks = np.array_split(images, workers * 4)
        list(pool.map(_xdog_chunk, chunks))
    bare = args.count / (time.perf_counter() - t0)
    from bench.ingest import make_corpus

    files = sorted(str(p) for p in (src or make_corpus(args.count, args.size)).glob("*.jpg"))[: args.count]
    out_dir = tempfile.mkdtemp(prefix="bench-lineart-png-")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_xdog_files, [(list(c), out_dir) for c in np.array_split(np.array(files), workers * 4)]))
    bare_files = args.count / (time.perf_counter() - t0)
    with session(RunConfig(url, None, "cpu", workers)):
        render_lineart(workspace=url, method="canny", shards="0:1")  # warm the workers and the server
        t0 = time.perf_counter()
        r = render_lineart(workspace=url, method="xdog")
        flow = r["rendered"] / (time.perf_counter() - t0)
    result = {
        "benchmark": "lineart",
        "size": args.size,
        "images": args.count,
        "cores": workers,
        "codec": args.codec,
        "method_images_per_s_one_process": rates,
        "xdog_bare_opencv_pool_images_per_s": round(bare, 2),
        "xdog_render_lineart_flow_images_per_s": round(flow, 2),
        "flow_vs_bare_ratio": round(flow / bare, 3),
        "xdog_bare_opencv_files_images_per_s": round(bare_files, 2),
        "flow_vs_bare_files_ratio": round(flow / bare_files, 3),
    }
    print(json.dumps(result, indent=1))
    result["corpus"] = "synth + mirrored/recoloured copies" if args.varied else "synth"
    suffix = "" if args.codec == "jpeg" else f"-{args.codec}"
    (HERE / "results" / f"lineart-{args.count}{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
