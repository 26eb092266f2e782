"""The style flows: ``stylize`` (one image), ``train-style``, ``train-colorizer``, ``render-style``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact

from flows.ops import mangaka_flow, shard_task
from flows.shards import corpus_table, describe_rendered, render_corpus
from flows.training import monitored
from storage.checkpoints import has_tag, load_checkpoint
from storage.workspace import Workspace, WorkspaceError
from tasks.colorizer import MODEL_DIR as COLORIZER_DIR
from tasks.colorizer import ColorizerOptions, train_colorizer
from tasks.fast_style import FastStyleOptions, has_model, style_key, train_fast_style
from tasks.neural_style import StyleOptions
from tasks.npr import NPR_STYLES
from tasks.render_style import (
    METHODS,
    STYLE_METHODS,
    StyleShardSpec,
    array_name,
    prepare_array,
    store_style_image,
    style_shard,
)
from tasks.render_style import producer_version as version_of

if TYPE_CHECKING:
    MethodName = str
    NprStyle = str
else:  # the registries' names: the UI form's choices, checked by Prefect
    MethodName, NprStyle = Literal[METHODS], Literal[NPR_STYLES]


def _read_image(url: str) -> tuple[bytes, Any]:
    """The bytes and RGB pixels of an image file, local or s3://."""
    import numpy as np

    from storage.sources import read_file
    from tasks.imageio import BadImage, load_rgb

    data = read_file(url)
    try:
        return data, np.asarray(load_rgb(data))
    except BadImage as exc:
        raise WorkspaceError(f"{url}: {exc}") from None


@mangaka_flow("stylize", "{content} in the style of {style}", cluster=False)
def stylize_flow(content: str, style: str, out: str, options: StyleOptions = StyleOptions()) -> dict[str, Any]:  # noqa: B008
    """Gatys et al. on one image; intermediate images every ``save_epochs`` beside ``out``.

    Args:
        content: the image to render (local or s3://)
        style: the image whose style to copy (local or s3://)
        out: the PNG to write (local or s3://); OUT.json and OUT-epoch-NNNN.png beside it
        options: the MXNet neural-art example's options
    """
    import json

    import numpy as np

    from storage.location import split_url, url_name
    from storage.sources import read_file
    from tasks.imageio import BadImage, encode_png, load_rgb
    from tasks.neural_style import png_with_metadata, stylize

    logger = get_run_logger()
    rgb = []
    for url in (content, style):
        try:
            rgb.append(np.asarray(load_rgb(read_file(url))))
        except BadImage as exc:
            raise WorkspaceError(f"{url}: {exc}") from None
    folder, name = split_url(out)
    stem, _ = os.path.splitext(name)

    def on_save(epoch: int, image: Any) -> None:
        folder.write_bytes(f"{stem}-epoch-{epoch:04d}.png", encode_png(image))

    image, meta = stylize(rgb[0], rgb[1], options, on_save)
    meta.update(content=url_name(content), style=url_name(style))
    folder.write_bytes(name, png_with_metadata(image, meta))
    folder.write_bytes(f"{stem}.json", json.dumps(meta, indent=1).encode())
    if meta["vgg"].startswith("random"):
        logger.warning(
            "stylize used fixed-seed random VGG19 features (no --vgg-weights): recorded in %s",
            folder.url_of(f"{stem}.json"),
        )
    return meta


@mangaka_flow("train-style", cluster=False)
def train_style_flow(
    workspace: str,
    style_image: str,
    options: FastStyleOptions = FastStyleOptions(),  # noqa: B008
) -> dict[str, Any]:
    """Train the fast (feed-forward) style model for one style image on the corpus.

    Args:
        workspace: local directory or s3://bucket/prefix
        style_image: the style image (local or s3://); its model is models/fast-style/<digest>
        options: the transformer and its training
    """
    ws = Workspace(workspace)
    data, rgb = _read_image(style_image)
    with monitored("train-style", f"fast style of {style_image} on {ws.url}", str) as mon:
        r = train_fast_style(ws, rgb, data, options, mon.on_step)
    create_table_artifact(key="train-style", table=r["history"], description=f"fast style {r['style']} on {ws.url}")
    return r


@mangaka_flow("train-colorizer", cluster=False)
def train_colorizer_flow(workspace: str, options: ColorizerOptions = ColorizerOptions()) -> dict[str, Any]:  # noqa: B008
    """Train the line-drawing colouriser; held-out palette accuracy per epoch."""
    ws = Workspace(workspace)

    def line(m: dict[str, Any]) -> str:
        return f"epoch {m['epoch']}: loss {m['loss']}, held-out palette accuracy {m['palette_accuracy']}"

    with monitored("train-colorizer", f"train-colorizer on {ws.url}", line) as mon:
        return train_colorizer(ws, options, mon.on_epoch)


