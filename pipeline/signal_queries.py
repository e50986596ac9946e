"""Reads of the stored signals for the agents' tools (MCP ml-signal, docs/MCP.md): a model version's
newest minute, one symbol's history, and the rows behind one signal.

Every read is bounded (a limit, a time range) and runs on indexed columns only: the minute index
(``ix_signals_minute``) finds a version's newest minute by scanning back from the newest row, and the
unique key (symbol, minute, model_version) serves everything keyed by symbol. There is no index on
``model_version`` alone, so no read ever filters by version over an unbounded range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Engine, func, select

from core.timegrid import as_utc
from data.models import MlPrediction, PipelineRun, SignalRecord

DirectionFilter = Literal["LONG", "SHORT", "NEUTRAL", "ACTIONABLE"]
ACTIONABLE: tuple[str, ...] = ("LONG", "SHORT")


class SignalRow(BaseModel):
    """One stored signal, as the signal feed published it (prices in the quote currency)."""

    symbol: str
    minute: datetime = Field(description="The pipeline minute that made the signal (UTC).")
    model_version: str
    direction: str = Field(description="LONG, SHORT or NEUTRAL.")
    confidence: float = Field(description="Probability of the direction's class at the primary horizon.")
    entry_price: float = Field(description="Close of the newest bar of the window (the entry reference).")
    stop_loss: float | None = Field(description="None for NEUTRAL.")
    take_profit: float | None = Field(description="None for NEUTRAL.")
    bar_end: datetime = Field(description="End of the newest bar the model saw.")
    expires_at: datetime
    returns: dict[str, float] = Field(
        description="Predicted return per horizon label (15m, 1h, 4h, 12h), a fraction of the entry price."
    )


class HistoryRow(SignalRow):
    served: bool | None = Field(
        description="True when this version was the minute's champion (its signals were published and "
        "traded), False for a shadow challenger's row, None when the ledger has no row for the minute."
    )


_COLUMNS = (
    SignalRecord.symbol,
    SignalRecord.minute,
    SignalRecord.model_version,
    SignalRecord.direction,
    SignalRecord.confidence,
    SignalRecord.entry_price,
    SignalRecord.stop_loss,
    SignalRecord.take_profit,
    SignalRecord.bar_end,
    SignalRecord.expires_at,
    SignalRecord.returns,
)


def _row(r: Any) -> dict[str, Any]:
    return {
        "symbol": r.symbol,
        "minute": as_utc(r.minute),
        "model_version": r.model_version,
        "direction": r.direction,
        "confidence": float(r.confidence),
        "entry_price": float(r.entry_price),
        "stop_loss": None if r.stop_loss is None else float(r.stop_loss),
        "take_profit": None if r.take_profit is None else float(r.take_profit),
        "bar_end": as_utc(r.bar_end),
        "expires_at": as_utc(r.expires_at),
        # JSONB hands keys back in its own order: shortest horizon first again.
        "returns": {k: float(r.returns[k]) for k in _by_horizon(tuple(r.returns or {}))},
    }


@lru_cache(maxsize=64)
def _by_horizon(labels: tuple[str, ...]) -> tuple[str, ...]:
    """Horizon labels (``15m``, ``1h``) shortest first, unknown ones last (every row of a minute has
    the same labels: sorted once)."""

    def minutes(label: str) -> float:
        unit = {"m": 1, "h": 60, "d": 1440}.get(label[-1:])
        return float(label[:-1]) * unit if unit is not None and label[:-1].isdigit() else float("inf")

    return tuple(sorted(map(str, labels), key=minutes))


def _direction_condition(direction: DirectionFilter | None) -> list[Any]:
    if direction is None:
        return []
    if direction == "ACTIONABLE":
        return [SignalRecord.direction.in_(ACTIONABLE)]
    return [SignalRecord.direction == direction]


@dataclass(frozen=True)
class NewestMinute:
    """A version's newest minute (None when it has none since the lookback) and its matching rows."""

    minute: datetime | None
    rows: list[SignalRow]
    matched: int  # rows matching the filters, of which ``rows`` holds the first ``limit``


