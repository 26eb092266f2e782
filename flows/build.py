"""``build``: the whole chain as one flow of sub-flows; ``demo``: synth + build + a report.

The chain is the table :data:`STAGES`: each :class:`Stage` says when it has something to
do (``ready``) and how to do it (``run``), and ``build`` runs the asked-for ones in chain
order, each a sub-flow with its own shard tasks on the run's one Dask cluster. The
command line's ``--stages`` choices and the UI form's come from the same table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prefect import get_run_logger
from pydantic import BaseModel, Field

from flows.augment import augment
from flows.gaugan import eval_gaugan_flow, generate_flow, train_gaugan_flow
from flows.ingest import ingest_images
from flows.labelme import ingest_labelme
from flows.lineart import render_lineart, train_lineart_flow
from flows.ops import mangaka_flow
from flows.pseudolabel import pseudolabel
from flows.report import stage_rows, synth_truth_lineart, synth_truth_miou, write_report
from flows.segment import train_unet_flow
from flows.style import render_style, train_colorizer_flow
from flows.synth import synth
from flows.training import progress
from storage.checkpoints import has_tag
from storage.items import item_table
from storage.workspace import Workspace
from tasks.annotations import LabelmeOptions
from tasks.artline_options import LineartTrainOptions
from tasks.augment import AugmentOptions
from tasks.colorizer import ColorizerOptions
from tasks.fast_style import FastStyleOptions
from tasks.gaugan import GauganOptions
from tasks.ingest import IngestOptions
from tasks.lineart import METHODS, method_names
from tasks.segment import TrainOptions


@dataclass
class Build:
    """What a build run's stages see: the workspace and the build's parameters."""

    workspace: str
    ws: Workspace
    size: int
    src: str | None
    labelme: str | None
    shard_size: int | None
    options: dict[str, Any]
    style_image: str | None

    def count(self, family: str) -> int:
        return len(item_table(self.ws, family))


@dataclass(frozen=True)
class Stage:
    """One step of the chain: ``ready(build)`` is None when there is work, else why not; ``run`` does it."""

    name: str
    ready: Callable[[Build], str | None]
    run: Callable[[Build], Any]
    multi: bool = False  # the result holds one summary per method


def _lineart_methods(b: Build) -> list[str]:
    """Every training-free method, and each learned one whose model has been trained."""
    return [m for m in method_names() if METHODS[m].model is None or has_tag(b.ws, str(METHODS[m].model))]


def _styles(b: Build) -> dict[str, Any]:
    w = b.workspace
    rendered = {"toon": render_style(workspace=w, method="npr", name="toon", style="toon")}
    if b.style_image:
        fast = b.options.get("fast_options") or FastStyleOptions()
        rendered["fast"] = render_style(
            workspace=w, method="fast", name="fast", style_image=b.style_image, fast_options=fast
        )
    if has_tag(b.ws, "colorizer"):
        # the colouriser learns from auto-Canny drawings: colour those (any line art works, less well)
        rendered["colorized"] = render_style(workspace=w, method="colorize", name="colorized", lines="canny")
    return rendered


def _no(reason: str, ok: bool) -> str | None:
    return None if ok else reason


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest-labelme",
        lambda b: _no("no labelme folder given, nothing new to ingest", b.labelme is not None),
        lambda b: ingest_labelme(
            workspace=b.workspace,
            src=str(b.labelme),
            options=LabelmeOptions(size=b.size, classes=tuple(b.ws.classes)),
            shard_size=b.shard_size,
        ),
    ),
    Stage(
        "augment",
        lambda b: _no("no annotated items yet, nothing to augment", b.count("annotated") > 0),
        lambda b: augment(workspace=b.workspace, options=b.options.get("augment_options") or AugmentOptions()),
    ),
    Stage(
        "train-unet",
        lambda b: _no("fewer than 2 annotated items, nothing to train on", b.count("annotated") >= 2),
        lambda b: train_unet_flow(workspace=b.workspace, options=b.options.get("train_options") or TrainOptions()),
    ),
    Stage(
        "ingest-images",
        lambda b: _no("no src given, nothing new to ingest", b.src is not None),
        lambda b: ingest_images(
            workspace=b.workspace, src=str(b.src), options=IngestOptions(size=b.size), shard_size=b.shard_size
        ),
    ),
    Stage(
        "pseudolabel",
        lambda b: _no("needs a trained segmenter and corpus images", has_tag(b.ws, "unet") and b.count("corpus") > 0),
        lambda b: pseudolabel(workspace=b.workspace),
    ),
    Stage(
        "train-gaugan",
        lambda b: _no(
            "needs annotations or pseudo-labelled corpus images",
            b.count("annotated") > 0 or b.ws.has_array("corpus/masks"),
        ),
        lambda b: train_gaugan_flow(
            workspace=b.workspace, options=b.options.get("gaugan_options") or GauganOptions(size=min(256, b.size))
        ),
    ),
    Stage(
        "train-lineart",
        lambda b: None,
        lambda b: train_lineart_flow(
            workspace=b.workspace,
            # a workspace with annotations fine-tunes on them after the drawn pre-training
            options=b.options.get("lineart_options") or LineartTrainOptions(finetune=b.count("annotated") >= 2),
        ),
    ),
    Stage(
        "render-lineart",
        lambda b: _no("no corpus images yet", b.count("corpus") > 0),
        lambda b: {m: render_lineart(workspace=b.workspace, method=m) for m in _lineart_methods(b)},
        multi=True,
    ),
    Stage(
        "train-colorizer",
        lambda b: _no("no corpus images yet", b.count("corpus") > 0),
        lambda b: train_colorizer_flow(
            workspace=b.workspace,
            options=b.options.get("colorizer_options") or ColorizerOptions(size=min(256, b.size)),
        ),
    ),
    Stage("render-style", lambda b: _no("no corpus images yet", b.count("corpus") > 0), _styles, multi=True),
)
if TYPE_CHECKING:
    StageName = str
else:  # the table's names: the choices of --stages and of the UI form
    StageName = Literal[tuple(s.name for s in STAGES)]
MULTI = {s.name for s in STAGES if s.multi}


@mangaka_flow("build-dataset")
def build(
    workspace: str,
    src: str | None = None,
    labelme: str | None = None,
    stages: list[StageName] = [s.name for s in STAGES],  # noqa: B006 - Prefect copies parameters
    size: int | None = None,
    shard_size: int | None = None,
    augment_options: AugmentOptions | None = None,
    train_options: TrainOptions | None = None,
    gaugan_options: GauganOptions | None = None,
    lineart_options: LineartTrainOptions | None = None,
    colorizer_options: ColorizerOptions | None = None,
    style_image: str | None = None,
    fast_options: FastStyleOptions | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Run the chain's stages in order on ``workspace``; write ``reports/<run>/index.html``.

    Args:
        workspace: local directory or s3://bucket/prefix
        src: new corpus images to ingest (a folder, a .tar, or s3://bucket/prefix)
        labelme: a folder of labelme annotations to ingest
        stages: the stages to run, in chain order (default: all)
        size: image side (default: the workspace's, else 512)
        shard_size: items per shard (fixed at the first ingestion)
        augment_options: augment's options (default: its defaults)
        train_options: train-unet's options
        gaugan_options: train-gaugan's options
        lineart_options: train-lineart's options (default: its defaults, and fine-tuned on the
            annotations when there are at least 2)
        colorizer_options: train-colorizer's options
        style_image: a style image: render-style also renders a fast style of it
        fast_options: the fast style's training options
        report: write the HTML report and its artifacts
    """
    logger = get_run_logger()
    known = [s.name for s in STAGES]
    unknown = sorted(set(stages) - set(known))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {known}")
    ws = Workspace(workspace)
    options = {
        "augment_options": augment_options,
        "train_options": train_options,
        "gaugan_options": gaugan_options,
        "lineart_options": lineart_options,
        "colorizer_options": colorizer_options,
        "fast_options": fast_options,
    }
    b = Build(workspace, ws, size or ws.config().get("image_size", 512), src, labelme, shard_size, options, style_image)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    chosen = [stage for stage in STAGES if stage.name in stages]
    for n, stage in enumerate(chosen, 1):
        reason = stage.ready(b)
        if reason is not None:
            logger.info("%s: %s", stage.name, reason)
            progress(f"stage {n}/{len(chosen)} {stage.name}: skipped ({reason})")
            continue
        progress(f"stage {n}/{len(chosen)} {stage.name} ...")
        t0 = time.perf_counter()
        results[stage.name] = stage.run(b)
        timings[stage.name] = round(time.perf_counter() - t0, 2)
        progress(f"stage {n}/{len(chosen)} {stage.name}: done in {timings[stage.name]:.1f} s")
    rows = stage_rows(results, timings, MULTI)
    results["seconds"] = timings
    if report:
        results["report"] = write_report(ws, rows)
    return results


