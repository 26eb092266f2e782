"""The GauGAN flows: ``train-gaugan``, ``generate`` and ``eval-gaugan``.

Training runs in the flow's process on the run's device (one model, many steps: nothing
to spread over Dask); each checkpoint's losses and semantic consistency go to a Prefect
table artifact, and its sample sheet to an image artifact.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_image_artifact, create_markdown_artifact

from flows import UsageError
from flows.ops import mangaka_flow
from flows.training import monitored
from storage.checkpoints import has_tag, side_key, write_side_file
from storage.location import file_url
from storage.workspace import Workspace, WorkspaceError
from tasks.gaugan import (
    MODEL_DIR,
    GauganOptions,
    collect_pairs,
    evaluate,
    options_of,
    style_evaluation,
    train_gaugan,
)
from tasks.gaugan_metrics import evaluation_lines
from tasks.generate import attribute_evaluation, load_gaugan


@mangaka_flow("train-gaugan", cluster=False)
def train_gaugan_flow(workspace: str, options: GauganOptions = GauganOptions()) -> dict[str, Any]:  # noqa: B008
    """Pretrain the encoder as a VAE, then train GauGAN; checkpoints land in ``models/gaugan``."""
    logger = get_run_logger()
    ws = Workspace(workspace)

    def line(m: dict[str, Any]) -> str:
        return str({k: v for k, v in m.items() if k != "seconds"})

    with monitored("train-gaugan-losses", f"train-gaugan on {ws.url}", line) as mon:

        def on_checkpoint(m: dict[str, Any]) -> None:
            mon.on_epoch(m)
            if m["phase"] == "gan":
                create_image_artifact(
                    image_url=file_url(ws.loc.url_of(side_key(MODEL_DIR, m["checkpoint"], "samples.png"))),
                    key="train-gaugan-samples",
                    description=f"step {m['step']}: mask | real | styled by the real image | two random latents",
                )

        def on_step(phase: str, done: int, total: int) -> None:
            mon.on_step(done, total, phase)

        result = train_gaugan(ws, options, on_checkpoint=on_checkpoint, on_step=on_step)
    if result.resumed_at:
        logger.info("resumed run %s at %s step %d", result.run, result.resumed_at["phase"], result.resumed_at["step"])
    if result.vgg.startswith("random"):
        logger.info("the VGG perceptual loss used random features (%s): no ImageNet weights were given", result.vgg)
    return result.to_dict()


@mangaka_flow("generate", "to {out}", cluster=False)
def generate_flow(
    workspace: str,
    masks: str,
    out: str,
    style_image: str | None = None,
    seed: int = 0,
    attribute: str | None = None,
    strength: float = 1.0,
    model: str = "latest",
    device: str = "auto",
) -> dict[str, Any]:
    """One portrait per class-id mask in ``masks``, into ``out`` and ``generated/images``.

    Args:
        workspace: local directory or s3://bucket/prefix
        masks: a folder of class-id PNG masks (local or s3://)
        out: the folder to write the portraits into (local or s3://)
        style_image: a reference image whose style to copy (through the encoder)
        seed: random latents (one per mask id) from this seed, when no style image is given
        attribute: NAME=VALUE, e.g. hair=blonde: move every latent along that direction
        strength: how far along the attribute's direction
        model: a GauGAN checkpoint tag (latest, best) or name
        device: auto, cpu or cuda
    """
    from tasks.generate import generate

    ws = Workspace(workspace)
    attr = parse_attribute(attribute) if attribute else None
    trained = load_gaugan(ws, model, device)
    r = generate(ws, trained, masks, out, style_image, seed, attr, strength)
    r["checkpoint"] = trained.checkpoint
    if r["strip"]:
        create_image_artifact(image_url=file_url(r["strip"]), key="generate-attribute-strip")
    return r


def parse_attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise WorkspaceError(f"--attribute takes NAME=VALUE (hair=blonde), not {text!r}")
    return name.strip(), value.strip()


@mangaka_flow("eval-gaugan", cluster=False)
def eval_gaugan_flow(
    workspace: str, model: str = "latest", count: int = 0, seed: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """SPADE's semantic consistency on the held-out masks, with the real images as the upper bound.

    Args:
        workspace: local directory or s3://bucket/prefix
        model: a GauGAN checkpoint tag (latest, best) or name
        count: held-out masks to use (0: all)
        seed: the latents' seed
        device: auto, cpu or cuda
    """
    ws = Workspace(workspace)
    if not has_tag(ws, "unet"):
        raise WorkspaceError(f"{ws.url} has no segmenter to evaluate with: run train-unet first")
    trained = load_gaugan(ws, model, device)
    opts = options_of(trained.config)
    pairs = collect_pairs(ws, opts)
    ev = evaluate(ws, trained.generator, pairs, count, trained.device, seed=seed, with_real=True)
    style = style_evaluation(trained.generator, trained.encoder, pairs, count, trained.device, ws.classes, seed)
    entries = (pairs.held_out[:count] if count else pairs.held_out)[:4]
    attribute = attribute_evaluation(ws, trained, pairs.read(entries)[1], seed=seed) if entries else None
    result = {
        "checkpoint": trained.checkpoint,
        "step": trained.config.get("step"),
        "semantic_miou": ev["semantic_miou"],
        "pixel_accuracy": ev["pixel_accuracy"],
        "images": ev["images"],
        "iou": ev["iou"],
        "real": {k: ev["real"][k] for k in ("semantic_miou", "pixel_accuracy", "iou")},
        "segmenter": ev["segmenter"],
        "style": style,
        "attribute_effect": attribute,
    }
    write_side_file(ws, MODEL_DIR, trained.checkpoint, "eval.json", json.dumps(result, indent=1).encode())
    create_markdown_artifact(key="eval-gaugan", markdown="\n\n".join(evaluation_lines(result)))
    return result


def precheck_generate_flow(params: dict[str, Any], given: set[str]) -> None:
    if params.get("style_image") and "seed" in given:
        raise UsageError("give --style-image or --seed, not both")
    if params.get("attribute"):
        parse_attribute(params["attribute"])


def describe_train_gaugan_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    lines = []
    if r["resumed_at"]:
        at = r["resumed_at"]
        lines.append(f"resumed run {r['run']} from its checkpoint at {at['phase']} step {at['step']}")
    if r["already_done"]:
        lines.append(f"run {r['run']} already finished its {r['step']} steps: nothing to do (--steps N continues it)")
    pairs = ", ".join(f"{v} {k}" for k, v in r["train_pairs"].items())
    m = r["metrics"]
    sem = (
        f"; semantic mIoU {m['semantic_miou']:.4f} on {m['eval_images']} held-out masks" if "semantic_miou" in m else ""
    )
    lines.append(
        f"trained GauGAN to step {r['step']} on {pairs} pairs{sem}; checkpoint {r['checkpoint']} in models/gaugan"
    )
    if r["vgg"].startswith("random"):
        lines.append("note: no --vgg-weights given, the perceptual loss used fixed-seed random VGG19 features")
    return "\n".join(lines)


def describe_generate_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    return "\n".join(
        [f"generated {r['generated']} portraits ({r['style']}) into {params['out']} with {r['checkpoint']}"]
        + ([f"{r['refused']} mask(s) refused: see `mangaka status`"] if r["refused"] else [])
        + ([f"interpolation strip: {r['strip']}"] if r["strip"] else [])
    )


def describe_eval_gaugan_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    return "\n".join(evaluation_lines(r))
