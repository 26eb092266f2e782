"""Model checkpoints under the workspace: safetensors weights, a JSON config, JSON metrics.

Layout: ``models/<model>/<checkpoint>/{weights.safetensors,config.json,metrics.json}`` and
``models/<model>/tags/<tag>.json`` (``latest``, ``best``) pointing at a checkpoint. The
weights are written first and the tags last, so a tag never points at a partial
checkpoint. Weights are safetensors only: loading never executes code from a file.

Callers hand over already-serialised safetensors bytes (``safetensors.torch.save`` or
``safetensors.numpy.save``), so this module stays free of torch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from storage.workspace import Workspace, WorkspaceError, check_key, check_name, now_iso


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
        key = f"{_dir(model)}/tags/{check_name(tag, 'tag')}.json"
        if ws.loc.exists(key):
            try:
                held = ws.loc.read_json(key)
            except ValueError:
                held = None
            if isinstance(held, dict) and held.get("checkpoint") == name and held.get("digest") == digest:
                continue
        ws.loc.write_json(key, {"checkpoint": name, "digest": digest, "time": now_iso()})


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
    tag_key = f"{_dir(model)}/tags/{check_name(ref, 'checkpoint or tag (--model)')}.json"
    if ws.loc.exists(tag_key):
        return str(ws.loc.read_json(tag_key)["checkpoint"])
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
