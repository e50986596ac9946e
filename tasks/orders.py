"""``orders`` queue: order intents become orders (``trading.executor``), and the per-minute step."""

from __future__ import annotations

from typing import Any

from celery import Task

from core.errors import TemporaryError
from core.logging import get_logger
from core.timegrid import parse_minute
from tasks.common import now_iso_minute
from trading.intents import OrderIntentMessage
from worker.app import app
from worker.runtime import get_runtime

log = get_logger(__name__)

# Backoff between retries of a temporary failure (exchange unreachable, outcome unknown).
MAX_RETRY_DELAY_S = 60.0


@app.task(
    name="tasks.orders.execute",
    bind=True,
    send_events=False,
    # The intent is persisted under its unique client order id before anything else, and decided
    # once under the account lock: a redelivered or duplicated message finds it decided and does
    # nothing twice (a live order left in doubt is looked up on the exchange before any resend).
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=20,
    time_limit=30,
)
def execute(self: Task, intent: dict[str, Any]) -> dict[str, Any]:
    message = OrderIntentMessage.model_validate(intent)
    trader = get_runtime().trader()
    try:
        return trader.execute(message).to_json()
    except TemporaryError as exc:
        limits = trader.settings.trading
        retries = int(self.request.retries or 0)
        if retries >= limits.max_retries:
            log.error("order intent gave up", client_order_id=message.client_order_id, error=str(exc))
            raise
        delay = min(limits.retry_base_delay_s * 2**retries, MAX_RETRY_DELAY_S)
        log.warning(
            "order intent retry", client_order_id=message.client_order_id, delay_s=delay, error=str(exc)
        )
        # No expiry on the retry: an order in doubt must be reconciled even after its minute.
        raise self.retry(exc=exc, countdown=delay, max_retries=limits.max_retries, expires=None) from exc


@app.task(
    name="tasks.orders.tick",
    # Idempotent per minute (the account's watermark and every position's own), so late
    # acknowledgement and redelivery are safe.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=40,
    time_limit=50,
)
def tick(minute: str | None = None) -> dict[str, Any]:
    """Paper: fill pending orders and check stops on the candles closed before ``minute``;
    live: reconcile orders, positions and cash with the exchange."""
    report = get_runtime().trader().tick(parse_minute(minute or now_iso_minute()))
    return report.to_json()
