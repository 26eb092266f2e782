"""One registry for networks: ``register`` a factory by name, ``create`` it, ``list`` them.

Configuration files and checkpoints name a model and its keyword arguments; the factory
turns them into a network. The test suite runs every registered model forward and
backward, so a new entry is checked the day it is added.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {}


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``factory`` as model ``name`` of ``kind`` (``segmenter``, ...)."""

    def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
        table = _REGISTRY.setdefault(kind, {})
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = factory
        return factory

    return wrap


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Build the ``kind`` model registered as ``name`` with ``kwargs``."""
    _load_builtin()
    try:
        factory = _REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY.get(kind, {}))) or "none"
        raise ValueError(f"no {kind} named {name!r} (registered: {known})") from None
    return factory(**kwargs)


def list_models(kind: str) -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY.get(kind, {}))


def _load_builtin() -> None:
    """Import every module of the ``models`` package: each registers its networks (a new
    network is one new file). Kept lazy so that importing the registry is cheap."""
    import importlib
    import pkgutil

    import models

    for info in pkgutil.iter_modules(models.__path__):
        if info.name != "registry":
            importlib.import_module(f"models.{info.name}")
