"""``orders`` queue: record each order intent exactly once (execution proper: trading/, issue 6)."""

from __future__ import annotations

from typing import Any

from trading.intake import record_intent
from trading.intents import OrderIntentMessage
from worker.app import app
from worker.runtime import get_runtime


@app.task(
    name="tasks.orders.execute",
    # The intent is persisted under its unique client order id before anything else: a redelivered
    # or duplicated message finds it there and does nothing twice.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=20,
    time_limit=30,
)
def execute(intent: dict[str, Any]) -> dict[str, Any]:
    message = OrderIntentMessage.model_validate(intent)
    created = record_intent(get_runtime().store.engine, message)
    return {"client_order_id": message.client_order_id, "created": created}
