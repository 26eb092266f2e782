"""The workspace is untrusted input too: nothing in it is unpickled, and model configs are validated."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from storage.checkpoints import load_checkpoint, save_checkpoint
from storage.workspace import Workspace, WorkspaceError

ROOT = Path(__file__).resolve().parents[2]


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    f = call.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def test_no_code_path_unpickles_anything() -> None:
    """Every load in the package is pickle-free: torch.load only with weights_only=True."""
    offenders = []
    for path in sorted(p for pkg in ("flows", "tasks", "models", "storage") for p in (ROOT / pkg).rglob("*.py")):
        for call in _calls(ast.parse(path.read_text(), str(path))):
            name = _name(call)
            kwargs = {k.arg: k.value for k in call.keywords}
            if name in (
                "pickle.load",
                "pickle.loads",
                "cloudpickle.load",
                "cloudpickle.loads",
                "dill.load",
                "joblib.load",
            ):
                offenders.append(f"{path}:{call.lineno} {name}")
            if name == "torch.load":
                w = kwargs.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    offenders.append(f"{path}:{call.lineno} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load"):
                a = kwargs.get("allow_pickle")
                if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                    offenders.append(f"{path}:{call.lineno} np.load with allow_pickle")
            if name == "yaml.load":
                offenders.append(f"{path}:{call.lineno} yaml.load (use safe_load)")
    assert offenders == []


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"model": "../../elsewhere"}, "not a model name"),
        ({"model": "unet-mobilenetv2-small", "num_classes": "seven"}, "num_classes"),
        ({"model": "unet-mobilenetv2-small", "num_classes": 10**9}, "num_classes"),
        ({"model": "unet-mobilenetv2-small", "options": ["x"]}, "options"),
    ],
)
def test_tampered_model_configs_are_refused(tmp_path: Path, config: dict, why: str) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    save_checkpoint(ws, "unet", "run-1", b"", config)
    with pytest.raises(WorkspaceError, match=why):
        load_checkpoint(ws, "unet")


def test_a_config_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    save_checkpoint(ws, "unet", "run-1", b"", {"model": "x"})
    ws.loc.write_bytes("models/unet/run-1/config.json", b"[1, 2]")
    with pytest.raises(WorkspaceError, match="not a JSON object"):
        load_checkpoint(ws, "unet")
    ws.loc.write_bytes("models/unet/run-1/config.json", b"{not json")
    with pytest.raises(WorkspaceError, match="invalid config"):
        load_checkpoint(ws, "unet")


def test_a_tampered_gaugan_options_block_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from tasks.gaugan import load_gaugan

    ws = Workspace(str(tmp_path / "ws"))
    save_checkpoint(ws, "gaugan", "run-1", b"", {"phase": "gan", "num_classes": 7, "options": {"ngf": -3}})
    with pytest.raises(ValidationError):
        load_gaugan(ws)
