"""The minute's last stage, free of Celery: store the signals once, publish them, hand the orders
worker its per-minute step and one intent per actionable signal, and close the run.

Every part is idempotent, so a redelivered or re-dispatched publish only does what is missing: the
signals' unique key, the outbox columns (``published_at``, ``orders_enqueued_at``), the bus's
sent-ids and the intents' deterministic client order ids (docs/ML_INTEGRATION.md, "Failures").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core.logging import get_logger
from data.models import PipelineRun, SignalRecord
from pipeline.clock import deadline, minute_dt
from pipeline.ledger import DONE, PARTIAL, PUBLISH
from pipeline.ports import MinuteRuntime, OrderQueue
from pipeline.publishing import publish_heartbeat, publish_pending
from trading.intents import OrderIntentMessage, client_order_id

log = get_logger(__name__)

SIGNAL_SCHEMA_VERSION = 1
_DATETIME_FIELDS = ("minute", "bar_end", "expires_at")


def publish_minute(
    rt: MinuteRuntime,
    orders: OrderQueue,
    result: Mapping[str, Any],
    minute_iso: str,
    run: int,
    model_version: str,
    expires: datetime | None = None,
) -> dict[str, Any]:
    """Publish the minute ``result`` of the inference stage made for ledger row ``run``.

    ``expires`` bounds the order messages' life (default: the minute's deadline). Returns
    ``{"minute", "signals", "published", "order_tasks", "tick_task"}``.
    """
    settings = rt.settings
    when = minute_dt(minute_iso)
    began = time.perf_counter()
    rt.ledger.mark_stage(run, PUBLISH)
    signals = [_rows(doc) | {"schema_version": SIGNAL_SCHEMA_VERSION} for doc in result["signals"]]
    rt.signals.upsert(signals, [_rows(doc) for doc in result["predictions"]])
    stored_s = time.perf_counter() - began

    began = time.perf_counter()
    published = publish_pending(rt.signals, rt.bus, settings, when, model_version)
    orders_expire = expires or deadline(settings, minute_iso)
    tick_task, order_tasks = _send_orders(rt, orders, minute_iso, model_version, orders_expire)
    publish_s = time.perf_counter() - began

    failures: dict[str, str] = dict(result.get("failures", {}))
    all_rows = rt.signals.for_minute(when, model_version)
    status = PARTIAL if failures else DONE
    timings = _timings(result, rt.ledger.get(when), stored_s=stored_s, publish_s=publish_s)
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
        actionable=sum(1 for r in all_rows if r.direction != "NEUTRAL"),
        failed=len(failures),
    )
    log.info(
        "minute published",
        minute=minute_iso,
        signals=len(all_rows),
        published=published,
        orders=len(order_tasks),
    )
    return {
        "minute": minute_iso,
        "signals": len(all_rows),
        "published": published,
        "order_tasks": order_tasks,
        "tick_task": tick_task,
    }


def order_intent(row: SignalRecord, not_before: datetime) -> OrderIntentMessage:
    """The intent of an actionable signal; it lives as long as the signal, and at least until
    ``not_before`` (a replayed minute's signals expired long ago: its intents live as long as its
    tasks)."""
    return OrderIntentMessage(
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
        expires_at=max(row.expires_at, not_before),
    )


def _send_orders(
    rt: MinuteRuntime, orders: OrderQueue, minute_iso: str, model_version: str, expires: datetime
) -> tuple[str, list[str]]:
    """The per-minute step, then one intent per signal not yet enqueued; returns the task ids."""
    pending = rt.signals.orders_pending(minute_dt(minute_iso), model_version)
    # Before the intents: the paper broker fills earlier orders and checks stops on the candles
    # that closed since the last minute (idempotent per minute: a redelivered publish is harmless).
    tick_task = orders.send_tick(minute_iso, expires)
    # An intent's message lives as long as its signal, not the minute: one of a killed orders worker
    # that Redis redelivers after its visibility timeout still executes (the executor decides it
    # once, and its order is valid until the signal expires).
    order_tasks = [orders.send_intent(order_intent(row, expires)) for row in pending]
    rt.signals.mark_orders_enqueued([r.id for r in pending])
    return tick_task, order_tasks


def _timings(
    result: Mapping[str, Any], run_row: PipelineRun | None, *, stored_s: float, publish_s: float
) -> dict[str, float]:
    timings: dict[str, float] = {f"inference_{k}": v for k, v in result.get("timings", {}).items()}
    timings |= result.get("feature_timings", {})
    timings |= {"store": round(stored_s, 4), "publish": round(publish_s, 4)}
    if run_row is not None:
        # From the start of run_minute to now: the whole minute's wall time, replay or live.
        timings["minute_total"] = round(time.time() - run_row.started_at.timestamp(), 4)
    return timings


def _rows(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's JSON row with its ISO times as datetimes, ready for the signal store."""
    return {k: (minute_dt(v) if k in _DATETIME_FIELDS and isinstance(v, str) else v) for k, v in doc.items()}
