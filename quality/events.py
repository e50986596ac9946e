"""The quality breaker's record and the kill switch it shares with the operator: every trip and
resume in ``quality_events``, written in the transaction that flips the switch. Light on purpose (no
numpy statistics, no torch): ``mlsignals trading resume`` records its resume through it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from core.settings import Settings
from data.models import QualityEvent
from trading.accounts import halt_state, set_halted
from trading.risk import code_of

REASON_CODE = "quality_breaker"
TRIP, RESUME = "trip", "resume"
# Who flipped the switch.
BREAKER, OPERATOR, PROMOTION = "breaker", "operator", "promotion"


def last_event(engine: Engine, kind: str | None = None) -> QualityEvent | None:
    stmt = select(QualityEvent).order_by(QualityEvent.id.desc()).limit(1)
    if kind is not None:
        stmt = stmt.where(QualityEvent.kind == kind)
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else QualityEvent(**row._asdict())


def events(engine: Engine, limit: int = 20) -> list[dict[str, Any]]:
    stmt = select(QualityEvent).order_by(QualityEvent.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r._asdict()) for r in conn.execute(stmt)]


def record(
    kind: str, source: str, version: str | None, reason: str, figures: dict[str, Any]
) -> Callable[[Connection], None]:
    """The event's insert, for ``set_halted(also=...)``: written with the switch or not at all."""

    def write(conn: Connection) -> None:
        conn.execute(
            insert(QualityEvent).values(
                at=datetime.now(UTC),
                kind=kind,
                source=source,
                model_version=version,
                reason=reason,
                figures=figures,
            )
        )

    return write


def resume(
    engine: Engine, settings: Settings, *, source: str, reason: str, champion: str | None = None
) -> bool:
    """Turn the kill switch off and record it; False (and nothing recorded) when it was off. The
    breaker's window restarts here: the signals before a resume do not count again."""
    halted, why = halt_state(engine, settings)
    if not halted:
        return False
    figures = {"previous_reason": why, "champion": champion}
    set_halted(engine, settings, False, also=record(RESUME, source, champion, reason, figures))
    return True


def resume_after_promotion(engine: Engine, settings: Settings, champion: str | None) -> bool:
    """Lift a breaker trip when the champion is no longer the version it tripped on; True if lifted."""
    halted, why = halt_state(engine, settings)
    if not halted or code_of(why) != REASON_CODE:
        return False
    trip = last_event(engine, TRIP)
    if champion is None or (trip is not None and trip.model_version == champion):
        return False
    return resume(engine, settings, source=PROMOTION, reason=f"{champion} became champion", champion=champion)
