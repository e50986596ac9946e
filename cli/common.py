"""What every command shares: settings, clean error reporting, the store and the source."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import OperationalError, ProgrammingError

from core.errors import MLSignalsError
from core.logging import configure_logging
from core.settings import Settings, get_settings
from data import db
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
        except ValidationError as exc:
            raise fail(f"invalid settings: {exc}") from None
        except (OperationalError, ProgrammingError) as exc:
            raise fail(f"database error: {exc.orig or exc}") from None
        except FileNotFoundError as exc:
            raise fail(str(exc)) from None

    return wrapper


def settings() -> Settings:
    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    return s


def policy(s: Settings) -> ValidationPolicy:
    return ValidationPolicy.from_settings(s)


def ready_store(s: Settings) -> CandleStore:
    """The candle store on an up-to-date schema: SQLite upgrades itself, a server must be upgraded."""
    url = db.normalise_url(s.database_url)
    if url.startswith("sqlite"):
        db.upgrade(url)
    else:
        head = db.head_revision()
        current = db.current_revision(url)
        if current != head:
            raise MLSignalsError(
                f"database schema is at {current or 'nothing'}, not {head}: run `mlsignals db upgrade`"
            )
    return CandleStore(db.get_engine(url))


def split_symbols(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    out = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return out or None
