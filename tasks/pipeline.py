"""``control`` queue: the minute's entry point, fired by beat (or by hand with ``celery call``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import chord, group

from core.logging import get_logger
from core.timegrid import floor_minute, iso_minute, now_ms, parse_minute
from data.ledger import FAILED, RUNNING, SKIPPED_LATE
from data.publishing import publish_heartbeat
from tasks.common import chunks, deadline, minute_dt
from worker.app import app
from worker.runtime import Runtime, get_runtime

log = get_logger(__name__)


@app.task(
    name="tasks.pipeline.run_minute",
    # Not acks_late: a redelivered start could race the first one; the ledger row decides anyway.
    acks_late=False,
    soft_time_limit=20,
    time_limit=30,
)
def run_minute(minute: str | None = None, replay: bool = False) -> dict[str, Any]:
    """Start the minute's chord. ``minute`` is an ISO minute (default: the current one).

    ``replay`` runs a past minute on purpose (``mlsignals run --replay``, the benchmark): no
    lateness check, and the minute's tasks expire relative to now instead of to the minute.
    """
    return start_minute(get_runtime(), minute, replay=replay)


def start_minute(rt: Runtime, minute: str | None = None, *, replay: bool = False) -> dict[str, Any]:
    began = time.perf_counter()
    settings = rt.settings
    minute_ms = parse_minute(minute) if minute else floor_minute(now_ms())
    minute_iso = iso_minute(minute_ms)
    when = minute_dt(minute_iso)
    delay_s = (now_ms() - minute_ms) / 1000
    if delay_s < -1:
        return {"minute": minute_iso, "status": FAILED, "note": "minute is in the future"}
    if not replay and delay_s > settings.pipeline.max_start_delay_seconds:
        # Policy: a missed minute is recorded and skipped, never run late on stale data.
        limit = settings.pipeline.max_start_delay_seconds
        note = f"start {delay_s:.1f} s after the minute began (limit {limit} s)"
        if (
            rt.ledger.claim(when, status=SKIPPED_LATE, model_version=None, symbols_asked=0, note=note)
            is not None
        ):
            publish_heartbeat(
                rt.bus,
                settings,
                minute=when,
                status=SKIPPED_LATE,
                model_version=None,
                symbols_asked=0,
                signals=0,
                actionable=0,
                failed=0,
            )
        log.warning("minute skipped", minute=minute_iso, reason=note)
        return {"minute": minute_iso, "status": SKIPPED_LATE}
    if not rt.lock.acquire(minute_iso, ttl_seconds=int(settings.pipeline.minute_deadline_seconds) + 60):
        return {"minute": minute_iso, "status": "duplicate"}

    if not replay:
        overdue = rt.ledger.expire_overdue(
            when - timedelta(seconds=settings.pipeline.minute_deadline_seconds),
            "did not finish by its deadline: a worker died or a task expired before the callback ran",
        )
        if overdue:
            log.warning("overdue runs closed", runs=overdue)
    symbols = rt.symbols()
    version = rt.champion_version()
    if version is None:
        note = "no champion model in the registry (run `mlsignals model bootstrap`)"
        if (
            rt.ledger.claim(when, status=FAILED, model_version=None, symbols_asked=len(symbols), note=note)
            is not None
        ):
            publish_heartbeat(
                rt.bus,
                settings,
                minute=when,
                status=FAILED,
                model_version=None,
                symbols_asked=len(symbols),
                signals=0,
                actionable=0,
                failed=len(symbols),
            )
        return {"minute": minute_iso, "status": FAILED, "note": note}
    run = rt.ledger.claim(when, status=RUNNING, model_version=version, symbols_asked=len(symbols))
    if run is None:
        return {"minute": minute_iso, "status": "duplicate"}

    run_id = f"{minute_iso}/{run}"
    expires = (
        datetime.now(UTC) + timedelta(seconds=settings.pipeline.minute_deadline_seconds)
        if replay
        else deadline(settings, minute_iso)
    )
    size = settings.pipeline.symbols_per_task or settings.ml_integration.batch_size
    header = group(
        app.signature(
            "tasks.features.compute_symbols", args=(part, minute_iso, run_id, version), expires=expires
        )
        for part in chunks(symbols, size)
    )
    body = app.signature(
        "tasks.inference.predict_batch", args=(minute_iso, run_id, run, version), expires=expires
    ) | app.signature(
        "tasks.signals.publish", args=(minute_iso, run_id, run, version, expires.isoformat()), expires=expires
    )
    outcome = chord(header)(body)
    dispatch = time.perf_counter() - began
    rt.ledger.update(run, timings={"start_delay": round(delay_s, 4), "dispatch": round(dispatch, 4)})
    log.info("minute dispatched", minute=minute_iso, symbols=len(symbols), tasks=len(header.tasks))
    return {
        "minute": minute_iso,
        "status": RUNNING,
        "run": run,
        "symbols": len(symbols),
        "result_id": outcome.id,
    }
