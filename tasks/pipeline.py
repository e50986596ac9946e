"""``control`` queue: the minute's entry point (fired by beat, or by hand with ``celery call``) and
the minute supervisor that sees each running minute through to its deadline."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task, chord, group
from celery.result import AsyncResult

from core.logging import get_logger
from core.timegrid import dt_to_ms, floor_minute, iso_minute, now_ms, parse_minute
from pipeline.ledger import FAILED, RUNNING, SKIPPED_LATE, RunRef
from pipeline.publishing import publish_heartbeat
from tasks.common import MINUTE_RETRY, chunks, deadline, minute_dt
from worker.app import app
from worker.runtime import Runtime, get_runtime

log = get_logger(__name__)

MISSED_NOTE = "no run started for this minute: beat, the broker or the control worker was down"
OVERDUE_NOTE = "did not finish by its deadline: its tasks were lost or kept failing until they expired"
# A run is closed this long after its deadline: a publish that began before the deadline may end.
OVERDUE_GRACE_S = 5.0


@app.task(
    name="tasks.pipeline.run_minute",
    bind=True,
    # Not acks_late: a redelivered start could race the first one; the ledger row decides anyway.
    acks_late=False,
    soft_time_limit=20,
    time_limit=30,
    **MINUTE_RETRY,
)
def run_minute(self: Task, minute: str | None = None, replay: bool = False) -> dict[str, Any]:
    """Start the minute's chord. ``minute`` is an ISO minute (default: the current one).

    ``replay`` runs a past minute on purpose (``mlsignals run --replay``, the benchmark): no
    lateness check, and the minute's tasks expire relative to now instead of to the minute.
    A retry after a transient error keeps the minute of the first attempt.
    """
    if minute is None:
        minute = iso_minute(floor_minute(now_ms()))
        # So that an autoretry asks for the same minute, not the one current at the retry.
        self.request.args, self.request.kwargs = (), {"minute": minute, "replay": replay}
    return start_minute(get_runtime(), minute, replay=replay, retrying=bool(self.request.retries))


@app.task(name="tasks.pipeline.supervise", acks_late=False, soft_time_limit=10, time_limit=15)
def supervise() -> dict[str, Any]:
    """Fired by beat every few seconds: re-dispatch stalled minutes, close and announce lost ones."""
    return supervise_minutes(get_runtime())


def start_minute(
    rt: Runtime, minute: str | None = None, *, replay: bool = False, retrying: bool = False
) -> dict[str, Any]:
    began = time.perf_counter()
    settings = rt.settings
    minute_ms = parse_minute(minute) if minute else floor_minute(now_ms())
    minute_iso = iso_minute(minute_ms)
    when = minute_dt(minute_iso)
    delay_s = (now_ms() - minute_ms) / 1000
    if delay_s < -1:
        return {"minute": minute_iso, "status": FAILED, "note": "minute is in the future"}
    if not replay:
        record_missed(rt, when)
    if not replay and delay_s > settings.pipeline.max_start_delay_seconds:
        # Policy: a missed minute is recorded and skipped, never run late on stale data.
        limit = settings.pipeline.max_start_delay_seconds
        note = f"start {delay_s:.1f} s after the minute began (limit {limit} s)"
        _close_unrun(rt, when, SKIPPED_LATE, None, [], note)
        log.warning("minute skipped", minute=minute_iso, reason=note)
        return {"minute": minute_iso, "status": SKIPPED_LATE}
    # A retry took the lock itself before its transient error: the ledger row decides then.
    ttl = int(settings.pipeline.minute_deadline_seconds) + 60
    if not retrying and not rt.lock.acquire(minute_iso, ttl_seconds=ttl):
        return {"minute": minute_iso, "status": "duplicate"}

    if not replay:
        close_overdue(rt, datetime.now(UTC))
    symbols = rt.symbols()
    version = rt.champion_version()
    if version is None:
        note = "no champion model in the registry (run `mlsignals model bootstrap`)"
        _close_unrun(rt, when, FAILED, None, symbols, note)
        return {"minute": minute_iso, "status": FAILED, "note": note}
    run = rt.ledger.claim(when, status=RUNNING, model_version=version, symbols_asked=len(symbols))
    if run is None:
        return {"minute": minute_iso, "status": "duplicate"}

    expires = (
        datetime.now(UTC) + timedelta(seconds=settings.pipeline.minute_deadline_seconds)
        if replay
        else deadline(settings, minute_iso)
    )
    outcome, tasks = dispatch_chord(rt, minute_iso, run, version, symbols, expires, attempt=1)
    dispatch = time.perf_counter() - began
    rt.ledger.update(run, timings={"start_delay": round(delay_s, 4), "dispatch": round(dispatch, 4)})
    log.info("minute dispatched", minute=minute_iso, symbols=len(symbols), tasks=tasks)
    return {
        "minute": minute_iso,
        "status": RUNNING,
        "run": run,
        "symbols": len(symbols),
        "result_id": outcome.id,
    }


def dispatch_chord(
    rt: Runtime,
    minute_iso: str,
    run: int,
    version: str,
    symbols: list[str],
    expires: datetime,
    *,
    attempt: int,
) -> tuple[AsyncResult, int]:
    """Send the minute's chord: feature chunks, then inference, then publish; all expire together.

    Every step is idempotent, so a re-dispatch beside a slow first attempt only costs work.
    """
    settings = rt.settings
    # Each attempt writes its own feature windows: a late first attempt cannot mix into the second.
    run_id = f"{minute_iso}/{run}" if attempt == 1 else f"{minute_iso}/{run}.{attempt}"
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
    return chord(header)(body), len(header.tasks)


def record_missed(rt: Runtime, before: datetime) -> list[datetime]:
    """Give every minute before ``before`` that no run claimed a ``missed`` row and a heartbeat."""
    missed = rt.ledger.record_missed(
        before, lookback_minutes=rt.settings.pipeline.missed_lookback_minutes, note=MISSED_NOTE
    )
    for minute in missed:
        publish_heartbeat(
            rt.bus,
            rt.settings,
            minute=minute,
            status="missed",
            model_version=None,
            symbols_asked=0,
            signals=0,
            actionable=0,
            failed=0,
            note=MISSED_NOTE,
        )
    if missed:
        log.warning("minutes missed", first=iso_minute(dt_to_ms(missed[0])), count=len(missed))
    return missed


def close_overdue(rt: Runtime, now: datetime) -> list[RunRef]:
    """Close (``failed``) and announce runs still open after their deadline."""
    limit = rt.settings.pipeline.minute_deadline_seconds + OVERDUE_GRACE_S
    closed = rt.ledger.expire_overdue(now - timedelta(seconds=limit), OVERDUE_NOTE)
    for run in closed:
        publish_heartbeat(
            rt.bus,
            rt.settings,
            minute=run.minute,
            status=FAILED,
            model_version=run.model_version,
            symbols_asked=run.symbols_asked,
            signals=0,
            actionable=0,
            failed=run.symbols_asked,
            note=OVERDUE_NOTE,
        )
        minute_iso = iso_minute(dt_to_ms(run.minute))
        log.error("minute lost", minute=minute_iso, attempts=run.attempts, stage=run.stage)
    return closed


def supervise_minutes(rt: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """Re-dispatch each running minute whose stage has not moved for ``stall_seconds`` while enough
    of its deadline is left for another attempt; close the ones past their deadline."""
    now = now or datetime.now(UTC)
    p = rt.settings.pipeline
    closed = close_overdue(rt, now)
    redispatched: list[str] = []
    stalled = rt.ledger.stalled(
        now, stalled_for=p.stall_seconds, newer_than=now - timedelta(seconds=p.minute_deadline_seconds)
    )
    for run in stalled:
        minute_iso = iso_minute(dt_to_ms(run.minute))
        ends = deadline(rt.settings, minute_iso)
        if run.model_version is None or run.attempts >= p.max_attempts:
            continue
        if (ends - now).total_seconds() < p.stall_seconds:
            continue  # another attempt could not finish in time: the run is closed at its deadline
        attempt = run.attempts + 1
        note = f"re-dispatched (attempt {attempt}): stage {run.stage} stalled for {p.stall_seconds:g} s"
        if not rt.ledger.claim_redispatch(run, note):
            continue
        dispatch_chord(rt, minute_iso, run.id, run.model_version, rt.symbols(), ends, attempt=attempt)
        log.warning("minute re-dispatched", minute=minute_iso, attempt=attempt, stage=run.stage)
        redispatched.append(minute_iso)
    return {"closed": [iso_minute(dt_to_ms(r.minute)) for r in closed], "redispatched": redispatched}


def _close_unrun(
    rt: Runtime, when: datetime, status: str, version: str | None, symbols: list[str], note: str
) -> None:
    """Record a minute that will not run, and announce it once."""
    claimed = rt.ledger.claim(
        when, status=status, model_version=version, symbols_asked=len(symbols), note=note
    )
    if claimed is not None:
        publish_heartbeat(
            rt.bus,
            rt.settings,
            minute=when,
            status=status,
            model_version=version,
            symbols_asked=len(symbols),
            signals=0,
            actionable=0,
            failed=len(symbols),
            note=note,
        )
