"""The minute's last stage, free of Celery: store the signals once, publish them, hand the orders
worker its per-minute step and one intent per actionable signal, and close the run.

Every part is idempotent, so a redelivered or re-dispatched publish only does what is missing: the
signals' unique key, the outbox columns (``published_at``, ``orders_enqueued_at``), the bus's
sent-ids and the intents' deterministic client order ids (docs/ML_INTEGRATION.md, "Failures").

The shadow challenger's rows (``result["shadow"]``, docs/SIGNAL_QUALITY.md) are stored under their
own version and published on ``pipeline.shadow_channel`` after the champion's minute is closed and
announced, so they can neither delay nor fail it. They are **never traded**: order intents are made
only from rows of the champion's version (``_send_orders`` selects by it and refuses any other), and
a shadow section that names the champion's own version is dropped. The ledger row, the heartbeat
and the returned counts describe the champion alone.
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
    ``{"minute", "signals", "published", "order_tasks", "tick_task"}``, the champion's, plus
    ``"shadow"`` (``publish_shadow``'s summary) when the shadow challenger scored the minute.
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
    shadow: Mapping[str, Any] | None = result.get("shadow")
    notes = [result.get("note")]
    if shadow is not None and shadow.get("error"):
        notes.append(f"shadow challenger skipped: {shadow['error']}")
    rt.ledger.update(
        run,
        status=status,
        signals_made=len(all_rows),
        failures=failures,
        timings=timings,
        note="; ".join(n for n in notes if n) or None,
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
    out: dict[str, Any] = {
        "minute": minute_iso,
        "signals": len(all_rows),
        "published": published,
        "order_tasks": order_tasks,
        "tick_task": tick_task,
    }
    if shadow is not None and shadow.get("version"):
        out["shadow"] = publish_shadow(rt, shadow, when, model_version)
    return out


def publish_shadow(
    rt: MinuteRuntime, shadow: Mapping[str, Any], minute: datetime, champion_version: str
) -> dict[str, Any]:
    """Store the shadow challenger's rows and publish them on ``pipeline.shadow_channel``; never
    their orders. Whatever fails here is logged and reported, never raised: the champion's minute is
    closed already. Returns ``{"version", "signals", "published"}`` (``error`` on a failure)."""
    version = str(shadow["version"])
    out: dict[str, Any] = {"version": version, "signals": 0, "published": 0}
    if version == champion_version:
        # Its rows would be the champion's own (same unique key): tradable. Never.
        log.error("shadow rows under the champion's version dropped", version=version)
        return out | {"error": "the shadow version is the champion's"}
    try:
        signals = [_rows(doc) | {"schema_version": SIGNAL_SCHEMA_VERSION} for doc in shadow["signals"]]
        if any(doc["model_version"] != version for doc in signals):
            raise ValueError(f"shadow rows of a version other than {version}")
        rt.signals.upsert(signals, [_rows(doc) for doc in shadow["predictions"]])
        out["published"] = publish_pending(rt.signals, rt.bus, rt.settings, minute, version, shadow=True)
        out["signals"] = len(rt.signals.for_minute(minute, version))
    except Exception as exc:
        log.exception("shadow signals not stored or published", version=version, minute=minute.isoformat())
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


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
    rt: MinuteRuntime, orders: OrderQueue, minute_iso: str, champion_version: str, expires: datetime
) -> tuple[str, list[str]]:
    """The per-minute step, then one intent per signal of the champion not yet enqueued; returns
    the task ids.

    Only the champion's signals are ever traded: the rows are selected by ``champion_version`` (the
    version the minute's ledger row records), and a row of any other version, such as the shadow
    challenger's in the same table, is refused here even if a selection returned it.
    """
    selected = rt.signals.orders_pending(minute_dt(minute_iso), champion_version)
    pending = [row for row in selected if row.model_version == champion_version]
    if len(pending) != len(selected):
        log.error(
            "signals of another version than the champion's refused for trading",
            minute=minute_iso,
            champion=champion_version,
            versions=sorted({r.model_version for r in selected} - {champion_version}),
        )
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
