"""train-unet on a tiny workspace: checkpoints, metrics, idempotence and exact resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load

from storage.checkpoints import list_checkpoints, load_checkpoint
from storage.workspace import Workspace, image_spec, mask_spec
from tasks.segment import TrainOptions, confusion, iou_from_confusion, load_segmenter, train_unet
from tasks.synth import draw_portrait


def tiny_workspace(root: Path, n: int = 6, size: int = 64) -> Workspace:
    """Annotated items written straight into the arrays with their ingestion markers."""
    ws = Workspace(str(root))
    ws.ensure_config(shard_size=8, image_size=size)
    from storage.items import Journal

    Journal(ws, "annotated").add("v", {}, [{"fingerprint": str(i)} for i in range(n)])  # planned first, as a run does
    ws.require_array("annotated/images", image_spec(size), n)
    ws.require_array("annotated/masks", mask_spec(size), n)
    portraits = [draw_portrait(7, i, size) for i in range(n)]
    ws.write_shard("annotated/images", 0, np.stack([p.image for p in portraits]))
    ws.write_shard("annotated/masks", 0, np.stack([p.mask for p in portraits]))
    entries = [
        {"slot": i, "id": f"p{i}", "source": f"p{i}.json", "fp": str(i), "sha256": str(i), "status": "ok"}
        for i in range(n)
    ]
    ws.write_marker("annotated/images", 0, "v", entries=entries)
    return ws


OPTS = TrainOptions(epochs=3, batch_size=4, val_fraction=0.34, lr=5e-3)


class Stop(Exception):
    pass


def stopped_after_one_epoch_then_resumed(ws: Workspace, opts: TrainOptions) -> dict:
    """Train, interrupt after the first epoch's checkpoint, then run the same training again."""

    def stop_after_first(m: dict) -> None:
        if m["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_unet(ws, opts, on_epoch=stop_after_first)
    return train_unet(ws, opts)


def test_training_writes_checkpoints_metrics_and_is_idempotent(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path)
    r = train_unet(ws, OPTS)
    assert r["epochs"] == 3 and r["val_images"] >= 1 and len(r["history"]) == 3
    run = r["run"][:8]
    assert list_checkpoints(ws, "unet") == [f"{run}-epoch-{i:04d}" for i in (1, 2, 3)]
    ckpt = load_checkpoint(ws, "unet")
    assert ckpt.name == f"{run}-epoch-0003" and 0 <= ckpt.metrics["miou"] <= 1 and "iou" in ckpt.metrics
    assert ckpt.config["classes"][0] == "background" and ckpt.config["size"] == 64
    assert ws.loc.exists(f"models/unet/{run}-epoch-0003/validation.png")
    assert load_checkpoint(ws, "unet", "best").metrics["miou"] == pytest.approx(r["best_miou"])
    again = train_unet(ws, OPTS)
    assert again["already_done"] and len(list_checkpoints(ws, "unet")) == 3
    model, cfg, digest = load_segmenter(ws)
    assert cfg["num_classes"] == 7 and len(digest) == 16
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7, 64, 64)


