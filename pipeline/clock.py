"""The minute's time arithmetic: ISO minutes as datetimes, and the deadline every task shares."""

from __future__ import annotations

from datetime import datetime, timedelta

from core.settings import Settings
from core.timegrid import ms_to_dt, parse_minute


def minute_dt(minute_iso: str) -> datetime:
    """The aware UTC datetime of an ISO minute such as ``2026-11-24T10:31:00Z``."""
    return ms_to_dt(parse_minute(minute_iso))


def deadline(settings: Settings, minute_iso: str) -> datetime:
    """Every task of a minute expires at the minute's deadline: no work is done on stale data."""
    return minute_dt(minute_iso) + timedelta(seconds=settings.pipeline.minute_deadline_seconds)