style_shard_task = shard_task("style-shard")(style_shard)


@mangaka_flow("render-style", "{method} as {name}")
def render_style(
    workspace: str,
    method: MethodName,
    name: str,
    style: NprStyle = "toon",
    style_image: str | None = None,
    lines: str = "canny",
    fast_options: FastStyleOptions = FastStyleOptions(),  # noqa: B008
    gatys_options: StyleOptions = StyleOptions(max_num_epochs=100, save_epochs=0),  # noqa: B008
    shards: str | None = None,
    force: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Fill ``corpus/styled/<name>`` for every corpus shard not yet rendered with these settings.

    Args:
        workspace: local directory or s3://bucket/prefix
        method: npr (training-free), fast (a transformer per style image), gatys (per image), colorize
        name: the array: corpus/styled/NAME
        style: npr: the style
        style_image: fast and gatys: the style image; colorize: a portrait to take colours from
        lines: colorize: the line art to colour (a rendered corpus/lineart method, else auto-Canny)
        fast_options: fast: the transformer's training, if it must train first
        gatys_options: gatys: the optimisation per image
        shards: A:B, a range of shards (backfills)
        force: render again even shards done with these settings
        device: auto, cpu or cuda
    """
    ws = Workspace(workspace)
    table = corpus_table(ws)
    params, digest = _style_params(ws, workspace, method, style, style_image, lines, fast_options, gatys_options)
    version = version_of(method, params, digest)
    prepare_array(ws, name, method)
    return render_corpus(
        ws,
        table,
        stage="render-style",
        array=array_name(name),
        version=version,
        task=style_shard_task,
        make_spec=lambda s, slots: StyleShardSpec(ws.url, s, method, name, version, slots, params, device),
        shards=shards,
        force=force,
        gpu=STYLE_METHODS[method].gpu,
        head={"name": name, "method": method, "version": version},
        label=f"style-{name}",
        artifact=f"render-style-{name}",
    )


def _style_params(
    ws: Workspace,
    workspace: str,
    method: str,
    style: str,
    style_image: str | None,
    lines: str,
    fast_options: FastStyleOptions,
    gatys_options: StyleOptions,
) -> tuple[dict[str, Any], str]:
    """A method's shard parameters and the digest of the model it uses (both in the producer version)."""
    if method == "npr":
        return {"style": style}, ""
    if method == "colorize":
        if not has_tag(ws, COLORIZER_DIR):
            raise WorkspaceError(f"{ws.url} has no colouriser: run train-colorizer first")
        params: dict[str, Any] = {"lines": lines}
        if style_image:  # colour every drawing like this portrait (the colour hint)
            params["hint_image"] = _store(ws, style_image)
        return params, load_checkpoint(ws, COLORIZER_DIR).digest
    if not style_image:
        raise WorkspaceError(f"--method {method} needs --style-image IMG")
    if method == "gatys":
        return {"style_image": _store(ws, style_image), "options": gatys_options.model_dump(exclude={"device"})}, ""
    key = style_key(_read_image(style_image)[0])
    if not has_model(ws, key):
        get_run_logger().info("no fast-style model for %s in the workspace: training one first", style_image)
        train_style_flow(workspace=workspace, style_image=style_image, options=fast_options)
    return {"style_key": key}, load_checkpoint(ws, f"fast-style/{key}").digest


def _store(ws: Workspace, url: str) -> str:
    from storage.location import url_name

    return store_style_image(ws, _read_image(url)[0], os.path.splitext(url_name(url))[1] or ".png")


def describe_stylize_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    text = (
        f"stylized {params['content']} ({r['size'][1]}x{r['size'][0]}) in {r['epochs']} epochs, {r['seconds']} s "
        f"(stopped by {r['stopped']}); wrote {params['out']}"
    )
    if r["vgg"].startswith("random"):
        text += "\nnote: no --vgg-weights given: fixed-seed random VGG19 features were used (recorded in the metadata)"
    return text


def describe_train_style_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    return f"trained fast style {r['style']} in {r['seconds']} s; checkpoint {r['checkpoint']} in models/fast-style"


def describe_train_colorizer_flow(r: dict[str, Any], params: dict[str, Any]) -> str:
    o = params["options"]
    hint = f"; the {o.hint_size}x{o.hint_size} colour hint alone: {r['hint_accuracy']:.4f}" if o.hint_size else ""
    return (
        f"trained the colouriser ({r['parameters']:,} parameters, {o.num_values**3} colours): held-out palette "
        f"accuracy {r['palette_accuracy']:.4f} on {r['held_out_images']} images (every pixel in the commonest "
        f"colour: {r['commonest_colour_accuracy']:.4f}{hint}); checkpoint {r['checkpoint']}"
    )


def describe_render_style(r: dict[str, Any], params: dict[str, Any]) -> str:
    return describe_rendered(r, array_name(r["name"]))
