"""The GauGAN flows: ``train-gaugan``, ``generate`` and ``eval-gaugan``.

Training runs in the flow's process on the run's device (one model, many steps: nothing
to spread over Dask); each checkpoint's losses and semantic consistency go to a Prefect
table artifact, and its sample sheet to an image artifact.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows.ops import mangaka_flow
from storage.workspace import Workspace, WorkspaceError
from tasks.gaugan import MODEL_DIR, GauganOptions, collect_pairs, evaluate, load_gaugan, train_gaugan


def _file_url(ws: Workspace, key: str) -> str:
    path = ws.loc.path(key)
    return path if "://" in path else f"file://{path}"


@mangaka_flow("train-gaugan")
def train_gaugan_flow(workspace: str, options: GauganOptions = GauganOptions()) -> dict[str, Any]:  # noqa: B008
    """Pretrain the encoder as a VAE, then train GauGAN; checkpoints land in ``models/gaugan``."""
    logger = get_run_logger()
    ws = Workspace(workspace)
    rows: list[dict[str, Any]] = []

    def on_checkpoint(m: dict[str, Any]) -> None:
        rows.append(m)
        create_table_artifact(key="train-gaugan-losses", table=rows, description=f"train-gaugan on {ws.url}")
        if m["phase"] == "gan":
            create_image_artifact(
                image_url=_file_url(ws, f"models/{MODEL_DIR}/{m['checkpoint']}/samples.png"),
                key="train-gaugan-samples",
                description=f"step {m['step']}: mask | real | styled by the real image | two random latents",
            )
        logger.info("%s", {k: v for k, v in m.items() if k != "seconds"})

    columns = (TextColumn("train-gaugan {task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        job = bar.add_task("", total=None)

        def on_step(phase: str, done: int, total: int) -> None:
            bar.update(job, description=phase, completed=done, total=total)

        result = train_gaugan(ws, options, on_checkpoint=on_checkpoint, on_step=on_step)
    if result.resumed_at:
        logger.info("resumed run %s at %s step %d", result.run, result.resumed_at["phase"], result.resumed_at["step"])
    if result.vgg.startswith("random"):
        logger.info("the VGG perceptual loss used random features (%s): no ImageNet weights were given", result.vgg)
    return result.to_dict()


@mangaka_flow("generate", "to {out}")
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
    """One portrait per class-id mask in ``masks``, into ``out`` and ``generated/images``."""
    from tasks.generate import generate

    ws = Workspace(workspace)
    attr = parse_attribute(attribute) if attribute else None
    trained = load_gaugan(ws, model, device)
    r = generate(ws, trained, masks, out, style_image, seed, attr, strength)
    r["checkpoint"] = trained.checkpoint
    if r["strip"]:
        create_image_artifact(image_url=f"file://{r['strip']}", key="generate-attribute-strip")
    return r


def parse_attribute(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise WorkspaceError(f"--attribute takes NAME=VALUE (hair=blonde), not {text!r}")
    return name.strip(), value.strip()


@mangaka_flow("eval-gaugan")
def eval_gaugan_flow(
    workspace: str, model: str = "latest", count: int = 0, seed: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """SPADE's semantic consistency on the held-out masks, with the real images as the upper bound."""
    ws = Workspace(workspace)
    if not ws.loc.exists("models/unet/tags/latest.json"):
        raise WorkspaceError(f"{ws.url} has no segmenter to evaluate with: run train-unet first")
    trained = load_gaugan(ws, model, device)
    opts = GauganOptions(**{**trained.config["options"], "device": "cpu"})
    pairs = collect_pairs(ws, opts)
    ev = evaluate(ws, trained.generator, pairs, count, trained.device, seed=seed, with_real=True)
    result = {
        "checkpoint": trained.checkpoint,
        "step": trained.config.get("step"),
        "semantic_miou": ev["semantic_miou"],
        "pixel_accuracy": ev["pixel_accuracy"],
        "images": ev["images"],
        "iou": ev["iou"],
        "real": {k: ev["real"][k] for k in ("semantic_miou", "pixel_accuracy", "iou")},
        "segmenter": ev["segmenter"],
    }
    ws.loc.write_json(f"models/{MODEL_DIR}/{trained.checkpoint}/eval.json", result)
    create_markdown_artifact(
        key="eval-gaugan",
        markdown=(
            f"GauGAN {trained.checkpoint}: semantic mIoU **{result['semantic_miou']:.4f}**, pixel accuracy "
            f"{result['pixel_accuracy']:.4f} on {result['images']} held-out masks; real images "
            f"{result['real']['semantic_miou']:.4f} / {result['real']['pixel_accuracy']:.4f}"
        ),
    )
    return result
