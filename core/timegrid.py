"""The UTC minute grid. Candle times are int64 milliseconds since the epoch (ccxt's convention)."""

from __future__ import annotations

from datetime import UTC, datetime

MINUTE_MS = 60_000


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def floor_minute(ts_ms: int) -> int:
    return ts_ms - ts_ms % MINUTE_MS


def last_closed_open_ms(now: int | None = None) -> int:
    """Open time of the newest closed 1-minute candle at ``now`` (the forming one is excluded)."""
    return floor_minute(now_ms() if now is None else now) - MINUTE_MS


def ms_to_dt(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def dt_to_ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: all times must be timezone-aware UTC")
    return int(dt.timestamp() * 1000)


def as_utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def parse_minute(value: str) -> int:
    """Parse an ISO minute such as ``2026-11-24T10:31:00Z``; it must lie on the minute grid."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    ts = dt_to_ms(dt)
    if ts % MINUTE_MS:
        raise ValueError(f"{value!r} is not on the minute grid")
    return ts


def iso_minute(ts_ms: int) -> str:
    return ms_to_dt(ts_ms).strftime("%Y-%m-%dT%H:%M:%SZ")
