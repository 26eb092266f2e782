"""The ``mangaka`` command line: parse, start one Prefect API and one Dask cluster, run a flow.

Exit codes: 0 done (quarantined items are reported, not failures), 1 the run failed,
2 a usage error, with a one-line message. ``status`` reads the workspace directly and
starts nothing, so it answers in a second even while a run is going on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from flows.runtime import RunConfig

# The registered style transformers (models/transformer.py; a test keeps the two in step).
STYLE_MODELS = ("johnson", "johnson-small", "johnson-fast")

log = logging.getLogger("mangaka")


class UsageError(Exception):
    """A request that cannot be carried out as asked (exit code 2)."""


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mangaka", description="A dataset factory for anime-portrait research.")
    p.add_argument(
        "--workspace",
        default=os.environ.get("MANGAKA_WORKSPACE", "./workspace"),
        help="local directory or s3://bucket/prefix (env MANGAKA_WORKSPACE; default ./workspace)",
    )
    p.add_argument(
        "--dask-address", default=None, help="tcp://HOST:PORT of an existing Dask scheduler (default: a LocalCluster)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=_positive, default=None, help="LocalCluster worker processes (default: cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every task's log")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="draw anime-style portraits with exact truth")
    s.add_argument("out")
    s.add_argument("--count", type=_positive, required=True)
    s.add_argument("--annotated", type=int, default=0)
    s.add_argument("--size", type=_positive, default=512)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("ingest-images", help="add images (folder, .tar, s3://) to corpus/images")
    s.add_argument("src")
    s.add_argument("--size", type=_positive, default=None, help="default: the workspace's, else 512")
    s.add_argument("--fit", choices=("crop", "pad"), default="crop")
    s.add_argument("--min-size", type=int, default=0)
    s.add_argument("--max-pixels", type=_positive, default=None, help="refuse larger images before decoding")
    s.add_argument("--shard-size", type=_positive, default=None, help="items per shard (fixed at first ingestion)")

    s = sub.add_parser("ingest-labelme", help="add labelme annotations to annotated/images + annotated/masks")
    s.add_argument("dir")
    s.add_argument("--labels", default=None, help="labels.txt in labelme2voc's format (default: the 7 classes)")
    s.add_argument("--size", type=_positive, default=None, help="default: the workspace's, else 512")
    s.add_argument("--fit", choices=("crop", "pad"), default="crop")
    s.add_argument("--shard-size", type=_positive, default=None)

    s = sub.add_parser("augment", help="augmented/images + augmented/masks from annotated/*")
    s.add_argument("--multiplier", type=_positive, default=16, help="variants per item, the original included")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("train-unet", help="train the segmenter on the annotations; checkpoints in models/unet")
    s.add_argument("--size", type=_positive, default=None, help="training side, a multiple of 32 (default: workspace)")
    s.add_argument("--epochs", type=_positive, default=30)
    s.add_argument("--crop", type=_positive, default=None, help="train on random crops of this side (multiple of 32)")
    s.add_argument("--batch-size", type=_positive, default=8)
    s.add_argument("--lr", type=float, default=3e-3)
    s.add_argument("--model", default="unet-mobilenetv2-small", help="a registered segmenter")
    s.add_argument("--encoder-weights", default=None, help="local file of ImageNet mobilenet_v2 weights")
    s.add_argument("--val-fraction", type=float, default=0.15)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("pseudolabel", help="corpus/masks + corpus/confidence for every corpus image")
    s.add_argument("--model", default="latest", help="checkpoint tag (latest, best) or name")
    s.add_argument("--shards", default=None, help="A:B, a range of shards (backfills)")
    s.add_argument("--force", action="store_true", help="relabel even shards done with this model")
    s.add_argument("--batch-size", type=_positive, default=16)
    s.add_argument("--flip-tta", action="store_true", help="average with the mirrored prediction")
    s.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 on GPUs and on CPUs with native bf16",
    )
    s.add_argument(
        "--engine",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="auto: ONNX Runtime (fp32, CPU) where PyTorch would run fp32 on a CPU, else PyTorch",
    )
    s.add_argument("--confidence-map", action="store_true", help="also write corpus/confidence_map (per pixel)")
    s.add_argument(
        "--readers", type=int, default=0, help="threads reading images ahead per worker (0: 1 on CPU, up to 8 on GPU)"
    )

    s = sub.add_parser("export-labelme", help="pseudo-labels as labelme files, to correct and ingest again")
    s.add_argument("out")
    s.add_argument(
        "--lowest-confidence", type=_positive, default=None, metavar="K", help="only the K least confident images"
    )

    s = sub.add_parser("train-gaugan", help="train GauGAN (VAE encoder first, then SPADE G + D); resumes")
    s.add_argument("--size", type=_positive, default=256, help="training side (multiple of 32 for normal upsampling)")
    s.add_argument("--steps", type=_positive, default=2000, help="GAN steps; a larger number continues the run")
    s.add_argument("--vae-steps", type=int, default=400, help="encoder pretraining steps (phase 1)")
    s.add_argument("--batch-size", type=_positive, default=4)
    s.add_argument("--ngf", type=_positive, default=16, help="generator width (SPADE's own default: 64)")
    s.add_argument("--ndf", type=_positive, default=64)
    s.add_argument("--num-upsampling", choices=("normal", "more", "most"), default="normal")
    s.add_argument("--spade-hidden", type=_positive, default=128)
    s.add_argument("--lr-g", type=float, default=1e-4)
    s.add_argument("--lr-d", type=float, default=4e-4)
    s.add_argument("--lambda-vgg", type=float, default=10.0, help="0 turns the perceptual loss off")
    s.add_argument("--min-confidence", type=float, default=0.8, help="corpus pseudo-labels at least this confident")
    s.add_argument("--checkpoint-every", type=_positive, default=200, metavar="N")
    s.add_argument("--eval-count", type=int, default=32, help="held-out masks scored at every checkpoint")
    s.add_argument("--vgg-weights", default=None, help="local file of ImageNet VGG19 weights")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("generate", help="one portrait per class-id mask PNG in --masks")
    s.add_argument("out")
    s.add_argument("--masks", required=True, help="folder of class-id PNG masks")
    style = s.add_mutually_exclusive_group()
    style.add_argument("--style-image", default=None, help="reference image whose style to copy")
    style.add_argument("--seed", type=int, default=0, help="random latents (per mask id) from this seed")
    s.add_argument("--attribute", default=None, help="NAME=VALUE, e.g. hair=blonde")
    s.add_argument("--strength", type=float, default=1.0)
    s.add_argument("--model", default="latest", help="checkpoint tag or name")

    s = sub.add_parser("eval-gaugan", help="semantic mIoU and pixel accuracy of generated images (SPADE protocol)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--model", default="latest")
    s.add_argument("--count", type=int, default=0, help="held-out masks to use (default: all)")

    s = sub.add_parser("train-lineart", help="train the ArtLine-style line-art model; checkpoints in models/artline")
    s.add_argument("--size", type=_positive, default=256, help="final training side (multiple of 16)")
    s.add_argument("--pairs", default=None, help="folder of pairs in synth's layout (default: drawn by synth)")
    s.add_argument("--count", type=_positive, default=320, help="pairs to draw when no --pairs")
    s.add_argument("--epochs", default="4,3,4", help="epochs at size/4, size/2, size (progressive resizing)")
    s.add_argument("--batch-size", type=_positive, default=8)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--model", default="artline-unet-small", help="a registered line-art network")
    s.add_argument(
        "--feature-weight",
        type=float,
        default=None,
        help="VGG16 feature + Gram loss scale (default: 1 with --vgg-weights, else 0)",
    )
    s.add_argument("--vgg-weights", default=None, help="local file of ImageNet VGG16 weights")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("render-lineart", help="corpus/lineart/<method> for every corpus image")
    s.add_argument("--method", choices=("canny", "xdog", "artline"), required=True)
    s.add_argument("--model", default="latest", help="artline checkpoint tag or name")
    s.add_argument("--shards", default=None, help="A:B, a range of shards (backfills)")
    s.add_argument("--force", action="store_true", help="render again even shards done with this version")

    s = sub.add_parser("stylize", help="one image, Gatys et al. with the options of the MXNet neural-art example")
    s.add_argument("content")
    s.add_argument("style")
    s.add_argument("out")
    s.add_argument("--content-weight", type=float, default=10.0)
    s.add_argument("--style-weight", type=float, default=1.0)
    s.add_argument("--tv-weight", type=float, default=1e-2)
    s.add_argument("--stop-eps", type=float, default=0.005)
    s.add_argument("--max-num-epochs", type=_positive, default=1000)
    s.add_argument("--max-long-edge", type=_positive, default=512)
    s.add_argument("--lr", type=float, default=None, help="default: 1 (lbfgs), 0.02 (adam), 10 (sgd)")
    s.add_argument("--remove-noise", type=float, default=0.2, help="TV denoising of the result (0: none)")
    s.add_argument("--save-epochs", type=int, default=50, help="intermediate images every N epochs (0: none)")
    s.add_argument("--init", choices=("content", "noise"), default="content")
    s.add_argument("--optimizer", choices=("lbfgs", "adam", "sgd"), default="lbfgs")
    s.add_argument("--pool", choices=("max", "avg"), default="max")
    s.add_argument("--vgg-weights", default=None, help="local file of ImageNet VGG19 weights")
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("train-style", help="train a fast (feed-forward) style model for a style image")
    s.add_argument("--style-image", required=True)
    s.add_argument("--model", choices=STYLE_MODELS, default="johnson-fast", help="transformer network")
    s.add_argument("--size", type=_positive, default=256)
    s.add_argument("--steps", type=_positive, default=300)
    s.add_argument("--batch-size", type=_positive, default=4)
    s.add_argument("--style-weight", type=float, default=5.0)
    s.add_argument("--vgg-weights", default=None, help="local file of ImageNet VGG16 weights")

    s = sub.add_parser("train-colorizer", help="train the line-drawing colouriser (palette classes per pixel)")
    s.add_argument("--size", type=_positive, default=256)
    s.add_argument("--num-values", type=_positive, default=3, help="levels per channel: num_values**3 colours")
    s.add_argument("--epochs", type=_positive, default=8)
    s.add_argument("--batch-size", type=_positive, default=8)
    s.add_argument(
        "--hint-size", type=int, default=16, help="colour hint cells per side (0: line art only, no colour hint)"
    )
    s.add_argument(
        "--hint", choices=("mode", "mean"), default="mode", help="a cell's commonest palette colour, or its mean"
    )
    s.add_argument("--json", action="store_true", help='print {"palette_accuracy": ...}')

    s = sub.add_parser("render-style", help="corpus/styled/NAME for every corpus image")
    s.add_argument("--method", choices=("npr", "fast", "gatys", "colorize"), required=True)
    s.add_argument("--name", required=True, help="the array: corpus/styled/NAME")
    s.add_argument("--style", choices=("stylization", "pencil", "oil", "toon"), default="toon", help="npr style")
    s.add_argument(
        "--style-image", default=None, help="fast and gatys: the style image; colorize: a portrait to take colours from"
    )
    s.add_argument("--lines", default="canny", help="colorize: line art to colour (canny, xdog, artline)")
    s.add_argument("--fast-size", type=_positive, default=256, help="fast: training side if it must train first")
    s.add_argument("--fast-steps", type=_positive, default=300, help="fast: training steps if it must train first")
    s.add_argument("--gatys-epochs", type=_positive, default=100, help="gatys: L-BFGS epochs per image at most")
    s.add_argument("--shards", default=None, help="A:B, a range of shards (backfills)")
    s.add_argument("--force", action="store_true")

    s = sub.add_parser("annotate", help="open the labelme GUI on DIR with the workspace's labels")
    s.add_argument("dir")

    s = sub.add_parser("export", help="one PNG per item of an array")
    s.add_argument("array")
    s.add_argument("out")

    s = sub.add_parser("status", help="coverage per stage and the quarantine")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("build", help="the whole chain as one flow")
    s.add_argument("--stages", default=None, help="comma-separated stages (default: all)")
    s.add_argument("--src", default=None, help="new corpus images to ingest")
    s.add_argument("--labelme", default=None, help="a folder of labelme annotations to ingest")
    s.add_argument("--size", type=_positive, default=None, help="default: the workspace's, else 512")

    s = sub.add_parser("serve", help="serve the nightly build and every flow's backfill (needs PREFECT_API_URL)")
    s.add_argument("--cron", default="0 3 * * *", help="the nightly build's schedule (default 0 3 * * *)")
    s.add_argument("--timezone", default="UTC", help="the schedule's time zone (default UTC)")
    s.add_argument("--src", default=None, help="the nightly build's corpus source (new files are ingested)")
    s.add_argument("--labelme", default=None, help="the nightly build's labelme folder (corrections are ingested)")
    s.add_argument("--gpu-limit", type=int, default=1, help="GPU shard tasks at once, all runs (0: no limit)")
    s.add_argument("--limit", type=_positive, default=None, help="flow runs at once from this process")

    s = sub.add_parser("demo", help="synth + build on the embedded default, then a report")
    s.add_argument("--full", action="store_true", help="real sizes (512 px, thousands of portraits)")
    return p


def _run(config: RunConfig, fn: Callable[[], Any]) -> Any:
    from flows.runtime import session

    with session(config):
        return fn()


def _cmd_synth(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.synth import synth

    if not 0 <= a.annotated <= a.count:
        raise UsageError(f"--annotated must be between 0 and --count ({a.count})")
    r = _run(config, lambda: synth(out=a.out, count=a.count, annotated=a.annotated, size=a.size, seed=a.seed))
    print(f"drew {r['portraits']} portraits into {a.out} ({r['annotated']} annotated in labelme/)")
    return 0


def _cmd_ingest(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.ingest import ingest_images
    from storage.location import is_remote
    from storage.workspace import Workspace
    from tasks.ingest import IngestOptions

    if not is_remote(a.src) and not os.path.exists(a.src):
        raise UsageError(f"{a.src} does not exist")
    if not is_remote(a.src):
        from storage.sources import check_source

        check_source(a.src)  # a compressed tar is refused before anything starts
    ws = Workspace(config.workspace)
    size = a.size or ws.config().get("image_size", 512)
    opts: dict[str, Any] = {"size": size, "fit": a.fit, "min_size": a.min_size}
    if a.max_pixels:
        opts["max_pixels"] = a.max_pixels
    options = IngestOptions(**opts)
    ws.check_config(image_size=size, shard_size=a.shard_size)
    r = _run(
        config,
        lambda: ingest_images(
            workspace=config.workspace,
            src=a.src,
            options=options,
            shard_size=a.shard_size,
        ),
    )
    print(
        f"ingested {r['stored']} new images into corpus/images ({r['corpus_items']} in all); "
        f"{r['already_ingested']} already there, "
        + (f"{r['resumed']} finished from an interrupted run, " if r.get("resumed") else "")
        + f"{r['duplicates_skipped']} duplicates skipped, "
        f"{r['quarantined']} quarantined, {r['not_image_names']} files not named like images"
        + (f", {r['missing']} gone since they were listed" if r.get("missing") else "")
    )
    if r["quarantined"]:
        print("see `mangaka status` for the quarantine and its reasons")
    return 0


def _cmd_ingest_labelme(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.labelme import ingest_labelme
    from storage.workspace import Workspace
    from tasks.annotations import LabelmeOptions, labels_file_classes
    from tasks.labelme import LabelmeError

    if not os.path.isdir(a.dir):
        raise UsageError(f"{a.dir} is not a folder")
    try:
        classes = labels_file_classes(a.labels)
    except LabelmeError as exc:
        raise UsageError(f"{a.labels}: {exc}") from None
    ws = Workspace(config.workspace)
    size = a.size or ws.config().get("image_size", 512)
    ws.check_config(image_size=size, shard_size=a.shard_size, classes=list(classes))
    options = LabelmeOptions(size=size, fit=a.fit, classes=classes)
    r = _run(
        config,
        lambda: ingest_labelme(workspace=config.workspace, src=a.dir, options=options, shard_size=a.shard_size),
    )
    print(
        f"ingested {r['stored']} annotations into annotated/images + annotated/masks ({r['annotated_items']} in all, "
        f"{r['replaced']} replaced so far); {r['already_ingested']} already there, {r['quarantined']} quarantined"
    )
    if r["quarantined"]:
        print("see `mangaka status` for the quarantine and its reasons")
    return 0


def _cmd_augment(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.augment import augment
    from storage.items import item_table
    from storage.workspace import Workspace
    from tasks.augment import AugmentOptions

    options = AugmentOptions(multiplier=a.multiplier, seed=a.seed)
    if not len(item_table(Workspace(config.workspace), "annotated")):
        raise UsageError("no annotated items in the workspace: run ingest-labelme first")
    r = _run(config, lambda: augment(workspace=config.workspace, options=options))
    print(
        f"augmented {r['parents']} annotated items x{r['multiplier']}: {r['augmented_items']} items in "
        f"augmented/images + augmented/masks ({r['variants_written']} written now)"
    )
    return 0


def _cmd_train_unet(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.runtime import prefect_api
    from flows.segment import train_unet_flow
    from tasks.segment import TrainOptions

    if a.encoder_weights and not os.path.isfile(a.encoder_weights):
        raise UsageError(f"{a.encoder_weights} does not exist")
    if a.size and a.size % 32:
        raise UsageError(f"--size must be a multiple of 32, not {a.size}")
    if a.crop and a.crop % 32:
        raise UsageError(f"--crop must be a multiple of 32, not {a.crop}")
    model = "unet-mobilenetv2" if a.encoder_weights and a.model == "unet-mobilenetv2-small" else a.model
    options = TrainOptions(
        model=model,
        size=a.size,
        epochs=a.epochs,
        crop=a.crop,
        batch_size=a.batch_size,
        lr=a.lr,
        encoder_weights=a.encoder_weights,
        val_fraction=a.val_fraction,
        seed=a.seed,
        device=config.device,
    )
    with prefect_api():  # training runs here, not on Dask: no cluster to start
        r = train_unet_flow(workspace=config.workspace, options=options)
    if r["already_done"]:
        print(f"this run already finished its {r['epochs']} epochs: nothing to do (change an option to train anew)")
    elif r["resumed_at"]:
        print(f"resumed from epoch {r['resumed_at']} of a run that was cut short")
    last = r["last"]
    print(
        f"trained {r['epochs']} epochs on {r['train_samples']} samples; last epoch mIoU {last.get('miou')} "
        f"on {r['val_images']} held-out annotations, best {r['best_miou']:.4f}; checkpoint in models/unet"
    )
    return 0


def _cmd_train_gaugan(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.gaugan import train_gaugan_flow
    from flows.runtime import prefect_api
    from tasks.gaugan import GauganOptions

    if a.vgg_weights and not os.path.isfile(a.vgg_weights):
        raise UsageError(f"{a.vgg_weights} does not exist")
    n_up = {"normal": 5, "more": 6, "most": 7}[a.num_upsampling]
    if a.size % 2**n_up:
        raise UsageError(f"--size must be a multiple of {2**n_up} with --num-upsampling {a.num_upsampling}")
    options = GauganOptions(
        size=a.size,
        steps=a.steps,
        vae_steps=a.vae_steps,
        batch_size=a.batch_size,
        ngf=a.ngf,
        ndf=a.ndf,
        num_upsampling=a.num_upsampling,
        spade_hidden=a.spade_hidden,
        lr_g=a.lr_g,
        lr_d=a.lr_d,
        lambda_vgg=a.lambda_vgg,
        min_confidence=a.min_confidence,
        checkpoint_every=a.checkpoint_every,
        eval_count=a.eval_count,
        vgg_weights=a.vgg_weights,
        seed=a.seed,
        device=config.device,
    )
    with prefect_api():
        r = train_gaugan_flow(workspace=config.workspace, options=options)
    if r["resumed_at"]:
        at = r["resumed_at"]
        print(f"resumed run {r['run']} from its checkpoint at {at['phase']} step {at['step']}")
    if r["already_done"]:
        print(f"run {r['run']} already finished its {r['step']} steps: nothing to do (--steps N continues it)")
    pairs = ", ".join(f"{v} {k}" for k, v in r["train_pairs"].items())
    m = r["metrics"]
    sem = (
        f"; semantic mIoU {m['semantic_miou']:.4f} on {m['eval_images']} held-out masks" if "semantic_miou" in m else ""
    )
    print(f"trained GauGAN to step {r['step']} on {pairs} pairs{sem}; checkpoint {r['checkpoint']} in models/gaugan")
    if r["vgg"].startswith("random"):
        print("note: no --vgg-weights given, the perceptual loss used fixed-seed random VGG19 features")
    return 0


def _cmd_generate(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.gaugan import generate_flow, parse_attribute
    from flows.runtime import prefect_api

    if not os.path.isdir(a.masks):
        raise UsageError(f"{a.masks} is not a folder")
    if a.style_image and not os.path.isfile(a.style_image):
        raise UsageError(f"{a.style_image} does not exist")
    if a.attribute:
        parse_attribute(a.attribute)
    with prefect_api():
        r = generate_flow(
            workspace=config.workspace,
            masks=a.masks,
            out=a.out,
            style_image=a.style_image,
            seed=a.seed,
            attribute=a.attribute,
            strength=a.strength,
            model=a.model,
            device=config.device,
        )
    print(
        f"generated {r['generated']} portraits ({r['style']}) into {a.out} and generated/images with {r['checkpoint']}"
    )
    if r["refused"]:
        print(f"{r['refused']} mask(s) refused: see `mangaka status`")
    if r["strip"]:
        print(f"interpolation strip: {r['strip']}")
    return 0


def _cmd_eval_gaugan(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.gaugan import eval_gaugan_flow
    from flows.runtime import prefect_api

    with prefect_api():
        r = eval_gaugan_flow(workspace=config.workspace, model=a.model, count=a.count, device=config.device)
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        print(
            f"{r['checkpoint']}: semantic mIoU {r['semantic_miou']:.4f}, pixel accuracy {r['pixel_accuracy']:.4f} "
            f"on {r['images']} held-out masks (real images: {r['real']['semantic_miou']:.4f} / "
            f"{r['real']['pixel_accuracy']:.4f})"
        )
    return 0


def _cmd_train_lineart(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.lineart import train_lineart_flow
    from flows.runtime import prefect_api
    from tasks.artline import LineartTrainOptions

    if a.pairs and not os.path.isdir(a.pairs):
        raise UsageError(f"{a.pairs} is not a folder")
    if a.vgg_weights and not os.path.isfile(a.vgg_weights):
        raise UsageError(f"{a.vgg_weights} does not exist")
    try:
        epochs = tuple(int(e) for e in a.epochs.split(","))
    except ValueError:
        raise UsageError(f"--epochs takes comma-separated counts (6,3,1), not {a.epochs!r}") from None
    sizes = tuple(s for s in (a.size // 4, a.size // 2, a.size) if s >= 32)[-len(epochs) :]
    options = LineartTrainOptions(
        model=a.model,
        size=a.size,
        sizes=sizes,
        epochs=epochs,
        pairs=a.pairs,
        count=a.count,
        batch_size=a.batch_size,
        lr=a.lr,
        feature_weight=a.feature_weight,
        vgg_weights=a.vgg_weights,
        seed=a.seed,
        device=config.device,
    )
    with prefect_api():
        r = train_lineart_flow(workspace=config.workspace, options=options)
    if r["already_done"]:
        print(f"run {r['run']} already finished its {r['epochs']} epochs: nothing to do")
    elif r["resumed_at"]:
        print(f"resumed run {r['run']} after epoch {r['resumed_at']} of {r['epochs']}")
    last = r["last"]
    print(
        f"trained the line-art model {r['epochs']} epochs on {r['pairs']}; held-out boundary F1 {last.get('f1')} "
        f"at {last.get('size')} px; checkpoint {r['checkpoint']} in models/artline"
    )
    return 0


def _cmd_render_lineart(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.lineart import render_lineart
    from storage.checkpoints import resolve
    from storage.workspace import Workspace

    if a.shards and not all(p.strip().isdigit() or not p.strip() for p in a.shards.split(":")):
        raise UsageError(f"--shards takes A:B (shard numbers), not {a.shards!r}")
    if a.method == "artline":
        resolve(Workspace(config.workspace), "artline", a.model)  # a clear error before starting anything
    r = _run(
        config,
        lambda: render_lineart(
            workspace=config.workspace,
            method=a.method,
            model=a.model,
            shards=a.shards,
            force=a.force,
            device=config.device,
        ),
    )
    print(
        f"rendered {r['rendered']} corpus images with {a.method} in {r['shards']} shard(s) into "
        f"corpus/lineart/{a.method}; {r['corpus_items']} corpus items in all"
    )
    return 0


def _cmd_stylize(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.runtime import prefect_api
    from flows.style import stylize_flow
    from tasks.neural_style import StyleOptions

    for path in (a.content, a.style, a.vgg_weights):
        if path and not os.path.isfile(path):
            raise UsageError(f"{path} does not exist")
    options = StyleOptions(
        content_weight=a.content_weight,
        style_weight=a.style_weight,
        tv_weight=a.tv_weight,
        stop_eps=a.stop_eps,
        max_num_epochs=a.max_num_epochs,
        max_long_edge=a.max_long_edge,
        lr=a.lr,
        remove_noise=a.remove_noise,
        save_epochs=a.save_epochs,
        init=a.init,
        optimizer=a.optimizer,
        pool=a.pool,
        vgg_weights=a.vgg_weights,
        seed=a.seed,
        device=config.device,
    )
    with prefect_api():
        r = stylize_flow(content=a.content, style=a.style, out=a.out, options=options)
    print(
        f"stylized {a.content} ({r['size'][1]}x{r['size'][0]}) in {r['epochs']} epochs, {r['seconds']} s "
        f"(stopped by {r['stopped']}); wrote {a.out}"
    )
    if r["vgg"].startswith("random"):
        print("note: no --vgg-weights given: fixed-seed random VGG19 features were used (recorded in the metadata)")
    return 0


def _cmd_train_style(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.runtime import prefect_api
    from flows.style import train_style_flow
    from tasks.fast_style import FastStyleOptions

    if not os.path.isfile(a.style_image):
        raise UsageError(f"{a.style_image} does not exist")
    options = FastStyleOptions(
        model=a.model,
        size=a.size,
        steps=a.steps,
        batch_size=a.batch_size,
        style_weight=a.style_weight,
        vgg_weights=a.vgg_weights,
        device=config.device,
    )
    with prefect_api():
        r = train_style_flow(workspace=config.workspace, style_image=a.style_image, options=options)
    print(f"trained fast style {r['style']} in {r['seconds']} s; checkpoint {r['checkpoint']} in models/fast-style")
    return 0


def _cmd_train_colorizer(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.runtime import prefect_api
    from flows.style import train_colorizer_flow
    from tasks.colorizer import ColorizerOptions

    if a.size % 32:
        raise UsageError(f"--size must be a multiple of 32, not {a.size}")
    if a.hint_size < 0:
        raise UsageError(f"--hint-size must be 0 or more, not {a.hint_size}")
    options = ColorizerOptions(
        size=a.size,
        num_values=a.num_values,
        epochs=a.epochs,
        batch_size=a.batch_size,
        hint_size=a.hint_size,
        hint=a.hint,
        device=config.device,
    )
    with prefect_api():
        r = train_colorizer_flow(workspace=config.workspace, options=options)
    if a.json:
        keys = ("palette_accuracy", "commonest_colour_accuracy", "hint_accuracy", "parameters")
        print(json.dumps({k: r[k] for k in keys}))
    else:
        print(
            f"trained the colouriser ({r['parameters']:,} parameters, {a.num_values**3} colours): held-out palette "
            f"accuracy {r['palette_accuracy']:.4f} on {r['held_out_images']} images (every pixel in the commonest "
            f"colour: {r['commonest_colour_accuracy']:.4f}"
            + (f"; the {a.hint_size}x{a.hint_size} colour hint alone: {r['hint_accuracy']:.4f}" if a.hint_size else "")
            + f"); checkpoint {r['checkpoint']}"
        )
    return 0


def _cmd_render_style(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.style import render_style
    from tasks.fast_style import FastStyleOptions
    from tasks.neural_style import StyleOptions

    if a.style_image and not os.path.isfile(a.style_image):
        raise UsageError(f"{a.style_image} does not exist")
    if a.method in ("fast", "gatys") and not a.style_image:
        raise UsageError(f"--method {a.method} needs --style-image IMG")
    if a.shards and not all(p.strip().isdigit() or not p.strip() for p in a.shards.split(":")):
        raise UsageError(f"--shards takes A:B (shard numbers), not {a.shards!r}")
    r = _run(
        config,
        lambda: render_style(
            workspace=config.workspace,
            method=a.method,
            name=a.name,
            style=a.style,
            style_image=os.path.abspath(a.style_image) if a.style_image else None,
            lines=a.lines,
            fast_options=FastStyleOptions(size=a.fast_size, steps=a.fast_steps, device=config.device),
            gatys_options=StyleOptions(max_num_epochs=a.gatys_epochs, save_epochs=0, device=config.device),
            shards=a.shards,
            force=a.force,
            device=config.device,
        ),
    )
    print(
        f"rendered {r['rendered']} corpus images with {a.method} in {r['shards']} shard(s) into "
        f"corpus/styled/{a.name}; {r['corpus_items']} corpus items in all"
    )
    return 0


def _cmd_pseudolabel(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.pseudolabel import pseudolabel
    from storage.checkpoints import resolve
    from storage.workspace import Workspace
    from tasks.pseudolabel import PseudolabelOptions

    if a.shards and not all(p.strip().isdigit() or not p.strip() for p in a.shards.split(":")):
        raise UsageError(f"--shards takes A:B (shard numbers), not {a.shards!r}")
    options = PseudolabelOptions(
        model=a.model,
        batch_size=a.batch_size,
        flip_tta=a.flip_tta,
        precision=a.precision,
        engine=a.engine,
        readers=a.readers,
        confidence_map=a.confidence_map,
        device=config.device,
    )
    resolve(Workspace(config.workspace), "unet", a.model)  # a clear error before starting anything
    r = _run(
        config,
        lambda: pseudolabel(workspace=config.workspace, options=options, shards=a.shards, force=a.force),
    )
    print(
        f"labelled {r['labelled']} corpus images in {r['shards']} shard(s) with {r['checkpoint']} ({r['digest']}); "
        f"{r['corpus_items']} corpus items in all"
    )
    return 0


def _cmd_export_labelme(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.export import export_labelme

    r = _run(
        config,
        lambda: export_labelme(workspace=config.workspace, out=a.out, lowest_confidence=a.lowest_confidence),
    )
    print(
        f"wrote {r['exported']} labelme files (image + JSON) to {a.out} (confidence up to {r['max_confidence']}); "
        f"correct them with `mangaka annotate {a.out}`, then `mangaka ingest-labelme {a.out}`"
    )
    return 0


def _cmd_annotate(a: argparse.Namespace, config: RunConfig) -> int:
    import shutil
    import subprocess
    import tempfile

    from storage.workspace import Workspace

    if not os.path.isdir(a.dir):
        raise UsageError(f"{a.dir} is not a folder")
    exe = shutil.which("labelme")
    if exe is None:
        raise UsageError("labelme is not installed: install the annotate extra, pip install -e '.[annotate]'")
    classes = Workspace(config.workspace).classes
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="mangaka-labels-", delete=False) as f:
        f.write("\n".join(["__ignore__", "_background_", *classes[1:]]) + "\n")
    # --nodata keeps images out of the JSON (imagePath only), as mangaka's own files do.
    return subprocess.call([exe, a.dir, "--labels", f.name, "--nodata", "--autosave"])


def _cmd_export(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.export import export
    from storage.workspace import Workspace, WorkspaceError

    arr = Workspace(config.workspace).array(a.array)  # fail fast, before starting anything
    if arr.ndim not in (3, 4):
        raise WorkspaceError(f"{a.array} is not an image or mask array")
    r = _run(config, lambda: export(workspace=config.workspace, array=a.array, out=a.out))
    print(f"exported {r['exported']} items of {a.array} to {a.out}")
    return 0


def _cmd_status(a: argparse.Namespace, config: RunConfig) -> int:
    from storage.workspace import Workspace
    from tasks.status import status_lines, workspace_status

    status = workspace_status(Workspace(config.workspace))
    print(json.dumps(status, indent=1) if a.json else "\n".join(status_lines(status)))
    return 0


def _cmd_build(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.build import STAGES, build

    stages = [s.strip() for s in a.stages.split(",")] if a.stages else list(STAGES)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise UsageError(f"unknown stage(s) {', '.join(unknown)}; stages are {', '.join(STAGES)}")
    r = _run(
        config,
        lambda: build(workspace=config.workspace, src=a.src, labelme=a.labelme, stages=stages, size=a.size),
    )
    print(json.dumps(r, indent=1, default=str))
    if r.get("report"):
        print(f"report: {r['report']['index']}", file=sys.stderr)
    return 0


def _cmd_demo(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.build import DemoOptions, demo

    options = DemoOptions.full() if a.full else DemoOptions()
    r = _run(config, lambda: demo(workspace=config.workspace, options=options))
    print("\n".join(_demo_lines(config.workspace)))
    from flows.build import evaluation_lines, gaugan_lines

    for name, ev in r.get("evaluation", {}).items():
        print("\n".join(evaluation_lines(name, ev)))
    if r.get("gaugan"):
        print("\n".join(gaugan_lines(r["gaugan"])))
    print(f"report: {r['report']['index']}")
    return 0


def _demo_lines(workspace: str) -> list[str]:
    from storage.workspace import Workspace
    from tasks.status import status_lines, workspace_status

    return status_lines(workspace_status(Workspace(workspace)))


def _cmd_serve(a: argparse.Namespace, config: RunConfig) -> int:
    from flows.runtime import _ensure_prefect_home
    from flows.serve import serve

    if not os.environ.get("PREFECT_API_URL"):
        raise UsageError(
            "serve needs a Prefect server: start one (`prefect server start`) and set PREFECT_API_URL, "
            "e.g. http://127.0.0.1:4200/api"
        )
    try:
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=a.cron, timezone=a.timezone)
    except ValueError as exc:
        raise UsageError(f"invalid --cron/--timezone: {str(exc).splitlines()[0]}") from None
    _ensure_prefect_home()
    serve(
        config.workspace if "://" in config.workspace else os.path.abspath(config.workspace),
        cron=a.cron,
        timezone=a.timezone,
        src=a.src if a.src is None or "://" in a.src else os.path.abspath(a.src),
        labelme=a.labelme if a.labelme is None or "://" in a.labelme else os.path.abspath(a.labelme),
        gpu_limit=a.gpu_limit,
        limit=a.limit,
        dask_address=config.dask_address,
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, RunConfig], int]] = {
    "synth": _cmd_synth,
    "ingest-images": _cmd_ingest,
    "ingest-labelme": _cmd_ingest_labelme,
    "annotate": _cmd_annotate,
    "augment": _cmd_augment,
    "train-unet": _cmd_train_unet,
    "pseudolabel": _cmd_pseudolabel,
    "export-labelme": _cmd_export_labelme,
    "train-gaugan": _cmd_train_gaugan,
    "train-lineart": _cmd_train_lineart,
    "stylize": _cmd_stylize,
    "train-style": _cmd_train_style,
    "train-colorizer": _cmd_train_colorizer,
    "render-style": _cmd_render_style,
    "render-lineart": _cmd_render_lineart,
    "generate": _cmd_generate,
    "eval-gaugan": _cmd_eval_gaugan,
    "export": _cmd_export,
    "status": _cmd_status,
    "build": _cmd_build,
    "demo": _cmd_demo,
    "serve": _cmd_serve,
}


def _quiet_libraries(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(level)
    for name in ("distributed", "tornado", "asyncio", "botocore", "aiobotocore", "s3fs"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        # Quiet terminal, full record: runs still log at INFO to the Prefect API (the UI);
        # only the console handlers (here and in every Dask worker) show warnings alone.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    config = RunConfig(args.workspace, args.dask_address, args.device, args.workers)
    from flows.shards import ShardFailures
    from storage.workspace import WorkspaceError

    try:
        # Names that become parts of keys are refused here, before anything starts (the
        # flows check them again, for runs started from the UI).
        from storage.workspace import check_name

        for attr, what in (("name", "name (--name)"), ("model", "model (--model)")):
            if isinstance(getattr(args, attr, None), str):
                check_name(getattr(args, attr), what)
        return COMMANDS[args.command](args, config)
    except (UsageError, WorkspaceError, FileNotFoundError, ValidationError) as exc:
        msg = str(exc).splitlines()[0] if not isinstance(exc, ValidationError) else _validation_line(exc)
        print(f"mangaka {args.command}: {msg}", file=sys.stderr)
        return 2
    except ShardFailures as exc:
        print(f"mangaka {args.command}: {exc}; run it again to redo only those shards", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mangaka {args.command}: interrupted; run it again to resume", file=sys.stderr)
        return 1
    except Exception as exc:  # the run failed: say why in one line, details with -v
        log.debug("failure", exc_info=True)
        print(f"mangaka {args.command}: failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1


def _validation_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err.get("loc", ()))
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    return f"invalid option {where}: {msg}" if where else f"invalid options: {msg}"


if __name__ == "__main__":
    raise SystemExit(main())
