"""What every training flow shows while it runs: a progress bar, a line and an artifact row per epoch.

Training runs in the flow's process (one model in memory, on the run's device). A trainer
in ``tasks/`` takes ``on_epoch(metrics)`` and ``on_step(done, total)`` callbacks; a flow
gets both from :func:`monitored`: the bar on a terminal, and, whether or not there is
one, a log line per epoch (so ``make demo > log`` shows progress) and the run's table
artifact of every epoch so far (the UI's training curve).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows.shards import artifact_key


def progress(text: str, terminal: bool = True) -> None:
    """One line for a person watching the command: on stderr, flushed at once, with the time.

    ``terminal=False``: only when stderr is not a terminal (a log file, ``make demo > log``),
    where no progress bar shows; on a terminal the bar does.
    """
    if terminal or not sys.stderr.isatty():
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


@dataclass
class Monitor:
    stage: str
    description: str
    line: Callable[[dict[str, Any]], str]
    row: Callable[[dict[str, Any]], dict[str, Any]]
    bar: Progress
    job: Any
    rows: list[dict[str, Any]] = field(default_factory=list)

    def on_epoch(self, metrics: dict[str, Any]) -> None:
        self.rows.append(self.row(metrics))
        create_table_artifact(key=artifact_key(self.stage), table=self.rows, description=self.description)
        get_run_logger().info("%s", self.line(metrics))
        progress(f"{self.stage.removesuffix('-metrics')}: {self.line(metrics)}", terminal=False)

    def on_step(self, done: int, total: int, phase: str = "") -> None:
        self.bar.update(self.job, description=phase, completed=done, total=total)


@contextlib.contextmanager
def monitored(
    stage: str,
    description: str,
    line: Callable[[dict[str, Any]], str],
    row: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> Iterator[Monitor]:
    """``on_epoch``/``on_step`` for a trainer: the table artifact ``stage`` and a log ``line`` per epoch."""
    label = stage.removesuffix("-metrics")
    columns = (TextColumn(f"{label} {{task.description}}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
        yield Monitor(stage, description, line, row, bar, bar.add_task("", total=None))
