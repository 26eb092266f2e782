"""The train state of storage.checkpoints: commit order, repair on resume, the first layout."""

from __future__ import annotations

from pathlib import Path

from storage.checkpoints import (
    commit_train_state,
    has_tag,
    read_optimizer,
    read_train_state,
    resolve,
    resume_train_state,
    save_checkpoint,
    set_tags,
    tag_key,
)
from storage.workspace import Workspace


def _save(ws: Workspace, name: str) -> str:
    return save_checkpoint(ws, "m", name, name.encode(), {"model": "m"}, {}, tags=())


def test_commit_moves_tags_last_and_keeps_one_optimizer_file(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    assert read_train_state(ws, "m") is None and not has_tag(ws, "m")
    for name in ("e1", "e2"):
        digest = _save(ws, name)
        commit_train_state(
            ws, "m", name, b"opt-" + name.encode(), {"run": "r", "param_groups": {}}, ("latest",), digest
        )
    assert resolve(ws, "m") == "e2" and tag_key("m") == "models/m/tags/latest.json"
    assert not ws.loc.exists("models/m/e1/optimizer.safetensors")
    state = read_train_state(ws, "m")
    assert state is not None and state.checkpoint == "e2" and state.meta["tags"] == {"latest": "e2"}
    assert read_optimizer(ws, state) == b"opt-e2" and not state.legacy


def test_resume_repairs_what_a_killed_commit_left_and_ignores_other_runs(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    for name in ("e1", "e2"):
        _save(ws, name)
    commit_train_state(ws, "m", "e1", b"o1", {"run": "r", "param_groups": {}}, ("latest", "best"))
    # killed after e2's state was written, before its tags moved and e1's optimiser went
    ws.loc.write_bytes("models/m/e2/optimizer.safetensors", b"o2")
    ws.loc.write_json("models/m/train-state.json", {"run": "r", "checkpoint": "e2", "tags": {"latest": "e2"}})
    assert resume_train_state(ws, "m", "other") is None and resolve(ws, "m") == "e1"
    state = resume_train_state(ws, "m", "r")
    assert state is not None and state.checkpoint == "e2"
    assert resolve(ws, "m") == "e2" and resolve(ws, "m", "best") == "e1"
    assert not ws.loc.exists("models/m/e1/optimizer.safetensors")


def test_the_first_layout_is_read_and_superseded_by_the_next_commit(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path))
    for name in ("e1", "e2"):
        _save(ws, name)
    set_tags(ws, "m", "e1", ("latest", "best"))
    ws.loc.write_bytes("models/m/train-state/optimizer-0001.safetensors", b"stale")
    ws.loc.write_bytes("models/m/train-state/optimizer-0002.safetensors", b"o2")
    old = {"run": "r", "epoch": 2, "checkpoint": "e2", "best_checkpoint": "e1", "best": 0.5}
    old.update(optimizer="models/m/train-state/optimizer-0002.safetensors", param_groups=[{"lr": 1}], rng=[1])
    ws.loc.write_json("models/m/train-state/meta.json", old)
    state = resume_train_state(ws, "m", "r")
    assert state is not None and state.legacy and state.checkpoint == "e2"
    assert state.meta["param_groups"] == {"opt": [{"lr": 1}]} and state.meta["epoch"] == 2 and state.meta["rng"] == [1]
    assert read_optimizer(ws, state) == b"o2" and resolve(ws, "m") == "e2" and resolve(ws, "m", "best") == "e1"
    assert not ws.loc.exists("models/m/train-state/optimizer-0001.safetensors")
    _save(ws, "e3")
    commit_train_state(ws, "m", "e3", b"o3", {"run": "r", "param_groups": {}}, ("latest",))
    assert ws.loc.list("models/m/train-state") == []
    new = read_train_state(ws, "m")
    assert new is not None and not new.legacy and new.checkpoint == "e3"
