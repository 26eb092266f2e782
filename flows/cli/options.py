"""Command-line options generated from a flow's signature, so the CLI and the Prefect UI agree.

Scalar parameters become options with the help of the flow's docstring ``Args:`` (the UI
form's); an options model gives one option per field, with its description (a model
parameter defaulting to None stays the UI's). An option left out is left to the flow.
"""

from __future__ import annotations

import argparse
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel

GLOBAL = ("workspace", "device")  # the global options fill these parameters and fields


@dataclass(frozen=True)
class Command:
    """One command: a flow (``"module:name"``) or ``run``, a ``"module:function"`` of its own.

    Before the flow starts, ``paths`` (option -> "file", "dir" or "any") must exist and
    the flow module's ``precheck_<flow>(params, given)`` may refuse; its
    ``describe_<flow>(result, params)`` says the result (``--json``: the result as JSON).
    """

    name: str
    help: str
    flow: str | None = None
    positional: tuple[str, ...] = ()
    metavars: dict[str, str] = field(default_factory=dict)
    models: dict[str, tuple[str, tuple[str, ...] | None]] = field(default_factory=dict)  # param -> (prefix, fields)
    flags: dict[str, str] = field(default_factory=dict)  # "param" or "param.field" -> "--flag"
    hide: tuple[str, ...] = ()  # parameters left to the flow's defaults (set them in the UI)
    paths: dict[str, str] = field(default_factory=dict)
    extra: Callable[[argparse.ArgumentParser], Any] | str | None = None  # options of the command alone
    run: str | None = None


def load(ref: Any) -> Any:
    """``"module:name"`` imported (only when the command runs), anything else as it is."""
    import importlib

    return getattr(importlib.import_module(ref.split(":")[0]), ref.split(":")[1]) if isinstance(ref, str) else ref


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return next(
        (t for t in (annotation, *get_args(annotation)) if inspect.isclass(t) and issubclass(t, BaseModel)), None
    )


def _parameters(cmd: Command, flow: Any) -> list[tuple[str, str, Any, Any, str | None]]:
    """(dest, name, annotation, default, help) of every option of ``cmd``'s flow."""
    from prefect.utilities.callables import parameter_docstrings

    docs, out = parameter_docstrings(inspect.getdoc(flow.fn)), []
    for p in inspect.signature(flow.fn).parameters.values():
        model = _model_of(p.annotation)
        if p.name in GLOBAL or p.name in cmd.hide or (model is not None and p.default is None):
            continue
        if model is None:
            out.append((p.name, p.name, p.annotation, p.default, docs.get(p.name)))
            continue
        prefix, only = cmd.models.get(p.name, ("", None))
        for name, info in model.model_fields.items():
            if name in GLOBAL or (only is not None and name not in only):
                continue
            annotation: Any = info.annotation
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            if "registry" in extra:  # a registered model's name: the registry's names are the choices
                from models.registry import list_models

                annotation = Literal[tuple(list_models(str(extra["registry"])))]
            out.append((f"{p.name}.{name}", prefix + name, annotation, getattr(p.default, name), info.description))
    return out


def _kind(annotation: Any) -> tuple[Any, tuple[Any, ...] | None, bool]:
    """(item type, choices, is a sequence) of an annotation, ``X | None`` as ``X``."""
    origin, args = get_origin(annotation), [a for a in get_args(annotation) if a is not type(None)]
    if origin is Annotated or (origin in (typing.Union, types.UnionType) and len(args) == 1):
        return _kind(args[0])
    if origin is Literal:
        return type(args[0]), tuple(args), False
    if origin in (tuple, list):
        return (*_kind(args[0])[:2], True)
    return annotation, None, False


def _sequence(item: Any, choices: tuple[Any, ...] | None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [item(p.strip()) for p in text.split(",") if p.strip()]
        if unknown := [v for v in values if choices and v not in choices]:
            raise argparse.ArgumentTypeError(f"unknown {_show(unknown)}; choose from {_show(choices)}")
        return values

    parse.__name__ = f"comma-separated {item.__name__}"
    return parse


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def add_options(parser: argparse.ArgumentParser, cmd: Command, flow: Any) -> None:
    for dest, name, annotation, default, help_text in _parameters(cmd, flow):
        item, choices, many = _kind(annotation)
        required = default is inspect.Parameter.empty
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text or ""}
        kw["help"] += "" if required or default is None else f" (default: {_show(default)})"
        if item is bool and not many:
            kw["action"] = argparse.BooleanOptionalAction if default is True else "store_true"
        else:
            kw["type"] = _sequence(item, choices) if many else item
            kw["metavar"] = cmd.metavars.get(dest, name.upper() if not choices or many else None)
            kw["choices"] = None if many else choices
            kw["help"] += f"; comma-separated, from {_show(choices)}" if many and choices else ""
        if dest in cmd.positional:
            parser.add_argument(dest, **{k: v for k, v in kw.items() if k != "default"})
        else:
            parser.add_argument(cmd.flags.get(dest, "--" + name.replace("_", "-")), dest=dest, required=required, **kw)


def flow_kwargs(cmd: Command, flow: Any, args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """The flow's keyword arguments: the given options, models rebuilt on the flow's defaults."""
    given, kwargs = vars(args), {}
    for p in inspect.signature(flow.fn).parameters.values():
        model = _model_of(p.annotation)
        if p.name in GLOBAL:
            kwargs[p.name] = config.workspace if p.name == "workspace" else config.device
        elif model is not None and p.name not in cmd.hide and p.default is not None:
            fields = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith(p.name + ".")}
            device = {"device": config.device} if "device" in model.model_fields else {}
            kwargs[p.name] = model(**{**p.default.model_dump(), **fields, **device})
        elif p.name in given:
            kwargs[p.name] = given[p.name]
    return kwargs
