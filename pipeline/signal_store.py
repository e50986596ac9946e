"""Signals and raw predictions: one-transaction upserts and the outbox columns behind publishing.

Unique key (symbol, minute, model version): a retried or redelivered callback inserts nothing new.
``published_at`` / ``orders_enqueued_at`` record what has been sent, so a callback that died after
the commit sends the rest on redelivery instead of losing it or sending everything twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from data.models import MlPrediction, SignalRecord


class SignalStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def upsert(self, signals: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]]) -> int:
        """Store a minute's signals and predictions in one transaction; returns new signal rows."""
        if not signals and not predictions:
            return 0
        with self.engine.begin() as conn:
            inserted = 0
            if signals:
                stmt = (
                    self._insert(SignalRecord)
                    .values(list(signals))
                    .on_conflict_do_nothing(index_elements=["symbol", "minute", "model_version"])
                    .returning(SignalRecord.id)
                )
                # RETURNING lists only the rows inserted; rowcount is not reliable for multi-row inserts.
                inserted = len(conn.execute(stmt).all())
            if predictions:
                conn.execute(
                    self._insert(MlPrediction)
                    .values(list(predictions))
                    .on_conflict_do_nothing(index_elements=["symbol", "minute", "model_version"])
                )
        return int(inserted)

    def unpublished(self, minute: datetime, model_version: str) -> list[SignalRecord]:
        return self._select(minute, model_version, SignalRecord.published_at.is_(None))

    def orders_pending(self, minute: datetime, model_version: str) -> list[SignalRecord]:
        return self._select(
            minute,
            model_version,
            SignalRecord.orders_enqueued_at.is_(None),
            SignalRecord.direction != "NEUTRAL",
        )

    def for_minute(self, minute: datetime, model_version: str | None = None) -> list[SignalRecord]:
        conditions = [] if model_version is None else [SignalRecord.model_version == model_version]
        with Session(self.engine) as session:
            stmt = (
                select(SignalRecord)
                .where(SignalRecord.minute == minute, *conditions)
                .order_by(SignalRecord.id)
            )
            return list(session.scalars(stmt))

    def mark_published(self, ids: Sequence[int]) -> None:
        self._stamp(ids, published_at=datetime.now(UTC))

    def mark_orders_enqueued(self, ids: Sequence[int]) -> None:
        self._stamp(ids, orders_enqueued_at=datetime.now(UTC))

    def latest(self, limit: int = 50) -> list[SignalRecord]:
        with Session(self.engine) as session:
            return list(session.scalars(select(SignalRecord).order_by(SignalRecord.id.desc()).limit(limit)))

    def _select(self, minute: datetime, model_version: str, *conditions: Any) -> list[SignalRecord]:
        with Session(self.engine) as session:
            stmt = (
                select(SignalRecord)
                .where(
                    SignalRecord.minute == minute, SignalRecord.model_version == model_version, *conditions
                )
                .order_by(SignalRecord.id)
            )
            return list(session.scalars(stmt))

    def _stamp(self, ids: Sequence[int], **values: datetime) -> None:
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(update(SignalRecord).where(SignalRecord.id.in_(list(ids))).values(**values))
