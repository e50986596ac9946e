"""What every command shares: settings, clean error reporting, the store and the source."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from core.errors import MLSignalsError

# Only typer, rich and the error type at import: every command imports what it needs itself, so
# that ``mlsignals --help`` (and each command) loads no more than it uses (docs: benchmarks/bench_cli.py).
if TYPE_CHECKING:
    from core.settings import Settings
    from data.store import CandleStore
    from data.validation import ValidationPolicy

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)

EXIT_PARTIAL = 1
EXIT_ERROR = 2


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def clean_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn expected failures into one clear line and a non-zero exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MLSignalsError as exc:
            raise fail(str(exc)) from None
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None
        except Exception as exc:
            message = expected_failure(exc)
            if message is None:
                raise
            raise fail(message) from None

    return wrapper


def expected_failure(exc: Exception) -> str | None:
    """The one line for invalid settings or a database error; None for anything else.

    pydantic and SQLAlchemy are imported only when one of their modules already is: an exception
    of theirs cannot exist before that.
    """
    if "pydantic" in sys.modules:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            return f"invalid settings: {exc}"
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import OperationalError, ProgrammingError

        if isinstance(exc, OperationalError | ProgrammingError):
            return f"database error: {exc.orig or exc}"
    return None


def settings() -> Settings:
    from core.logging import configure_logging
    from core.settings import get_settings

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    return s


def policy(s: Settings) -> ValidationPolicy:
    from data.validation import ValidationPolicy

    return ValidationPolicy.from_settings(s)


def ready_store(s: Settings) -> CandleStore:
    """The candle store on an up-to-date schema: SQLite upgrades itself, a server must be upgraded."""
    from data import db
    from data.store import CandleStore

    return CandleStore(db.ready_engine(s.database_url))


def split_symbols(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return out or None
