"""Model checkpoints under the workspace: safetensors weights, a JSON config, JSON metrics.

Layout: ``models/<model>/<checkpoint>/{weights.safetensors,config.json,metrics.json}`` and
``models/<model>/tags/<tag>.json`` (``latest``, ``best``) pointing at a checkpoint. The
weights are written first and the tags last, so a tag never points at a partial
checkpoint. Weights are safetensors only: loading never executes code from a file.

Beside a checkpoint lie its side files (``samples.png``, ``validation.png``, ``curves.png``,
``optimizer.safetensors``): :func:`side_key`. A resumable trainer keeps one train state per
model (:func:`commit_train_state`, :func:`resume_train_state`):

- ``models/<model>/train-state.json``: the run's identity (``run``), the checkpoint it last
  committed (``checkpoint``), the tags that commit moved (``tags``), the optimisers' param
  groups by optimiser name (``param_groups``) and whatever else the trainer needs to go on
  (epoch, schedule, RNG state...);
- ``models/<model>/<checkpoint>/optimizer.safetensors``: the optimisers' tensors, named
  ``<optimiser>.<param id>.<state key>``, kept for the committed checkpoint only.

A commit writes the optimiser file (a new key, invisible until named), then the state that
names it, then moves the tags, then drops the previous checkpoint's optimiser file; a resume
first repairs what a killed commit left undone. Workspaces written before this layout by
``train-unet`` (``models/unet/train-state/{meta.json,optimizer-NNNN.safetensors}``,
optimiser tensors named ``<param id>.<state key>``) are still read: ``TrainState.legacy``.

Callers hand over already-serialised safetensors bytes (``safetensors.torch.save`` or
``safetensors.numpy.save``), so this module stays free of torch.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from storage.workspace import Workspace, WorkspaceError, check_key, check_name, now_iso

log = logging.getLogger(__name__)

OPTIMIZER = "optimizer.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    model: str
    name: str
    weights: bytes
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def digest(self) -> str:
        """A short content hash: the producer version of everything made with this model."""
        return hashlib.sha256(self.weights).hexdigest()[:16]


def _dir(model: str, name: str = "") -> str:
    """``models/<model>[/<name>]``; every part a plain name (see ``storage.workspace.check_name``)."""
    check_key(model, "model name")
    return f"models/{model}/{check_name(name, 'checkpoint name')}" if name else f"models/{model}"


def save_checkpoint(
    ws: Workspace,
    model: str,
    name: str,
    weights: bytes,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    tags: tuple[str, ...] = ("latest",),
) -> str:
    """Store a checkpoint and move ``tags`` to it; returns its digest."""
    base = _dir(model, name)
    ws.loc.write_bytes(f"{base}/weights.safetensors", weights)
    ws.loc.write_json(f"{base}/metrics.json", metrics or {})
    ws.loc.write_json(f"{base}/config.json", config)
    digest = hashlib.sha256(weights).hexdigest()[:16]
    set_tags(ws, model, name, tags, digest)
    return digest


def set_tags(ws: Workspace, model: str, name: str, tags: tuple[str, ...], digest: str | None = None) -> None:
    """Point ``tags`` at checkpoint ``name`` (already stored); tags already there are not rewritten."""
    if digest is None:
        digest = hashlib.sha256(ws.loc.read_bytes(f"{_dir(model, name)}/weights.safetensors")).hexdigest()[:16]
    for tag in tags:
        key = tag_key(model, tag)
        if ws.loc.exists(key):
            try:
                held = ws.loc.read_json(key)
            except ValueError:
                held = None
            if isinstance(held, dict) and held.get("checkpoint") == name and held.get("digest") == digest:
                continue
        ws.loc.write_json(key, {"checkpoint": name, "digest": digest, "time": now_iso()})


def tag_key(model: str, tag: str = "latest") -> str:
    """The key of tag ``tag`` of ``model``: ``models/<model>/tags/<tag>.json``."""
    return f"{_dir(model)}/tags/{check_name(tag, 'tag')}.json"


def has_tag(ws: Workspace, model: str, tag: str = "latest") -> bool:
    """Whether ``model`` has a checkpoint tagged ``tag`` (``latest``: it has been trained)."""
    return ws.loc.exists(tag_key(model, tag))


def list_checkpoints(ws: Workspace, model: str) -> list[str]:
    names = []
    for key in ws.loc.list(_dir(model)):
        name = key.rsplit("/", 1)[1]
        if name != "tags" and ws.loc.exists(f"{key}/config.json"):
            names.append(name)
    return sorted(names)


def list_models(ws: Workspace) -> list[str]:
    return [k.rsplit("/", 1)[1] for k in ws.loc.list("models")]


def resolve(ws: Workspace, model: str, ref: str = "latest") -> str:
    """Turn a tag (``latest``, ``best``) or a checkpoint name into a checkpoint name."""
    key = f"{_dir(model)}/tags/{check_name(ref, 'checkpoint or tag (--model)')}.json"
    if ws.loc.exists(key):
        return str(ws.loc.read_json(key)["checkpoint"])
    if ws.loc.exists(f"{_dir(model, ref)}/config.json"):
        return ref
    raise WorkspaceError(f"no checkpoint {ref!r} of model {model!r} in {ws.url}: train it first")


def checkpoint_metrics(ws: Workspace, model: str, ref: str = "latest") -> dict[str, Any]:
    """The metrics of a checkpoint, without reading its weights."""
    key = f"{_dir(model, resolve(ws, model, ref))}/metrics.json"
    return ws.loc.read_json(key) if ws.loc.exists(key) else {}


MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def validate_config(config: Any, where: str) -> dict[str, Any]:
    """Check the fields every loader trusts before it builds a network from a workspace file.

    A config comes from the workspace, which may be shared or tampered with: it must be a
    JSON object, name its model with a plain registry name (the registry then refuses
    unknown ones), and give a class count a network can have. Option blocks are validated
    by their pydantic models where they are used (``GauganOptions(**config["options"])``).
    """
    if not isinstance(config, dict):
        raise WorkspaceError(f"invalid config in {where}: not a JSON object")
    model = config.get("model")
    if model is not None and (not isinstance(model, str) or not MODEL_NAME.match(model)):
        raise WorkspaceError(f"invalid config in {where}: model {model!r} is not a model name")
    n = config.get("num_classes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 255):
        raise WorkspaceError(f"invalid config in {where}: num_classes {n!r} is not an integer in 1..255")
    options = config.get("options")
    if options is not None and not isinstance(options, dict):
        raise WorkspaceError(f"invalid config in {where}: options is not a JSON object")
    return config


def load_checkpoint(ws: Workspace, model: str, ref: str = "latest") -> Checkpoint:
    name = resolve(ws, model, ref)
    base = _dir(model, name)
    try:
        config = ws.loc.read_json(f"{base}/config.json")
    except ValueError as exc:
        raise WorkspaceError(f"invalid config in {base}/config.json: {exc}") from None
    return Checkpoint(
        model,
        name,
        ws.loc.read_bytes(f"{base}/weights.safetensors"),
        validate_config(config, f"{base}/config.json"),
        ws.loc.read_json(f"{base}/metrics.json") if ws.loc.exists(f"{base}/metrics.json") else {},
    )


# -- side files and train state ------------------------------------------------------------
def side_key(model: str, name: str, file: str) -> str:
    """``models/<model>/<checkpoint>/<file>``: a file beside checkpoint ``name``."""
    return f"{_dir(model, name)}/{check_name(file, 'file name')}"


def write_side_file(ws: Workspace, model: str, name: str, file: str, data: bytes) -> None:
    """Store ``data`` beside checkpoint ``name`` (a sample sheet, a curve, ...)."""
    ws.loc.write_bytes(side_key(model, name, file), data)


def train_state_key(model: str) -> str:
    return f"{_dir(model)}/train-state.json"


def _legacy_dir(model: str) -> str:
    return f"{_dir(model)}/train-state"


@dataclass(frozen=True)
class TrainState:
    """A model's committed train state: its JSON (``meta``) and where its optimiser tensors are.

    ``meta`` always has ``run``, ``checkpoint``, ``tags`` (tag -> checkpoint) and
    ``param_groups`` (optimiser name -> groups); the trainer's own fields beside them.
    ``legacy``: read from ``train-unet``'s first layout, whose optimiser tensors are named
    ``<param id>.<state key>`` (one optimiser, ``param_groups["opt"]``).
    """

    model: str
    meta: dict[str, Any]
    optimizer_key: str
    legacy: bool = False

    @property
    def run(self) -> str:
        return str(self.meta.get("run"))

    @property
    def checkpoint(self) -> str:
        return str(self.meta["checkpoint"])


def read_train_state(ws: Workspace, model: str) -> TrainState | None:
    """The committed train state of ``model``, in either layout; None when there is none."""
    key = train_state_key(model)
    if ws.loc.exists(key):
        meta = ws.loc.read_json(key)
        return TrainState(model, meta, side_key(model, str(meta["checkpoint"]), OPTIMIZER))
    legacy = f"{_legacy_dir(model)}/meta.json"
    if not ws.loc.exists(legacy):
        return None
    old = ws.loc.read_json(legacy)
    checkpoint = str(old.get("checkpoint") or resolve(ws, model, "latest"))
    tags = {"latest": checkpoint} if old.get("checkpoint") else {}
    if old.get("best_checkpoint"):
        tags["best"] = str(old["best_checkpoint"])
    rest = {k: v for k, v in old.items() if k not in ("optimizer", "param_groups")}
    meta = {**rest, "checkpoint": checkpoint, "tags": tags, "param_groups": {"opt": old["param_groups"]}}
    return TrainState(model, meta, str(old.get("optimizer", f"{_legacy_dir(model)}/{OPTIMIZER}")), legacy=True)


def resume_train_state(ws: Workspace, model: str, run: str) -> TrainState | None:
    """The train state of run ``run`` of ``model``, with what a killed commit left undone
    finished (tags moved, stale optimiser files dropped); None when ``model`` has none or
    another run's."""
    state = read_train_state(ws, model)
    if state is None:
        return None
    if state.run != run:
        log.info("options differ from run %s of %s in the workspace: starting run %s", state.run, model, run)
        return None
    for tag, name in state.meta.get("tags", {}).items():
        set_tags(ws, model, str(name), (tag,))
    if state.legacy:
        for k in ws.loc.list(_legacy_dir(model)):
            if k.rsplit("/", 1)[-1].startswith("optimizer") and k != state.optimizer_key:
                ws.loc.delete(k)
    else:
        for name in list_checkpoints(ws, model):
            if name != state.checkpoint:
                ws.loc.delete(side_key(model, name, OPTIMIZER))
    return state