class DemoOptions(BaseModel):
    """Sizes of the demo corpus; the defaults finish the chain in minutes on 2 cores."""

    count: int = Field(300, ge=1)
    annotated: int = Field(24, ge=0)
    size: int = Field(256, ge=32)
    seed: int = 0
    shard_size: int = Field(64, ge=1)
    unet_epochs: int = Field(10, ge=1)
    # random 192 px windows of the 256 px annotations: 0.6x the time of whole images, and
    # the small classes come out better (pseudo-label mIoU 0.80 against 0.75; docs/SEGMENTATION.md).
    unet_crop: int | None = Field(192, ge=32)
    gaugan_size: int = Field(128, ge=64)
    gaugan_steps: int = Field(200, ge=1)
    gaugan_vae_steps: int = Field(150, ge=0)
    # Lighter than train-gaugan's defaults so the chain fits 20 minutes on a slow 2-core box:
    # SPADE's hidden width and the discriminator halved, and no perceptual loss (without
    # ImageNet weights its random VGG features cost half of every step and did not raise
    # semantic mIoU: docs/GAUGAN.md).
    gaugan_spade_hidden: int = Field(64, ge=1)
    gaugan_ndf: int = Field(32, ge=1)
    gaugan_lambda_vgg: float = Field(0.0, ge=0)
    gaugan_checkpoint_every: int = Field(50, ge=1)
    lineart_size: int = Field(128, ge=32)
    lineart_epochs: tuple[int, ...] = (4, 4, 9)
    lineart_finetune: bool = True  # on the demo's annotated portraits, after the drawn pre-training
    colorizer_size: int = Field(128, ge=32)
    colorizer_epochs: int = Field(6, ge=1)
    fast_style_size: int = Field(128, ge=16)
    fast_style_steps: int = Field(40, ge=1)

    def lineart(self) -> LineartTrainOptions:
        return LineartTrainOptions(size=self.lineart_size, epochs=self.lineart_epochs, finetune=self.lineart_finetune)

    def gaugan(self) -> GauganOptions:
        return GauganOptions(
            size=self.gaugan_size,
            steps=self.gaugan_steps,
            vae_steps=self.gaugan_vae_steps,
            spade_hidden=self.gaugan_spade_hidden,
            ndf=self.gaugan_ndf,
            lambda_vgg=self.gaugan_lambda_vgg,
            checkpoint_every=self.gaugan_checkpoint_every,
        )

    @classmethod
    def full(cls) -> DemoOptions:
        return cls(
            count=5000,
            annotated=200,
            size=512,
            shard_size=256,
            unet_epochs=30,
            unet_crop=None,
            gaugan_size=256,
            gaugan_steps=2000,
            gaugan_vae_steps=400,
            gaugan_checkpoint_every=200,
            gaugan_spade_hidden=128,
            gaugan_ndf=64,
            gaugan_lambda_vgg=10.0,
            lineart_size=256,
            fast_style_steps=100,
        )


