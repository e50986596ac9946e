"""``signals`` queue: store the minute's signals once, publish them, enqueue the order intents."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from core.logging import get_logger
from core.timegrid import as_utc
from pipeline.ledger import DONE, PARTIAL, PUBLISH
from pipeline.publishing import publish_heartbeat, publish_pending
from tasks.common import MINUTE_RETRY, deadline, minute_dt
from trading.intents import OrderIntentMessage, client_order_id
from worker.app import app
from worker.runtime import get_runtime

log = get_logger(__name__)

_DATETIME_FIELDS = ("minute", "bar_end", "expires_at")


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
    result: dict[str, Any], minute: str, run_id: str, run: int, model_version: str, expires: str | None = None
) -> dict[str, Any]:
    """Chain step after inference; ``expires`` (ISO) bounds the order intents' life."""
    rt = get_runtime()
    settings = rt.settings
    began = time.perf_counter()
    when = minute_dt(minute)
    rt.ledger.mark_stage(run, PUBLISH)
    signals = [_rows(doc) | {"schema_version": 1} for doc in result["signals"]]
    predictions = [_rows(doc) for doc in result["predictions"]]
    rt.signals.upsert(signals, predictions)
    stored_s = time.perf_counter() - began

    began = time.perf_counter()
    published = publish_pending(rt.signals, rt.bus, settings, when, model_version)
    pending = rt.signals.orders_pending(when, model_version)
    orders_expire = datetime.fromisoformat(expires) if expires else deadline(settings, minute)
    # Before the intents: the paper broker fills earlier orders and checks stops on the candles
    # that closed since the last minute (idempotent per minute: a redelivered publish is harmless).
    ticked = app.send_task("tasks.orders.tick", args=(minute,), expires=orders_expire)
    order_tasks: list[str] = []
    for row in pending:
        intent = OrderIntentMessage(
            client_order_id=client_order_id(row.symbol, row.minute, row.model_version),
            signal_id=row.id,
            symbol=row.symbol,
            minute=row.minute,
            model_version=row.model_version,
            direction=row.direction,
            confidence=row.confidence,
            entry_price=row.entry_price,
            stop_loss=row.stop_loss,
            take_profit=row.take_profit,
            # A replayed minute's signals expired long ago: its intents live as long as its tasks.
            expires_at=max(as_utc(row.expires_at), orders_expire),
        )
        # The message lives as long as the signal, not the minute: an intent of a killed orders worker
        # that Redis redelivers after its visibility timeout still executes (the executor decides it
        # once, and its order is valid until the signal expires).
        sent = app.send_task(
            "tasks.orders.execute", args=(intent.model_dump(mode="json"),), expires=intent.expires_at
        )
        order_tasks.append(sent.id)
    rt.signals.mark_orders_enqueued([r.id for r in pending])
    publish_s = time.perf_counter() - began

    failures: dict[str, str] = result.get("failures", {})
    all_rows = rt.signals.for_minute(when, model_version)
    actionable = sum(1 for r in all_rows if r.direction != "NEUTRAL")
    status = PARTIAL if failures else DONE
    timings = {f"inference_{k}": v for k, v in result.get("timings", {}).items()}
    timings |= result.get("feature_timings", {})
    timings |= {"store": round(stored_s, 4), "publish": round(publish_s, 4)}
    run_row = rt.ledger.get(when)
    if run_row is not None:
        # From the start of run_minute to now: the whole minute's wall time, replay or live.
        started = run_row.started_at
        started = as_utc(started)
        timings["minute_total"] = round(time.time() - started.timestamp(), 4)
    rt.ledger.update(
        run,
        status=status,
        signals_made=len(all_rows),
        failures=failures,
        timings=timings,
        note=result.get("note"),
        finished=True,
    )
    publish_heartbeat(
        rt.bus,
        settings,
        minute=when,
        status=status,
        model_version=model_version,
        symbols_asked=int(result.get("symbols_asked", len(all_rows) + len(failures))),
        signals=len(all_rows),
        actionable=actionable,
        failed=len(failures),
    )
    log.info(
        "minute published", minute=minute, signals=len(all_rows), published=published, orders=len(pending)
    )
    return {
        "minute": minute,
        "signals": len(all_rows),
        "published": published,
        "order_tasks": order_tasks,
        "tick_task": ticked.id,
    }


def _rows(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (minute_dt(v) if k in _DATETIME_FIELDS and isinstance(v, str) else v) for k, v in doc.items()}
