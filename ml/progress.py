"""How long-running ML work (dataset building, training, evaluation) reports progress.

The library never draws anything itself: the CLI passes a rich-backed implementation, the worker's
first-run bootstrap a logging one, tests nothing.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar

from core.logging import get_logger

log = get_logger(__name__)


class Progress(Protocol):
    def start(self, task: str, total: int) -> None:
        """A new stage of ``total`` steps begins (replaces the previous stage)."""

    def update(self, completed: int, **info: float) -> None:
        """``completed`` steps of the current stage are done; ``info`` are figures to show (loss …)."""

    def note(self, message: str) -> None:
        """A one-line message (a stage's summary, an epoch's validation metrics)."""


class NullProgress:
    def start(self, task: str, total: int) -> None:
        pass

    def update(self, completed: int, **info: float) -> None:
        pass

    def note(self, message: str) -> None:
        pass


class LogProgress:
    """Logs each stage's start, roughly every ``every_s`` seconds of progress, and every note."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._task = ""
        self._total = 0
        self._last = 0.0

    def start(self, task: str, total: int) -> None:
        self._task, self._total, self._last = task, total, time.monotonic()
        log.info("model progress", stage=task, total=total)

    def update(self, completed: int, **info: float) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s or completed >= self._total:
            self._last = now
            log.info(
                "model progress",
                stage=self._task,
                done=completed,
                total=self._total,
                **{k: round(v, 4) for k, v in info.items()},
            )

    def note(self, message: str) -> None:
        log.info(message)


class RichProgress:
    """Drawn as one rich progress bar per stage with its figures (loss …); notes print above it.

    Use as a context manager; on a console that is not a terminal only the notes are printed.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = RichBar(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self.task: Any = None

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.bar.__exit__(kind, exc, tb)

    def start(self, task: str, total: int) -> None:
        self.task = self.bar.add_task(task, total=total, info="")

    def update(self, completed: int, **info: float) -> None:
        text = "  ".join(f"{k} {v:.4f}" for k, v in info.items())
        self.bar.update(self.task, completed=completed, info=text)

    def note(self, message: str) -> None:
        self.bar.console.print(escape(message), highlight=False)
