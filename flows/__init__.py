"""Orchestration: Prefect flows, the command line, and the Dask/Prefect run-time.

Adding a flow: write the computation as ``process_shard(spec) -> result`` in ``tasks/``,
wrap it here as ``shard_task("name")(process_shard)`` (``flows.ops``: retries on
transient errors, no result cache: the workspace's markers are the cache), write a
``@mangaka_flow("name")`` with an ``Args:`` docstring that plans shards and calls
``flows.shards.run_shards`` or ``render_corpus`` (run name, lease, run record and failure
hook come with it), add a ``Command`` in ``flows/cli/`` (its options come from the flow;
``serve`` then offers its backfill) and, if it belongs to the chain, a ``Stage`` in
``flows.build.STAGES``. See docs/ARCHITECTURE.md, "Extending".
"""

import logging
import os
from dataclasses import dataclass
from typing import Any


class UsageError(ValueError):
    """A request that cannot be carried out as asked: the command line exits 2 with its message."""


def env_number(name: str, default: float | None, kind: type = float, minimum: float = 0, strict: bool = False) -> Any:
    """A number from the environment variable ``name`` (``default`` when unset or empty); a
    :class:`UsageError` for text that is not one, or one below ``minimum`` (or equal to it, ``strict``)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{name} must be a {'whole ' if kind is int else ''}number, not {text!r}") from None
    if value < minimum or (strict and value == minimum):
        raise UsageError(f"{name} must be {'over' if strict else 'at least'} {minimum:g}, not {text!r}")
    return value


class ShardFailures(RuntimeError):
    """Some shards failed after their retries; the others are done and marked."""


@dataclass(frozen=True)
class RunConfig:
    """What every flow needs to know about where it runs (the CLI's global options)."""

    workspace: str
    dask_address: str | None = None
    device: str = "auto"
    n_workers: int | None = None


# Task and storage code logs through the standard library; Prefect forwards these loggers
# to the run's logs in the UI (PREFECT_LOGGING_EXTRA_LOGGERS), at INFO.
for _name in ("tasks", "storage"):
    logging.getLogger(_name).setLevel(logging.INFO)
