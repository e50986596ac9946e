"""``orders`` queue: order intents become orders (``trading.executor``), and the per-minute step."""

from __future__ import annotations

from typing import Any

from celery import Task

from core.logging import get_logger
from core.settings import get_settings
from core.timegrid import floor_minute, now_ms, parse_minute
from tasks.common import MINUTE_RETRY, TRANSIENT_ERRORS
from trading.intents import OrderIntentMessage
from worker.app import app
from worker.runtime import get_runtime

log = get_logger(__name__)

# Celery's autoretry reads its options from the task when the module is imported, like every other
# task option (time limits, acks): the worker's settings at start-up decide, a change needs a worker
# restart. Celery's backoff factor is whole seconds (``retry_backoff`` below 1 counts as 1).
_RETRY = get_settings().trading
MAX_RETRY_DELAY_S = 60


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
    # A temporary failure (exchange unreachable, outcome unknown, a dropped database connection) is
    # retried with exponential backoff and full jitter: a countdown drawn from
    # [0, min(60, base * 2**retries)] seconds.
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=_RETRY.max_retries,
    retry_backoff=max(1, round(_RETRY.retry_base_delay_s)),
    retry_backoff_max=MAX_RETRY_DELAY_S,
    retry_jitter=True,
    # No expiry on the retry: an order in doubt must be reconciled even after its minute. (The retry
    # message otherwise inherits the request's options, the minute's deadline among them.)
    retry_kwargs={"expires": None},
)
def execute(self: Task[Any, Any], intent: dict[str, Any]) -> dict[str, Any]:
    message = OrderIntentMessage.model_validate(intent)
    trader = get_runtime().trader()
    try:
        return trader.execute(message).to_json()
    except TRANSIENT_ERRORS as exc:
        retries = int(self.request.retries or 0)
        context = {"client_order_id": message.client_order_id, "retries": retries, "error": str(exc)}
        if self.max_retries is not None and retries >= self.max_retries:
            log.error("order intent gave up", **context)
        else:
            log.warning("order intent will be retried", **context)
        raise  # Celery's autoretry schedules the retry, or re-raises once max_retries is spent


@app.task(
    name="tasks.orders.tick",
    # Idempotent per minute (the account's watermark and every position's own), so late
    # acknowledgement and redelivery are safe.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=40,
    time_limit=50,
    **MINUTE_RETRY,
)
def tick(minute: str | None = None) -> dict[str, Any]:
    """Paper: fill pending orders and check stops on the candles closed before ``minute``;
    live: reconcile orders, positions and cash with the exchange."""
    report = get_runtime().trader().tick(parse_minute(minute) if minute else floor_minute(now_ms()))
    return report.to_json()
