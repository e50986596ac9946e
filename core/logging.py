"""structlog set-up shared by the CLI, the workers and the benchmarks.

Both structlog and the stdlib handlers look up ``sys.stderr`` when they write, not when they are
configured, so a swapped stream (test runners, the embedded runner's live display) never leaves a
logger writing into a closed file.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


class _CurrentStderr:
    """A structlog logger writing each line to whatever ``sys.stderr`` is at that moment."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _CurrentStderrHandler(logging.StreamHandler[Any]):
    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    numeric = logging.getLevelName(level.upper())
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    # Alembic narrates every migration context at INFO; the CLI prints its own one-line outcome.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, numeric))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_args: _CurrentStderr(),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
