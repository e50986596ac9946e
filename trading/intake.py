"""Persist order intents before anything is sent anywhere (idempotency by client order id)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from data.models import OrderIntent
from trading.intents import OrderIntentMessage
from trading.states import RECEIVED


def _values(intent: OrderIntentMessage) -> dict[str, object]:
    return {
        "client_order_id": intent.client_order_id,
        "symbol": intent.symbol,
        "minute": intent.minute,
        "model_version": intent.model_version,
        "direction": intent.direction,
        "confidence": intent.confidence,
        "entry_price": intent.entry_price,
        "stop_loss": intent.stop_loss,
        "take_profit": intent.take_profit,
        "status": RECEIVED,
    }


def record_intents(bind: Connection | Session, intents: Sequence[OrderIntentMessage]) -> dict[str, int]:
    """Store the intents in the caller's transaction; returns the new ones' ids by client order id.

    One statement for all of them; an id already recorded (a duplicate, a redelivery) is skipped by
    the unique constraint, as is the second of two equal ids in ``intents``.
    """
    if not intents:
        return {}
    dialect = (bind.get_bind() if isinstance(bind, Session) else bind).dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    unique = {i.client_order_id: i for i in reversed(intents)}
    stmt = (
        insert(OrderIntent)
        .values([_values(i) for i in unique.values()])
        .on_conflict_do_nothing(index_elements=["client_order_id"])
        .returning(OrderIntent.client_order_id, OrderIntent.id)
    )
    return {str(r[0]): int(r[1]) for r in bind.execute(stmt)}


def record_intent(engine: Engine, intent: OrderIntentMessage) -> bool:
    """Store one intent in its own transaction; ``False`` when its client order id was recorded."""
    with engine.begin() as conn:
        return bool(record_intents(conn, [intent]))
