"""``UtcDateTime``: aware UTC datetimes in and out of every timestamp column, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import cast

import pytest
from sqlalchemy import DateTime, Table, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from data import db
from data.models import Base, DataQuarantine, UtcDateTime

QUARANTINE = cast(Table, DataQuarantine.__table__)
# 10:00 UTC, written as 15:30 in a +05:30 zone: stored and read back as the same instant, in UTC.
AT = datetime(2026, 11, 24, 15, 30, 0, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30)))
AT_UTC = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)


def row(symbol: str, since: datetime) -> dict[str, object]:
    return {
        "exchange": "simulator",
        "symbol": symbol,
        "rule": "gap",
        "detail": "-",
        "since": since,
        "updated_at": since,
    }


def test_every_timestamp_column_is_utc_datetime() -> None:
    columns = [c for table in Base.metadata.tables.values() for c in table.columns]
    assert [str(c) for c in columns if isinstance(c.type, DateTime)] == []  # none is a plain DateTime
    times = [c for c in columns if isinstance(c.type, UtcDateTime)]
    assert len(times) > 30


def test_an_aware_datetime_round_trips_as_aware_utc(migrated_url: str) -> None:
    engine = db.get_engine(migrated_url)
    with engine.begin() as conn:
        conn.execute(insert(QUARANTINE), [row("BTC/USDT:USDT", AT), row("ETH/USDT:USDT", AT_UTC)])
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # The session's zone decides how PostgreSQL answers; the column type answers in UTC.
            conn.execute(text("SET TIME ZONE 'Asia/Tokyo'"))
        core = conn.execute(select(QUARANTINE.c.since, QUARANTINE.c.updated_at)).all()
        newest = conn.execute(select(func.max(QUARANTINE.c.since))).scalar_one()
        found = conn.execute(select(QUARANTINE.c.symbol).where(QUARANTINE.c.since == AT_UTC)).scalars()
        matching = sorted(found)
    for value in [v for r in core for v in r] + [newest]:
        assert value == AT_UTC
        assert value.tzinfo is UTC
    assert matching == ["BTC/USDT:USDT", "ETH/USDT:USDT"]  # both were the same instant
    with Session(engine) as s:
        orm = s.scalars(select(DataQuarantine).order_by(DataQuarantine.symbol)).all()
        assert [(q.since, q.since.tzinfo) for q in orm] == [(AT_UTC, UTC), (AT_UTC, UTC)]
        assert all(q.updated_at.utcoffset() == timedelta(0) for q in orm)


def test_a_naive_datetime_is_refused(migrated_url: str) -> None:
    engine = db.get_engine(migrated_url)
    naive = datetime(2026, 11, 24, 10, 0)  # noqa: DTZ001 (the point of the test)
    with pytest.raises(StatementError, match="naive datetime") as info, engine.begin() as conn:
        conn.execute(insert(QUARANTINE), [row("BTC/USDT:USDT", naive)])
    assert isinstance(info.value.orig, ValueError)
    with pytest.raises(StatementError, match="naive datetime"), engine.connect() as conn:
        conn.execute(select(QUARANTINE).where(QUARANTINE.c.since < naive)).all()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(QUARANTINE)).scalar_one() == 0


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "postgresql"])
def test_the_type_converts_and_refuses_without_a_database(dialect: object) -> None:
    kind = UtcDateTime()
    bound = kind.process_bind_param(AT, dialect)  # type: ignore[arg-type]
    assert bound is not None
    assert bound.replace(tzinfo=UTC) == AT_UTC
    assert kind.process_bind_param(None, dialect) is None  # type: ignore[arg-type]
    assert kind.process_result_value(None, dialect) is None  # type: ignore[arg-type]
    out = kind.process_result_value(AT_UTC.replace(tzinfo=None), dialect)  # type: ignore[arg-type]
    assert out == AT_UTC
    assert out is not None
    assert out.tzinfo is UTC
    with pytest.raises(ValueError, match="naive datetime"):
        kind.process_bind_param(datetime(2026, 1, 1), dialect)  # type: ignore[arg-type]  # noqa: DTZ001
    with pytest.raises(TypeError, match="not a datetime"):
        kind.process_bind_param("2026-01-01T00:00:00Z", dialect)  # type: ignore[arg-type]
