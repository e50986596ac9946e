"""What the tasks share: the minute's time arithmetic, task expiry and transient errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis.exceptions
import sqlalchemy.exc

from core.errors import TemporaryError
from core.settings import Settings, get_settings
from core.timegrid import iso_minute, ms_to_dt, parse_minute

# Errors of the infrastructure that the same task may overcome a few seconds later: a dropped or
# refused database connection, a Redis restart, a temporarily unreachable exchange. The minute's
# tasks retry them with Celery's autoretry (exponential backoff, full jitter); the retry keeps the
# minute's expiry, so no retry runs after the deadline (docs/ML_INTEGRATION.md, "Failures").
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    TemporaryError,
)

# Celery reads task options at import: the worker's settings at start decide.
_PIPELINE = get_settings().pipeline
MINUTE_RETRY: dict[str, object] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "max_retries": _PIPELINE.task_max_retries,
    # Countdown drawn from [0, min(4, 2**retries)] s: four retries fit in ~11 s at worst.
    "retry_backoff": 1,
    "retry_backoff_max": 4,
    "retry_jitter": True,
}


def minute_dt(minute_iso: str) -> datetime:
    return ms_to_dt(parse_minute(minute_iso))


def deadline(settings: Settings, minute_iso: str) -> datetime:
    """Every task of a minute expires at the minute's deadline: no work is done on stale data."""
    return minute_dt(minute_iso) + timedelta(seconds=settings.pipeline.minute_deadline_seconds)


def chunks(items: list[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def now_iso_minute(now: datetime | None = None) -> str:
    current = now or datetime.now(UTC)
    return iso_minute(int(current.timestamp() * 1000))
