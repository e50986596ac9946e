"""What the tasks share: the minute's time arithmetic and task expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from core.settings import Settings
from core.timegrid import iso_minute, ms_to_dt, parse_minute


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
