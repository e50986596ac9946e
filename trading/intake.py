"""Persist an order intent before anything is sent anywhere (idempotency by client order id)."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from data.models import OrderIntent
from trading.intents import OrderIntentMessage

RECEIVED = "received"


def record_intent(engine: Engine, intent: OrderIntentMessage) -> bool:
    """Store the intent; ``False`` when this client order id was already recorded."""
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        insert(OrderIntent)
        .values(
            client_order_id=intent.client_order_id,
            symbol=intent.symbol,
            minute=intent.minute,
            model_version=intent.model_version,
            direction=intent.direction,
            confidence=intent.confidence,
            entry_price=intent.entry_price,
            stop_loss=intent.stop_loss,
            take_profit=intent.take_profit,
            status=RECEIVED,
        )
        .on_conflict_do_nothing(index_elements=["client_order_id"])
        .returning(OrderIntent.id)
    )
    with engine.begin() as conn:
        return conn.execute(stmt).first() is not None