@mangaka_flow("demo")
def demo(workspace: str, options: DemoOptions = DemoOptions(), full: bool = False) -> dict[str, Any]:  # noqa: B008
    """Draw a synthetic corpus into the workspace, build every stage on it, write a report.

    Args:
        workspace: local directory or s3://bucket/prefix
        options: the demo corpus's sizes and schedules
        full: real sizes (512 px, thousands of portraits) instead of ``options``
    """
    options = DemoOptions.full() if full else options
    ws = Workspace(workspace)
    out = ws.sub_url("sources/synth")
    progress(f"demo: drawing {options.count} portraits ({options.annotated} annotated) at {options.size} px")
    drawn = synth(out=out, count=options.count, annotated=options.annotated, size=options.size, seed=options.seed)
    built = build(
        workspace=workspace,
        src=ws.sub_url("sources/synth/images"),
        labelme=ws.sub_url("sources/synth/labelme"),
        train_options=TrainOptions(epochs=options.unet_epochs, crop=options.unet_crop),
        gaugan_options=options.gaugan(),
        lineart_options=options.lineart(),
        colorizer_options=ColorizerOptions(size=options.colorizer_size, epochs=options.colorizer_epochs),
        style_image=demo_style_image(ws),
        fast_options=FastStyleOptions(size=options.fast_style_size, steps=options.fast_style_steps),
        size=options.size,
        shard_size=options.shard_size,
        report=False,
    )
    evaluation: dict[str, Any] = {}
    progress("demo: scoring the stages against the synth truth and writing the report")
    if ws.has_array("corpus/masks"):
        evaluation["pseudo-labels vs synth truth"] = synth_truth_miou(ws, ws.sub_url("sources/synth/truth"))
    lineart = synth_truth_lineart(ws, ws.sub_url("sources/synth/lines"))
    if lineart:
        evaluation["line art vs synth truth"] = lineart
    gaugan: dict[str, Any] = {}
    if has_tag(ws, "gaugan"):
        gaugan = eval_gaugan_flow(workspace=workspace)
        gaugan["schedule"] = [
            {"step": h["step"], "semantic_miou": h["semantic_miou"]}
            for h in built["train-gaugan"]["history"]
            if "semantic_miou" in h
        ]
        gaugan["generate"] = generate_flow(
            workspace=workspace,
            masks=ws.sub_url("sources/synth/truth"),
            out=ws.sub_url("reports/generated"),
            seed=options.seed,
            attribute=_demo_attribute(ws),
            strength=3.0,
        )
    rows = stage_rows(built, built.get("seconds", {}), MULTI)
    report = write_report(ws, rows, evaluation, gaugan)
    return {"synth": drawn, "build": built, "report": report, "evaluation": evaluation, "gaugan": gaugan}


