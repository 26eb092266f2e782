"""The style flows: ``stylize`` (one image), ``train-style``, ``train-colorizer``, ``render-style``."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from flows.ops import mangaka_flow, shard_task
from flows.runtime import gpu_workers
from flows.shards import corpus_table, live_slots, pending_shards, run_shards
from storage.workspace import Workspace, WorkspaceError
from tasks.colorizer import MODEL_DIR as COLORIZER_DIR
from tasks.colorizer import ColorizerOptions, train_colorizer
from tasks.fast_style import FastStyleOptions, has_model, style_key, train_fast_style
from tasks.ingest import ShardResult
from tasks.neural_style import StyleOptions
from tasks.npr import NPR_STYLES
from tasks.render_style import METHODS, StyleShardSpec, array_name, prepare_array, store_style_image, style_shard
from tasks.render_style import style_version as version_of


def _read_image(path: str) -> tuple[bytes, Any]:
    import numpy as np

    from tasks.imageio import BadImage, load_rgb

    with open(path, "rb") as f:
        data = f.read()
    try:
        return data, np.asarray(load_rgb(data))
    except BadImage as exc:
        raise WorkspaceError(f"{path}: {exc}") from None


@mangaka_flow("stylize", "{content} in the style of {style}")
def stylize_flow(content: str, style: str, out: str, options: StyleOptions = StyleOptions()) -> dict[str, Any]:  # noqa: B008
    """Gatys et al. on one image; intermediate images every ``save_epochs`` beside ``out``."""
    from tasks.neural_style import png_with_metadata, stylize

    logger = get_run_logger()
    _, content_rgb = _read_image(content)
    _, style_rgb = _read_image(style)
    stem, _ = os.path.splitext(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    def on_save(epoch: int, image: Any) -> None:
        from tasks.imageio import encode_png

        with open(f"{stem}-epoch-{epoch:04d}.png", "wb") as f:
            f.write(encode_png(image))

    image, meta = stylize(content_rgb, style_rgb, options, on_save)
    meta.update(content=os.path.basename(content), style=os.path.basename(style))
    with open(out, "wb") as f:
        f.write(png_with_metadata(image, meta))
    with open(f"{stem}.json", "w", encoding="utf-8") as f:
        import json

        json.dump(meta, f, indent=1)
    if meta["vgg"].startswith("random"):
        logger.warning("stylize used fixed-seed random VGG19 features (no --vgg-weights): recorded in %s.json", stem)
    return meta


@mangaka_flow("train-style")
def train_style_flow(
    workspace: str, style_image: str, options: FastStyleOptions = FastStyleOptions()
) -> dict[str, Any]:  # noqa: B008
    """Train the fast (feed-forward) style model for one style image on the corpus."""
    ws = Workspace(workspace)
    data, rgb = _read_image(style_image)
    r = train_fast_style(ws, rgb, data, options)
    create_table_artifact(key="train-style", table=r["history"], description=f"fast style {r['style']} on {ws.url}")
    return r


@mangaka_flow("train-colorizer")
def train_colorizer_flow(workspace: str, options: ColorizerOptions = ColorizerOptions()) -> dict[str, Any]:  # noqa: B008
    """Train the line-drawing colouriser; held-out palette accuracy per epoch."""
    ws = Workspace(workspace)
    rows: list[dict[str, Any]] = []

    def on_epoch(m: dict[str, Any]) -> None:
        rows.append(m)
        create_table_artifact(key="train-colorizer", table=rows, description=f"train-colorizer on {ws.url}")

    return train_colorizer(ws, options, on_epoch)


@shard_task("style-shard")
def style_shard_task(spec: StyleShardSpec) -> ShardResult:
    return style_shard(spec)


@mangaka_flow("render-style", "{method} as {name}")
def render_style(
    workspace: str,
    method: Literal[METHODS],  # type: ignore[valid-type] - the tuple's values, checked by Prefect
    name: str,
    style: Literal[NPR_STYLES] = "toon",  # type: ignore[valid-type]
    style_image: str | None = None,
    lines: str = "canny",
    fast_options: FastStyleOptions = FastStyleOptions(),  # noqa: B008
    gatys_options: StyleOptions = StyleOptions(max_num_epochs=100, save_epochs=0),  # noqa: B008
    shards: str | None = None,
    force: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Fill ``corpus/styled/<name>`` for every corpus shard not yet rendered with these settings."""
    from storage.checkpoints import load_checkpoint

    logger = get_run_logger()
    ws = Workspace(workspace)
    table = corpus_table(ws)
    params: dict[str, Any]
    digest = ""
    if method == "npr":
        params = {"style": style}
    elif method in ("fast", "gatys"):
        if not style_image:
            raise WorkspaceError(f"--method {method} needs --style-image IMG")
        data, _ = _read_image(style_image)
        key = style_key(data)
        if method == "fast":
            if not has_model(ws, key):
                logger.info("no fast-style model for %s in the workspace: training one first", style_image)
                train_style_flow(workspace=workspace, style_image=style_image, options=fast_options)
            digest = load_checkpoint(ws, f"fast-style/{key}").digest
            params = {"style_key": key}
        else:
            params = {"style_image": store_style_image(ws, data, os.path.splitext(style_image)[1] or ".png")}
            params["options"] = gatys_options.model_dump(exclude={"device"})
    else:
        if not ws.loc.exists(f"models/{COLORIZER_DIR}/tags/latest.json"):
            raise WorkspaceError(f"{ws.url} has no colouriser: run train-colorizer first")
        digest = load_checkpoint(ws, COLORIZER_DIR).digest
        params = {"lines": lines}
        if style_image:  # colour every drawing like this portrait (the colour hint)
            data, _ = _read_image(style_image)
            params["hint_image"] = store_style_image(ws, data, os.path.splitext(style_image)[1] or ".png")
    version = version_of(method, params, digest)
    array = array_name(name)
    prepare_array(ws, name)
    todo = pending_shards(ws, table.length, live_slots(table), array, version, shards, force)
    specs = [StyleShardSpec(ws.url, s, method, name, version, slots, params, device) for s, slots in todo]
    logger.info("render-style %s (%s, version %s): %d shard task(s)", name, method, version, len(specs))
    resources = {"GPU": 1} if method != "npr" and gpu_workers() else None
    results: list[ShardResult] = run_shards(style_shard_task, specs, f"style-{name}", resources)
    summary = {
        "name": name,
        "method": method,
        "version": version,
        "rendered": sum(r.ok for r in results),
        "shards": len(specs),
        "corpus_items": len(table),
    }
    create_table_artifact(
        key="render-style-" + re.sub(r"[^a-z0-9-]+", "-", name.lower()),
        table=[{"what": k, "value": v} for k, v in summary.items()],
        description=f"render-style {name} of {ws.url}",
    )
    return summary