def read_optimizer(ws: Workspace, state: TrainState) -> bytes:
    """The safetensors bytes of the optimiser tensors ``state`` names."""
    return ws.loc.read_bytes(state.optimizer_key)


def commit_train_state(
    ws: Workspace,
    model: str,
    name: str,
    optimizer: bytes,
    meta: dict[str, Any],
    tags: tuple[str, ...] = ("latest",),
    digest: str | None = None,
) -> None:
    """Commit checkpoint ``name`` (already stored, with its side files) as the train state,
    with the optimisers' tensors ``optimizer``, and move ``tags`` to it.

    ``meta``: the state's JSON (``run``, ``param_groups`` and the trainer's fields). The
    optimiser file of the checkpoint the state named before (this run's or another's) goes.
    """
    key = train_state_key(model)
    previous = str(ws.loc.read_json(key).get("checkpoint", "")) if ws.loc.exists(key) else ""
    ws.loc.write_bytes(side_key(model, name, OPTIMIZER), optimizer)
    ws.loc.write_json(key, {**meta, "checkpoint": name, "tags": dict.fromkeys(tags, name)})
    set_tags(ws, model, name, tags, digest)
    if previous and previous != name:
        ws.loc.delete(side_key(model, previous, OPTIMIZER))
    legacy = _legacy_dir(model)
    if ws.loc.exists(f"{legacy}/meta.json"):  # resumed from the first layout: it is superseded now
        for k in ws.loc.list(legacy):
            if not k.endswith("/meta.json"):
                ws.loc.delete(k)
        ws.loc.delete(f"{legacy}/meta.json")