def demo_style_image(ws: Workspace) -> str:
    """A procedural style image for the demo (bold colour waves with dark strokes), in the workspace."""
    import numpy as np

    from tasks.imageio import encode_png

    y, x = np.mgrid[0:256, 0:256].astype(np.float32) / 256
    waves = np.sin(12 * x + 6 * np.sin(5 * y)) * np.cos(9 * y - 4 * np.cos(7 * x))
    hue = (waves + 1) / 2
    rgb = np.stack([np.sin(6.28 * (hue + k / 3)) * 0.5 + 0.5 for k in range(3)], axis=-1)
    rgb[np.abs(waves) < 0.08] = 0.05
    return ws.write_file("sources/style.png", encode_png((rgb * 255).astype(np.uint8)))


def _demo_attribute(ws: Workspace) -> str | None:
    """A hair colour with a direction in the latest GauGAN: blonde, else the most common one."""
    from tasks.generate import attributes_for, default_hair, load_gaugan

    value = default_hair(attributes_for(ws, load_gaugan(ws)))
    return f"hair={value}" if value else None


def describe_build(r: dict[str, Any], params: dict[str, Any]) -> str:
    import json
    import sys

    if r.get("report"):
        print(f"report: {r['report']['index']}", file=sys.stderr)
    return json.dumps(r, indent=1, default=str)


def describe_demo(r: dict[str, Any], params: dict[str, Any]) -> str:
    from flows.report import evaluation_lines, gaugan_lines
    from tasks.status import status_lines, workspace_status

    lines = status_lines(workspace_status(Workspace(params["workspace"])))
    for name, ev in r.get("evaluation", {}).items():
        lines += evaluation_lines(name, ev)
    if r.get("gaugan"):
        lines += gaugan_lines(r["gaugan"])
    return "\n".join([*lines, f"report: {r['report']['index']}"])
