"""``build``: the whole chain as one flow of sub-flows; ``demo``: synth + build + a report.

Stages run in chain order and each is a sub-flow with its own shard tasks on the run's
one Dask cluster. Stages added by later work register in ``STAGES``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, Literal, get_args

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, Field

from flows.augment import augment
from flows.gaugan import eval_gaugan_flow, generate_flow, train_gaugan_flow
from flows.ingest import ingest_images
from flows.labelme import ingest_labelme
from flows.lineart import render_lineart, train_lineart_flow
from flows.ops import mangaka_flow
from flows.pseudolabel import pseudolabel
from flows.segment import train_unet_flow
from flows.style import render_style, train_colorizer_flow
from flows.synth import synth
from storage.items import item_table
from storage.workspace import Workspace
from tasks.annotations import LabelmeOptions
from tasks.artline import LineartTrainOptions
from tasks.augment import AugmentOptions
from tasks.colorizer import ColorizerOptions
from tasks.fast_style import FastStyleOptions
from tasks.gaugan import GauganOptions
from tasks.ingest import IngestOptions
from tasks.report import contact_sheet, sheet_columns
from tasks.segment import TrainOptions
from tasks.status import status_lines, workspace_status

Stage = Literal[
    "ingest-labelme",
    "augment",
    "train-unet",
    "ingest-images",
    "pseudolabel",
    "train-gaugan",
    "train-lineart",
    "render-lineart",
    "train-colorizer",
    "render-style",
]
STAGES: tuple[Stage, ...] = get_args(Stage)  # in chain order


class DemoOptions(BaseModel):
    """Sizes of the demo corpus; the defaults finish the chain in minutes on 2 cores."""

    count: int = Field(300, ge=1)
    annotated: int = Field(24, ge=0)
    size: int = Field(256, ge=32)
    seed: int = 0
    shard_size: int = Field(64, ge=1)
    unet_epochs: int = Field(10, ge=1)
    # random 192 px windows of the 256 px annotations: 0.6x the time of whole images, and
    # the small classes come out better (pseudo-label mIoU 0.80 against 0.75; README).
    unet_crop: int | None = Field(192, ge=32)
    gaugan_size: int = Field(128, ge=64)
    gaugan_steps: int = Field(200, ge=1)
    gaugan_vae_steps: int = Field(150, ge=0)
    # Lighter than train-gaugan's defaults so the chain fits 20 minutes on a slow 2-core box:
    # SPADE's hidden width and the discriminator halved, and no perceptual loss (without
    # ImageNet weights its random VGG features cost half of every step and did not raise
    # semantic mIoU: README, "GauGAN").
    gaugan_spade_hidden: int = Field(64, ge=1)
    gaugan_ndf: int = Field(32, ge=1)
    gaugan_lambda_vgg: float = Field(0.0, ge=0)
    gaugan_checkpoint_every: int = Field(50, ge=1)
    lineart_size: int = Field(128, ge=32)
    lineart_epochs: tuple[int, ...] = (4, 3, 4)
    colorizer_size: int = Field(128, ge=32)
    colorizer_epochs: int = Field(6, ge=1)
    fast_style_size: int = Field(128, ge=16)
    fast_style_steps: int = Field(40, ge=1)

    def lineart(self) -> LineartTrainOptions:
        return LineartTrainOptions(size=self.lineart_size, epochs=self.lineart_epochs)

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


@mangaka_flow("build-dataset")
def build(
    workspace: str,
    src: str | None = None,
    labelme: str | None = None,
    stages: list[Stage] = list(STAGES),  # noqa: B006 - Prefect copies parameters
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

    ``src``: new corpus images, if any; ``labelme``: a folder of labelme annotations.
    """
    logger = get_run_logger()
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    ws = Workspace(workspace)
    size = size or ws.config().get("image_size", 512)

    def run(stage: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        results[stage] = fn()
        timings[stage] = round(time.perf_counter() - t0, 2)

    if "ingest-labelme" in stages:
        if labelme is None:
            logger.info("ingest-labelme: no labelme folder given, nothing new to ingest")
        else:
            opts = LabelmeOptions(size=size, classes=tuple(ws.classes))
            run(
                "ingest-labelme",
                lambda: ingest_labelme(workspace=workspace, src=labelme, options=opts, shard_size=shard_size),
            )
    if "augment" in stages:
        if item_table(ws, "annotated").by_id:
            run("augment", lambda: augment(workspace=workspace, options=augment_options or AugmentOptions()))
        else:
            logger.info("augment: no annotated items yet, nothing to augment")
    if "train-unet" in stages:
        if len(item_table(ws, "annotated")) >= 2:
            run("train-unet", lambda: train_unet_flow(workspace=workspace, options=train_options or TrainOptions()))
        else:
            logger.info("train-unet: fewer than 2 annotated items, nothing to train on")
    if "ingest-images" in stages:
        if src is None:
            logger.info("ingest-images: no src given, nothing new to ingest")
        else:
            iopts = IngestOptions(size=size)
            run(
                "ingest-images",
                lambda: ingest_images(workspace=workspace, src=src, options=iopts, shard_size=shard_size),
            )
    if "pseudolabel" in stages:
        if ws.loc.exists("models/unet/tags/latest.json") and len(item_table(ws, "corpus")):
            run("pseudolabel", lambda: pseudolabel(workspace=workspace))
        else:
            logger.info("pseudolabel: needs a trained segmenter and corpus images")
    if "train-gaugan" in stages:
        if len(item_table(ws, "annotated")) or ws.has_array("corpus/masks"):
            gopts = gaugan_options or GauganOptions(size=min(256, size))
            run("train-gaugan", lambda: train_gaugan_flow(workspace=workspace, options=gopts))
        else:
            logger.info("train-gaugan: needs annotations or pseudo-labelled corpus images")
    if "train-lineart" in stages:
        lopts = lineart_options or LineartTrainOptions()
        run("train-lineart", lambda: train_lineart_flow(workspace=workspace, options=lopts))
    if "render-lineart" in stages:
        if len(item_table(ws, "corpus")):
            methods = ["canny", "xdog"] + (["artline"] if ws.loc.exists("models/artline/tags/latest.json") else [])
            run("render-lineart", lambda: {m: render_lineart(workspace=workspace, method=m) for m in methods})
        else:
            logger.info("render-lineart: no corpus images yet")
    if "train-colorizer" in stages:
        if len(item_table(ws, "corpus")):
            copts = colorizer_options or ColorizerOptions(size=min(256, size))
            run("train-colorizer", lambda: train_colorizer_flow(workspace=workspace, options=copts))
        else:
            logger.info("train-colorizer: no corpus images yet")
    if "render-style" in stages:
        if len(item_table(ws, "corpus")):
            run("render-style", lambda: _render_styles(ws, workspace, style_image, fast_options))
        else:
            logger.info("render-style: no corpus images yet")
    rows = stage_rows(results, timings)
    results["seconds"] = timings
    if report:
        results["report"] = write_report(ws, rows)
    return results


def _render_styles(
    ws: Workspace, workspace: str, style_image: str | None, fast_options: FastStyleOptions | None
) -> dict[str, Any]:
    rendered = {"toon": render_style(workspace=workspace, method="npr", name="toon", style="toon")}
    if style_image:
        rendered["fast"] = render_style(
            workspace=workspace,
            method="fast",
            name="fast",
            style_image=style_image,
            fast_options=fast_options or FastStyleOptions(),
        )
    if ws.loc.exists("models/colorizer/tags/latest.json"):
        # the colouriser learns from auto-Canny drawings: colour those (any line art works, less well)
        rendered["colorized"] = render_style(workspace=workspace, method="colorize", name="colorized", lines="canny")
    return rendered


COUNT_KEYS = ("stored", "labelled", "rendered", "made", "augmented", "ingested", "quarantined", "shards")


def stage_rows(results: dict[str, Any], timings: dict[str, float]) -> list[dict[str, Any]]:
    """One row per stage run (per method for multi-method stages): counts, seconds, items/s."""
    rows: list[dict[str, Any]] = []

    def row(stage: str, r: Any, seconds: float | None) -> None:
        out: dict[str, Any] = {"stage": stage, "seconds": seconds}
        if isinstance(r, dict):
            out.update({k: r[k] for k in COUNT_KEYS if isinstance(r.get(k), int)})
            for k in ("miou", "f1", "semantic_miou", "palette_accuracy", "commonest_colour_accuracy", "hint_accuracy"):
                if isinstance(r.get(k), float):
                    out[k] = r[k]
        items = next((out[k] for k in ("stored", "labelled", "rendered", "made", "augmented") if k in out), None)
        if items and seconds:
            out["items_per_second"] = round(items / seconds, 2)
        rows.append(out)

    for stage, r in results.items():
        if stage in ("report", "seconds"):
            continue
        if stage in ("render-lineart", "render-style") and isinstance(r, dict):
            for method, sub in r.items():
                row(f"{stage} {method}", sub, None)
            rows[-len(r)]["seconds"] = timings.get(stage)  # the stage's time, on its first row
        else:
            row(stage, r, timings.get(stage))
    return rows


def run_key() -> str:
    """The report folder of this run: ``<UTC time>-<run id>``, sortable and unique."""
    import datetime as dt

    from prefect.runtime import flow_run

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{str(flow_run.id or 'local')[:8]}"


def write_report(
    ws: Workspace,
    stages: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
    gaugan: dict[str, Any] | None = None,
) -> dict[str, str]:
    """``reports/<run>/index.html`` with contact sheets, metrics, timings and the quarantine.

    Also ``status.json``/``status.txt`` beside it, and the run's Prefect artifacts: a table
    of the stages and a markdown summary with the quality figures and links to the sheets.
    Returns the paths written.
    """
    from tasks.report import html_figure, html_page, html_table

    base = f"reports/{run_key()}"
    status = workspace_status(ws)
    status["runs"] = ws.runs(limit=20)
    if evaluation:
        status["evaluation"] = evaluation
    if gaugan:
        status["gaugan"] = gaugan
    text = "\n".join(status_lines(status)) + "\n"
    for name, ev in (evaluation or {}).items():
        text += "\n" + "\n".join(evaluation_lines(name, ev)) + "\n"
    if gaugan:
        text += "\n" + "\n".join(gaugan_lines(gaugan)) + "\n"
    paths = {
        "status_json": ws.write_file(f"{base}/status.json", json.dumps(status, indent=1, default=str).encode()),
        "status_txt": ws.write_file(f"{base}/status.txt", text.encode()),
    }
    figures: list[str] = []
    for family, caption in (
        ("corpus", "corpus portraits"),
        ("annotated", "annotations"),
        ("augmented", "augmented annotations"),
        ("generated", "portraits generated by GauGAN"),
    ):
        if len(item_table(ws, family)):
            paths[f"{family}_sheet"] = ws.write_file(f"{base}/{family}.png", contact_sheet(ws, family))
            shown = ", ".join(
                c.split("/", 1)[1] + (" (overlay)" if "mask" in c else "") for c in sheet_columns(ws, family)
            )
            figures.append(html_figure(f"{family}.png", f"{caption}, each item left to right: {shown}"))
    if gaugan and gaugan.get("checkpoint"):
        key = f"models/gaugan/{gaugan['checkpoint']}/samples.png"
        if ws.loc.exists(key):
            paths["gaugan_samples"] = ws.write_file(f"{base}/gaugan-samples.png", ws.loc.read_bytes(key))
            figures.append(html_figure("gaugan-samples.png", f"GauGAN samples at {gaugan['checkpoint']}"))
        strip = (gaugan.get("generate") or {}).get("strip")
        if strip and os.path.exists(strip):
            with open(strip, "rb") as f:
                paths["gaugan_attribute_strip"] = ws.write_file(f"{base}/attribute-strip.png", f.read())
            figures.append(html_figure("attribute-strip.png", "latent attribute direction (hair colour)"))
    metrics = quality_rows(status, evaluation, gaugan)
    coverage = [{"array or model": k, **v} for k, v in sorted(status["stages"].items())]
    quarantine = status["quarantine"]
    runs = [{k: r.get(k) for k in ("name", "flow", "state", "start", "seconds", "message")} for r in status["runs"]]
    page = html_page(
        f"mangaka report: {ws.url}",
        [
            ("Quality", html_table(metrics)),
            ("Stages of this run", html_table(stages or [])),
            ("Contact sheets", "\n".join(figures) or "<p>(no items yet)</p>"),
            ("Coverage", html_table(coverage)),
            (f"Quarantine ({len(quarantine)})", html_table(quarantine[:500])),
            ("Recent runs", html_table(runs)),
        ],
    )
    paths["index"] = ws.write_file(f"{base}/index.html", page)
    _artifacts(ws, paths, stages or [], metrics, len(quarantine))
    return paths


def quality_rows(
    status: dict[str, Any], evaluation: dict[str, Any] | None, gaugan: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The quality figures a report leads with: pseudo-label mIoU, line-art F1, GauGAN consistency."""
    rows: list[dict[str, Any]] = []
    for name, ev in (evaluation or {}).items():
        if "miou" in ev:
            rows.append({"metric": f"{name}: mIoU", "value": ev["miou"], "images": ev.get("images")})
        else:
            for method, r in ev.items():
                rows.append({"metric": f"{name}: {method} F1", "value": r["f1"], "images": r.get("images")})
    labels = {
        "miou": "validation mIoU",
        "f1": "held-out line F1",
        "semantic_miou": "semantic mIoU",
        "palette_accuracy": "held-out palette accuracy",
        "commonest_colour_accuracy": "held-out palette accuracy of the commonest colour alone",
        "hint_accuracy": "held-out palette accuracy of the colour hint alone",
    }
    for model, st in sorted(status["stages"].items()):
        for k, label in labels.items():
            if k in st:
                rows.append({"metric": f"{model}: {label}", "value": st[k], "images": None})
    if gaugan and "semantic_miou" in gaugan:
        rows.append(
            {"metric": "GauGAN semantic mIoU (held-out)", "value": gaugan["semantic_miou"], "images": gaugan["images"]}
        )
        rows.append({"metric": "real images, same segmenter", "value": gaugan["real"]["semantic_miou"], "images": None})
    return rows


def _artifacts(
    ws: Workspace, paths: dict[str, str], stages: list[dict[str, Any]], metrics: list[dict[str, Any]], quarantined: int
) -> None:
    def link(path: str) -> str:
        return path if "://" in path else f"file://{path}"

    if stages:
        create_table_artifact(
            key="build-stages",
            table=[{**r, "quarantine_total": quarantined} for r in stages],
            description=f"stages of this run on {ws.url}: counts, seconds, throughput",
        )
    lines = [f"# mangaka run on `{ws.url}`", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {m['metric']} | {m['value']:.4f} |" for m in metrics]
    lines += ["", f"Quarantined items: {quarantined}", "", f"- [report]({link(paths['index'])})"]
    lines += [f"- [{k.replace('_', ' ')}]({link(v)})" for k, v in paths.items() if v.endswith(".png")]
    create_markdown_artifact(key="mangaka-report", markdown="\n".join(lines), description=f"report of {ws.url}")


@mangaka_flow("demo")
def demo(workspace: str, options: DemoOptions = DemoOptions()) -> dict[str, Any]:  # noqa: B008
    """Draw a synthetic corpus into the workspace, build every stage on it, write a report."""
    ws = Workspace(workspace)
    out = ws.sub_url("sources/synth")
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
    if ws.has_array("corpus/masks"):
        evaluation["pseudo-labels vs synth truth"] = synth_truth_miou(ws, ws.sub_url("sources/synth/truth"))
    lineart = synth_truth_lineart(ws, ws.sub_url("sources/synth/lines"))
    if lineart:
        evaluation["line art vs synth truth"] = lineart
    gaugan: dict[str, Any] = {}
    if ws.loc.exists("models/gaugan/tags/latest.json"):
        gaugan = eval_gaugan_flow(workspace=workspace)
        gaugan["schedule"] = [
            {"step": h["step"], "semantic_miou": h["semantic_miou"]}
            for h in built["train-gaugan"]["history"]
            if "semantic_miou" in h
        ]
        if not ws.loc.remote:
            attribute = _demo_attribute(ws)
            gaugan["generate"] = generate_flow(
                workspace=workspace,
                masks=ws.sub_url("sources/synth/truth"),
                out=ws.loc.path("reports/generated"),
                seed=options.seed,
                attribute=attribute,
                strength=3.0,
            )
    rows = stage_rows(built, built.get("seconds", {}))
    report = write_report(ws, rows, evaluation, gaugan)
    return {"synth": drawn, "build": built, "report": report, "evaluation": evaluation, "gaugan": gaugan}


def demo_style_image(ws: Workspace) -> str | None:
    """A procedural style image for the demo (bold colour waves with dark strokes), in the workspace."""
    import numpy as np

    from tasks.imageio import encode_png

    if ws.loc.remote:
        return None
    y, x = np.mgrid[0:256, 0:256].astype(np.float32) / 256
    waves = np.sin(12 * x + 6 * np.sin(5 * y)) * np.cos(9 * y - 4 * np.cos(7 * x))
    hue = (waves + 1) / 2
    rgb = np.stack([np.sin(6.28 * (hue + k / 3)) * 0.5 + 0.5 for k in range(3)], axis=-1)
    rgb[np.abs(waves) < 0.08] = 0.05
    return ws.write_file("sources/style.png", encode_png((rgb * 255).astype(np.uint8)))


def _demo_attribute(ws: Workspace) -> str | None:
    """A hair colour with a direction in the latest GauGAN: blonde, else the most common one."""
    from tasks.gaugan import load_gaugan
    from tasks.generate import attributes_for

    attrs = attributes_for(ws, load_gaugan(ws))
    if "blonde" in attrs.directions:
        return "hair=blonde"
    ranked = sorted(attrs.directions, key=lambda k: -attrs.counts[k])
    return f"hair={ranked[0]}" if ranked else None


def evaluation_lines(name: str, ev: dict[str, Any]) -> list[str]:
    """One evaluation as text: an mIoU with its classes, or line-art F1 per method."""
    if "miou" in ev:
        per_class = ", ".join(f"{c} {v:.3f}" for c, v in ev.get("iou", {}).items())
        return [f"{name}: mIoU {ev['miou']:.4f} on {ev['images']} images ({per_class})"]
    lines = [f"{name} (boundary F1 at 2 px):"]
    for method, r in ev.items():
        lines.append(
            f"  {method:<8} F1 {r['f1']:.4f} (precision {r['precision']:.4f}, recall {r['recall']:.4f}) "
            f"on {r['images']} images"
        )
    return lines


def gaugan_lines(gaugan: dict[str, Any]) -> list[str]:
    """GauGAN's evaluation as text: the schedule's semantic consistency, then the final figures."""
    lines = []
    if gaugan.get("schedule"):
        series = ", ".join(f"step {h['step']}: {h['semantic_miou']:.3f}" for h in gaugan["schedule"])
        lines.append(f"GauGAN semantic mIoU over training: {series}")
    real = gaugan["real"]
    lines.append(
        f"GauGAN {gaugan['checkpoint']}: semantic mIoU {gaugan['semantic_miou']:.4f}, pixel accuracy "
        f"{gaugan['pixel_accuracy']:.4f} on {gaugan['images']} held-out masks "
        f"(real images: {real['semantic_miou']:.4f} / {real['pixel_accuracy']:.4f})"
    )
    return lines


def synth_truth_lineart(ws: Workspace, lines_url: str) -> dict[str, Any]:
    """Boundary F1 (2 px) of every rendered line-art method against synth's truth lines."""
    import numpy as np

    from storage.location import Location
    from tasks.imageio import open_image
    from tasks.lineart import METHODS, array_name, lineart_against

    methods = [m for m in METHODS if ws.has_array(array_name(m))]
    if not methods:
        return {}
    loc = Location(lines_url)
    truth = {}
    for item in item_table(ws, "corpus").by_id:
        if loc.exists(f"{item}.png"):
            truth[item] = np.asarray(open_image(loc.read_bytes(f"{item}.png")).convert("L"))
    return {m: lineart_against(ws, m, truth) for m in methods}


def synth_truth_miou(ws: Workspace, truth_url: str) -> dict[str, Any]:
    """Pseudo-label mIoU against the truth masks ``synth`` drew (for unlabelled corpus items)."""
    import numpy as np

    from storage.location import Location
    from tasks.imageio import open_image
    from tasks.pseudolabel import miou_against

    loc = Location(truth_url)
    truth = {}
    for item in item_table(ws, "corpus").by_id:
        if loc.exists(f"{item}.png"):
            truth[item] = np.asarray(open_image(loc.read_bytes(f"{item}.png")))
    return miou_against(ws, truth, ws.classes)
