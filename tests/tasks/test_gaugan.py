"""train-gaugan, generate and eval on a tiny workspace: both phases, exact resume, attributes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from storage.checkpoints import list_checkpoints, load_checkpoint
from storage.items import item_table
from storage.workspace import Workspace, WorkspaceError
from tasks.gaugan import GauganOptions, collect_pairs, evaluate, style_evaluation, train_gaugan
from tasks.generate import attribute_evaluation, attributes_for, generate, hair_label, load_gaugan
from tasks.segment import TrainOptions, train_unet
from tasks.synth import draw_portrait
from tests.tasks.test_segment import tiny_workspace

OPTS = GauganOptions(
    size=64,
    steps=4,
    vae_steps=2,
    batch_size=2,
    ngf=4,
    ndf=8,
    nef=8,
    z_dim=16,
    spade_hidden=8,
    checkpoint_every=2,
    eval_count=4,
)


def _weights(ws: Workspace, ref: str = "latest") -> dict[str, torch.Tensor]:
    return load(load_checkpoint(ws, "gaugan", ref).weights)


def test_two_phases_write_checkpoints_samples_and_metrics(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path, n=8)
    train_unet(ws, TrainOptions(epochs=1, batch_size=4, val_fraction=0.3))
    r = train_gaugan(ws, OPTS)
    run = r.run[:8]
    assert list_checkpoints(ws, "gaugan") == [f"{run}-step-000002", f"{run}-step-000004", f"{run}-vae-000002"]
    assert [h["phase"] for h in r.history] == ["vae", "gan", "gan"]
    last = load_checkpoint(ws, "gaugan")
    assert last.name == f"{run}-step-000004" and last.config["phase"] == "gan"
    assert last.config["vgg"].startswith("random-init"), "the VGG fallback is recorded in the checkpoint"
    assert 0 <= last.metrics["semantic_miou"] <= 1 and last.metrics["eval_images"] >= 1
    assert {"g_gan", "g_feat", "g_vgg", "g_kld", "d_real", "d_fake"} <= set(last.metrics)
    assert ws.loc.exists(f"models/gaugan/{last.name}/samples.png")
    assert not ws.loc.exists(f"models/gaugan/{run}-step-000002/optimizer.safetensors"), "only the last is kept"
    assert {k.split(".")[0] for k in _weights(ws)} == {"E", "dec", "G", "D"}
    again = train_gaugan(ws, OPTS)
    assert again.already_done and not again.history and len(list_checkpoints(ws, "gaugan")) == 3


class Killed(Exception):
    pass


def _kill_at(phase: str, step: int):  # noqa: ANN202
    def on_step(p: str, done: int, total: int) -> None:
        if (p, done) == (phase, step):
            raise Killed

    return on_step


REGION = {"style_injection": "region", "code_dim": 4, "ema": 0.9, "lambda_rec": 10.0, "lambda_region": 10.0}


@pytest.mark.parametrize(
    ("where", "variant"), [(("vae", 3), {}), (("gan", 3), {}), (("vae", 3), REGION), (("gan", 3), REGION)]
)
def test_an_interrupted_run_resumes_bit_exactly(tmp_path: Path, where: tuple[str, int], variant: dict) -> None:
    opts = OPTS.model_copy(update={"vae_steps": 4, "lambda_vgg": 0.0, "eval_count": 0, **variant})
    whole = tiny_workspace(tmp_path / "whole", n=8)
    train_gaugan(whole, opts)
    cut = tiny_workspace(tmp_path / "cut", n=8)
    with pytest.raises(Killed):  # killed one step after the checkpoint at step 2 of the phase
        train_gaugan(cut, opts, on_step=_kill_at(*where))
    second = train_gaugan(cut, opts)
    assert second.resumed_at == {"phase": where[0], "step": 2}
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    if variant:
        assert any(k.startswith("G_ema.") for k in a) and "G_ema.latent_factor" in a
    more = train_gaugan(cut, opts.model_copy(update={"steps": 6}))
    assert more.resumed_at == {"phase": "gan", "step": 4} and load_checkpoint(cut, "gaugan").config["step"] == 6


@pytest.mark.parametrize("styles", ["spade", "region"])
def test_generate_eval_and_attribute_directions(tmp_path: Path, styles: str) -> None:
    opts = OPTS.model_copy(update={"style_injection": styles, "code_dim": 4})
    ws = tiny_workspace(tmp_path, n=8)
    with pytest.raises(WorkspaceError, match="train-unet"):
        from flows.gaugan import eval_gaugan_flow

        eval_gaugan_flow.fn(workspace=str(tmp_path), device="cpu")
    train_unet(ws, TrainOptions(epochs=1, batch_size=4, val_fraction=0.3))
    train_gaugan(ws, opts)
    model = load_gaugan(ws)
    assert model.generator.z_dim == (len(ws.classes) * 4 if styles == "region" else OPTS.z_dim)
    pairs = collect_pairs(ws, opts)
    ev = evaluate(ws, model.generator, pairs, 0, model.device, with_real=True)
    assert 0 <= ev["semantic_miou"] <= 1 and 0 <= ev["real"]["pixel_accuracy"] <= 1
    style = style_evaluation(model.generator, model.encoder, pairs, 0, model.device, ws.classes)
    assert style is not None and style["style_images"] == len(pairs.held_out) >= 2
    assert all(v is None or v >= 0 for v in style["style_fidelity"].values())
    metrics = load_checkpoint(ws, "gaugan").metrics
    assert {"style_fidelity_hair", "latent_spread", "real_spread"} <= set(metrics), "kept in the checkpoint"
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(3):
        Image.fromarray(draw_portrait(9, i, 48).mask).save(masks / f"m{i}.png")
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(masks / "rgb.png")  # not a class-id mask
    out = tmp_path / "out"
    r = generate(ws, model, str(masks), str(out), seed=3)
    assert r["generated"] == 3 and r["refused"] == 1
    img = np.asarray(Image.open(out / "m0.png"))
    assert img.shape == (64, 64, 3)
    again = generate(ws, model, str(masks), str(tmp_path / "out2"), seed=3)
    assert again["generated"] == 3
    assert np.array_equal(img, np.asarray(Image.open(tmp_path / "out2" / "m0.png"))), "same seed, same image"
    other = generate(ws, model, str(masks), str(tmp_path / "out3"), seed=4)
    assert other["generated"] == 3
    assert not np.array_equal(img, np.asarray(Image.open(tmp_path / "out3" / "m0.png")))
    table = item_table(ws, "generated")
    assert sorted(table.by_id) == ["m0", "m1", "m2"], "a newer image of an id replaces the older"
    stored = ws.read_items("generated/images", [table.by_id["m0"]["slot"]])[0]
    # generated/images is stored as JPEG (the workspace's codec): close to the newest PNG, not the older one
    err = np.abs(stored.astype(int) - np.asarray(Image.open(tmp_path / "out3" / "m0.png"))).mean()
    assert err < 5 and err < np.abs(stored.astype(int) - img).mean()
    assert any(e["stage"] == "generate" and "rgb.png" in e["source"] for e in ws.quarantine_entries())
    styled = generate(ws, model, str(masks), str(tmp_path / "styled"), style_image=str(out / "m1.png"))
    assert styled["style"] == "image:m1.png"
    attrs = attributes_for(ws, model)
    assert sum(attrs.counts.values()) >= 1 and len(attrs.labels) == len(attrs.latents)
    assert ws.loc.exists(f"models/gaugan/{model.checkpoint}/latents-pca.png")
    effect = attribute_evaluation(ws, model, pairs.read(pairs.held_out[:2])[1])
    if attrs.directions:
        assert effect is not None and len(effect["distance_to_target"]) == 6 and effect["masks"] == 2
        colour = sorted(attrs.directions)[0]
        r = generate(ws, model, str(masks), str(tmp_path / "attr"), seed=3, attribute=("hair", colour), strength=2)
        assert r["strip"] and Path(r["strip"]).is_file()
    with pytest.raises(WorkspaceError, match="hair=nonsense"):
        generate(ws, model, str(masks), str(tmp_path / "bad"), attribute=("hair", "nonsense"))


def test_hair_labels_follow_the_hair_pixels() -> None:
    mask = np.zeros((16, 16), np.uint8)
    mask[:10] = 5
    image = np.zeros((16, 16, 3), np.uint8)
    for colour, rgb in {
        "black": (20, 20, 25),
        "blonde": (240, 215, 120),
        "brown": (110, 60, 30),
        "blue": (40, 80, 220),
        "pink": (240, 130, 200),
        "white": (235, 235, 240),
        "red": (200, 20, 30),
        "green": (40, 160, 60),
        "purple": (130, 50, 190),
    }.items():
        image[:10] = rgb
        assert hair_label(image, mask, 5, min_pixels=16) == colour
    assert hair_label(image, np.zeros_like(mask), 5) is None


def test_options_keep_runs_apart_and_steps_out_of_the_identity() -> None:
    assert OPTS.run_key() == OPTS.model_copy(update={"steps": 99, "eval_count": 0}).run_key()
    assert OPTS.run_key() != OPTS.model_copy(update={"ngf": 8}).run_key()