def test_an_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    whole = tiny_workspace(tmp_path / "whole")
    train_unet(whole, OPTS)
    cut = tiny_workspace(tmp_path / "cut")
    assert stopped_after_one_epoch_then_resumed(cut, OPTS)["resumed_at"] == 1
    a = load(load_checkpoint(whole, "unet").weights)
    b = load(load_checkpoint(cut, "unet").weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_iou_metrics() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    m = iou_from_confusion(confusion(pred, target, 3), ["background", "skin", "face"])
    assert m["iou"] == {"background": 0.5, "skin": pytest.approx(0.6667, abs=1e-4), "face": 1.0}
    assert m["pixel_accuracy"] == pytest.approx(5 / 6, abs=1e-4)


def test_training_on_random_crops_resumes_exactly_and_is_its_own_run(tmp_path: Path) -> None:
    cropped = OPTS.model_copy(update={"crop": 32})
    whole = tiny_workspace(tmp_path / "whole")
    full = train_unet(whole, cropped)
    assert full["epochs"] == 3 and load_checkpoint(whole, "unet").config["size"] == 64  # crops at full scale
    assert full["run"] != train_unet(tiny_workspace(tmp_path / "plain"), OPTS)["run"]
    cut = tiny_workspace(tmp_path / "cut")
    assert stopped_after_one_epoch_then_resumed(cut, cropped)["resumed_at"] == 1  # the same windows again
    a = load(load_checkpoint(whole, "unet").weights)
    b = load(load_checkpoint(cut, "unet").weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from storage.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="multiple of 32"):
        train_unet(tiny_workspace(tmp_path / "bad"), OPTS.model_copy(update={"crop": 40}))


class Crash(BaseException):
    """The process dies here: nothing after this write happens (BaseException: no handler runs)."""


def test_killed_at_every_write_point_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    """Enumerate train-unet's writes from the storage layer, stop the run at each in turn,
    resume, and compare weights, optimiser state and tags with an uninterrupted run."""
    from storage import writepoints

    opts = OPTS.model_copy(update={"epochs": 2})
    whole = tiny_workspace(tmp_path / "whole")
    points: list[tuple[str, str]] = []
    writepoints.HOOKS.append(lambda op, key: points.append((op, key)) if key.startswith("models/") else None)
    try:
        train_unet(whole, opts)
    finally:
        writepoints.HOOKS.clear()
    assert any(k.endswith("train-state.json") for _, k in points) and any("/tags/" in k for _, k in points)

    def outcome(ws: Workspace) -> dict:
        state = ws.loc.read_json("models/unet/train-state.json")
        return {
            "latest": load_checkpoint(ws, "unet", "latest").name,
            "best": load_checkpoint(ws, "unet", "best").name,
            "weights": load_checkpoint(ws, "unet").weights,
            "optimizer": ws.loc.read_bytes(f"models/unet/{state['checkpoint']}/optimizer.safetensors"),
            "files": sorted(str(p.relative_to(ws.loc.root)) for p in Path(ws.loc.root, "models").rglob("*")),
        }

    expected = outcome(whole)
    for n in range(1, len(points) + 1):
        cut = tiny_workspace(tmp_path / f"cut-{n}")
        seen = [0]

        def crash_at(op: str, key: str, n: int = n, seen: list = seen) -> None:
            if key.startswith("models/"):
                seen[0] += 1
                if seen[0] == n:
                    raise Crash(f"{op} {key}")

        writepoints.HOOKS.append(crash_at)
        try:
            with pytest.raises(Crash):
                train_unet(cut, opts)
        finally:
            writepoints.HOOKS.clear()
        train_unet(cut, opts)
        got = outcome(cut)
        assert got == expected, (n, points[n - 1])


def _as_first_layout(ws: Workspace) -> None:
    """Rewrite the train state as train-unet wrote it before the one layout:
    ``train-state/{meta.json,optimizer-NNNN.safetensors}``, tensors named ``<param id>.<key>``."""
    from safetensors.torch import save

    state = ws.loc.read_json("models/unet/train-state.json")
    new_key = f"models/unet/{state['checkpoint']}/optimizer.safetensors"
    tensors = {k.split(".", 1)[1]: v for k, v in load(ws.loc.read_bytes(new_key)).items()}
    old_key = f"models/unet/train-state/optimizer-{state['epoch']:04d}.safetensors"
    ws.loc.write_bytes(old_key, save(tensors))
    meta = {k: v for k, v in state.items() if k != "tags"}
    meta.update(param_groups=state["param_groups"]["opt"], optimizer=old_key)
    ws.loc.write_json("models/unet/train-state/meta.json", meta)
    ws.loc.delete("models/unet/train-state.json")
    ws.loc.delete(new_key)


def test_a_run_stopped_in_the_first_train_state_layout_resumes_exactly(tmp_path: Path) -> None:
    whole = tiny_workspace(tmp_path / "whole")
    train_unet(whole, OPTS)
    cut = tiny_workspace(tmp_path / "cut")

    def stop_after_first(m: dict) -> None:
        if m["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_unet(cut, OPTS, on_epoch=stop_after_first)
    _as_first_layout(cut)
    assert train_unet(cut, OPTS)["resumed_at"] == 1
    a = load(load_checkpoint(whole, "unet").weights)
    b = load(load_checkpoint(cut, "unet").weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not cut.loc.exists("models/unet/train-state/meta.json"), "the first layout is superseded once resumed"
    assert cut.loc.list("models/unet/train-state") == []
    state = cut.loc.read_json("models/unet/train-state.json")
    assert state["epoch"] == 3 and cut.loc.exists(f"models/unet/{state['checkpoint']}/optimizer.safetensors")