def newest_minute_signals(
    engine: Engine,
    version: str,
    *,
    since: datetime,
    limit: int,
    symbols: Sequence[str] | None = None,
    min_confidence: float | None = None,
    direction: DirectionFilter | None = None,
) -> NewestMinute:
    """The signals of ``version``'s newest minute at or after ``since`` that match the filters, most
    confident first: one query (the newest minute is a sub-select scanning the minute index back from
    the newest row; the rows of that minute come from the same index)."""
    s = SignalRecord
    newest = select(func.max(s.minute)).where(s.model_version == version, s.minute >= since).scalar_subquery()
    conditions = [s.minute == newest, s.model_version == version, *_direction_condition(direction)]
    if symbols is not None:
        conditions.append(s.symbol.in_(list(symbols)))
    if min_confidence is not None:
        conditions.append(s.confidence >= min_confidence)
    stmt = (
        select(*_COLUMNS, func.count().over().label("matched"))
        .where(*conditions)
        .order_by(s.confidence.desc(), s.symbol)
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
        if rows:
            return NewestMinute(
                as_utc(rows[0].minute), [SignalRow(**_row(r)) for r in rows], int(rows[0].matched)
            )
        # Nothing matched: say whether the version has a minute at all (the filters excluded its rows).
        minute = conn.execute(select(newest)).scalar()
    return NewestMinute(None if minute is None else as_utc(minute), [], 0)


def symbol_history(
    engine: Engine,
    symbol: str,
    *,
    since: datetime,
    until: datetime,
    limit: int,
    version: str | None = None,
) -> tuple[list[HistoryRow], bool]:
    """``symbol``'s signals in ``[since, until)``, newest first, at most ``limit`` (and whether more
    exist), each marked with whether its version served the minute as champion (the ledger's row)."""
    s = SignalRecord
    conditions = [s.symbol == symbol, s.minute >= since, s.minute < until]
    if version is not None:
        conditions.append(s.model_version == version)
    stmt = (
        select(*_COLUMNS, PipelineRun.model_version.label("champion"), PipelineRun.id.label("run"))
        .select_from(s)
        .outerjoin(PipelineRun, PipelineRun.minute == s.minute)
        .where(*conditions)
        .order_by(s.minute.desc(), s.model_version)
        .limit(limit + 1)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    out = [
        HistoryRow(**_row(r), served=None if r.run is None else r.champion == r.model_version)
        for r in rows[:limit]
    ]
    return out, len(rows) > limit


def symbols_with_signals(engine: Engine, symbols: Sequence[str]) -> set[str]:
    """Which of ``symbols`` have any stored signal (one index probe each: the unique key leads with
    the symbol)."""
    found: set[str] = set()
    with engine.connect() as conn:
        for symbol in dict.fromkeys(symbols):
            stmt = select(SignalRecord.symbol).where(SignalRecord.symbol == symbol).limit(1)
            if conn.execute(stmt).first() is not None:
                found.add(symbol)
    return found


def signals_at(engine: Engine, symbol: str, minute: datetime) -> list[SignalRecord]:
    """Every version's signal of ``symbol`` at ``minute`` (the champion's and a shadow's, at most)."""
    from sqlalchemy.orm import Session

    stmt = (
        select(SignalRecord)
        .where(SignalRecord.symbol == symbol, SignalRecord.minute == minute)
        .order_by(SignalRecord.model_version)
    )
    with Session(engine) as session:
        return list(session.scalars(stmt))


def prediction_at(engine: Engine, symbol: str, minute: datetime, version: str) -> MlPrediction | None:
    """The raw outputs stored beside the signal of ``symbol`` at ``minute`` by ``version``."""
    from sqlalchemy.orm import Session

    stmt = select(MlPrediction).where(
        MlPrediction.symbol == symbol, MlPrediction.minute == minute, MlPrediction.model_version == version
    )
    with Session(engine) as session:
        return session.scalars(stmt).first()


def champion_of_minute(engine: Engine, minute: datetime) -> str | None:
    """The version the ledger records as the minute's champion (None: no row, or a minute not run)."""
    with engine.connect() as conn:
        value = conn.execute(select(PipelineRun.model_version).where(PipelineRun.minute == minute)).scalar()
    return None if value is None else str(value)


def nearest_minutes(engine: Engine, symbol: str, minute: datetime) -> tuple[datetime | None, datetime | None]:
    """``symbol``'s signal minutes just before and just after ``minute`` (any version)."""
    s = SignalRecord
    with engine.connect() as conn:
        before = conn.execute(
            select(func.max(s.minute)).where(s.symbol == symbol, s.minute < minute)
        ).scalar()
        after = conn.execute(select(func.min(s.minute)).where(s.symbol == symbol, s.minute > minute)).scalar()
    return (None if before is None else as_utc(before), None if after is None else as_utc(after))


def newest_symbols(engine: Engine, version: str, since: datetime, count: int) -> list[str]:
    """A few symbols of ``version``'s newest minute (what an error message offers as valid)."""
    s = SignalRecord
    newest = select(func.max(s.minute)).where(s.model_version == version, s.minute >= since).scalar_subquery()
    stmt = (
        select(s.symbol).where(s.minute == newest, s.model_version == version).order_by(s.symbol).limit(count)
    )
    with engine.connect() as conn:
        return [r.symbol for r in conn.execute(stmt)]
