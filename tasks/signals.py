"""``signals`` queue: store the minute's signals once, publish them, enqueue the order intents
of the champion's (``pipeline.publish_service``); then store the shadow challenger's and publish them
on ``pipeline.shadow_channel``, never as orders."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipeline.publish_service import publish_minute
from tasks.common import MINUTE_RETRY
from tasks.orders import execute, tick
from trading.intents import OrderIntentMessage
from worker.app import app
from worker.runtime import get_runtime


class CeleryOrderQueue:
    """The ``OrderQueue`` port: the ``orders`` queue's tasks."""

    def send_tick(self, minute_iso: str, expires: datetime) -> str:
        return tick.apply_async(args=(minute_iso,), expires=expires).id

    def send_intent(self, intent: OrderIntentMessage) -> str:
        if intent.expires_at is None:
            return execute.apply_async(args=(intent.model_dump(mode="json"),)).id
        return execute.apply_async(args=(intent.model_dump(mode="json"),), expires=intent.expires_at).id


@app.task(
    name="tasks.signals.publish",
    # Idempotent through the unique key and the outbox columns: late acknowledgement is safe.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=20,
    time_limit=30,
    **MINUTE_RETRY,
)
def publish(
    result: dict[str, Any], minute: str, run: int, model_version: str, expires: str | None = None
) -> dict[str, Any]:
    """Chain step after inference; ``expires`` (ISO) bounds the order intents' life."""
    until = datetime.fromisoformat(expires) if expires else None
    return publish_minute(get_runtime(), CeleryOrderQueue(), result, minute, run, model_version, until)
