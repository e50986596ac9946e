"""The minute's control policy, free of Celery: whether and how a minute starts, and how a running
minute is seen through to its deadline (docs/ML_INTEGRATION.md, "How a minute flows", "Failures").

``start_minute`` decides once per minute: a late start is recorded and skipped, a second start loses
the lock or the ledger's unique row, a minute without a champion model is closed as failed; else
the minute's chord goes out through the ``ChordDispatch`` port. ``supervise_minutes`` re-dispatches
stalled minutes and closes lost ones. Every minute that will not run is announced by one heartbeat.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from core.logging import get_logger
from core.timegrid import dt_to_ms, floor_minute, iso_minute, ms_to_dt, now_ms, parse_minute
from pipeline.clock import deadline
from pipeline.ledger import FAILED, MISSED, RUNNING, SKIPPED_LATE, RunRef
from pipeline.ports import ChordDispatch, DispatchedChord, MinuteRuntime
from pipeline.publishing import publish_heartbeat

log = get_logger(__name__)

DUPLICATE = "duplicate"  # start_minute's answer when another start owns the minute
MISSED_NOTE = "no run started for this minute: beat, the broker or the control worker was down"
OVERDUE_NOTE = "did not finish by its deadline: its tasks were lost or kept failing until they expired"
NO_CHAMPION_NOTE = "no champion model in the registry (run `mlsignals model bootstrap`)"
# A run is closed this long after its deadline: a publish that began before the deadline may end.
OVERDUE_GRACE_S = 5.0
# The minute lock outlives the minute's deadline by this much.
LOCK_MARGIN_S = 60


def start_minute(
    rt: MinuteRuntime,
    dispatch: ChordDispatch,
    minute: str | None = None,
    *,
    replay: bool = False,
    retrying: bool = False,
) -> dict[str, Any]:
    """Start ``minute`` (ISO; default: the current one) once, through ``dispatch``.

    ``replay`` runs a past minute on purpose: no lateness check, no bookkeeping of other minutes,
    and the tasks expire relative to now. ``retrying`` is a retry of a start that took the lock
    itself before its transient error: the ledger row alone decides then.

    Returns ``{"minute", "status"}`` plus ``note`` (failed), or ``run``, ``symbols`` and
    ``result_id`` (the chord's final result) when the minute runs.
    """
    began = time.perf_counter()
    settings = rt.settings
    minute_ms = parse_minute(minute) if minute else floor_minute(now_ms())
    minute_iso = iso_minute(minute_ms)
    when = ms_to_dt(minute_ms)
    delay_s = (now_ms() - minute_ms) / 1000
    if delay_s < -1:
        return {"minute": minute_iso, "status": FAILED, "note": "minute is in the future"}
    if not replay:
        record_missed(rt, when)
        limit = settings.pipeline.max_start_delay_seconds
        if delay_s > limit:
            # Policy: a missed minute is recorded and skipped, never run late on stale data.
            note = f"start {delay_s:.1f} s after the minute began (limit {limit} s)"
            close_unrun(rt, when, SKIPPED_LATE, None, [], note)
            log.warning("minute skipped", minute=minute_iso, reason=note)
            return {"minute": minute_iso, "status": SKIPPED_LATE}
    ttl = int(settings.pipeline.minute_deadline_seconds) + LOCK_MARGIN_S
    if not retrying and not rt.lock.acquire(minute_iso, ttl_seconds=ttl):
        return {"minute": minute_iso, "status": DUPLICATE}
    if not replay:
        close_overdue(rt, datetime.now(UTC))

    symbols = rt.symbols()
    version = rt.champion_version()
    if version is None:
        close_unrun(rt, when, FAILED, None, symbols, NO_CHAMPION_NOTE)
        return {"minute": minute_iso, "status": FAILED, "note": NO_CHAMPION_NOTE}
    run = rt.ledger.claim(when, status=RUNNING, model_version=version, symbols_asked=len(symbols))
    if run is None:
        return {"minute": minute_iso, "status": DUPLICATE}

    expires = (
        datetime.now(UTC) + timedelta(seconds=settings.pipeline.minute_deadline_seconds)
        if replay
        else deadline(settings, minute_iso)
    )
    sent = dispatch_attempt(rt, dispatch, minute_iso, run, version, symbols, expires, attempt=1)
    timings = {"start_delay": round(delay_s, 4), "dispatch": round(time.perf_counter() - began, 4)}
    rt.ledger.update(run, timings=timings)
    log.info("minute dispatched", minute=minute_iso, symbols=len(symbols), tasks=sent.tasks)
    return {
        "minute": minute_iso,
        "status": RUNNING,
        "run": run,
        "symbols": len(symbols),
        "result_id": sent.result_id,
    }


def dispatch_attempt(
    rt: MinuteRuntime,
    dispatch: ChordDispatch,
    minute_iso: str,
    run: int,
    version: str,
    symbols: list[str],
    expires: datetime,
    *,
    attempt: int,
) -> DispatchedChord:
    """Send one attempt of the minute: its symbols in chunks of ``pipeline.symbols_per_task``.

    Every step is idempotent, so a re-dispatch beside a slow first attempt only costs work.
    """
    p = rt.settings.pipeline
    size = p.symbols_per_task or rt.settings.ml_integration.batch_size
    return dispatch(
        minute_iso, run, attempt_id(minute_iso, run, attempt), version, chunks(symbols, size), expires
    )


def attempt_id(minute_iso: str, run: int, attempt: int) -> str:
    """The name of one attempt's feature windows: a late first attempt cannot mix into the second."""
    return f"{minute_iso}/{run}" if attempt == 1 else f"{minute_iso}/{run}.{attempt}"


def chunks(items: list[str], size: int) -> list[list[str]]:
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def record_missed(rt: MinuteRuntime, before: datetime) -> list[datetime]:
    """Give every minute before ``before`` that no run claimed a ``missed`` row and a heartbeat."""
    missed = rt.ledger.record_missed(
        before, lookback_minutes=rt.settings.pipeline.missed_lookback_minutes, note=MISSED_NOTE
    )
    for minute in missed:
        _announce(rt, minute, MISSED, None, 0, MISSED_NOTE)
    if missed:
        log.warning("minutes missed", first=iso_minute(dt_to_ms(missed[0])), count=len(missed))
    return missed


def close_overdue(rt: MinuteRuntime, now: datetime) -> list[RunRef]:
    """Close (``failed``) and announce runs still open after their deadline (plus the grace)."""
    limit = rt.settings.pipeline.minute_deadline_seconds + OVERDUE_GRACE_S
    closed = rt.ledger.expire_overdue(now - timedelta(seconds=limit), OVERDUE_NOTE)
    for run in closed:
        _announce(rt, run.minute, FAILED, run.model_version, run.symbols_asked, OVERDUE_NOTE)
        minute_iso = iso_minute(dt_to_ms(run.minute))
        log.error("minute lost", minute=minute_iso, attempts=run.attempts, stage=run.stage)
    return closed


def close_unrun(
    rt: MinuteRuntime, when: datetime, status: str, version: str | None, symbols: list[str], note: str
) -> int | None:
    """Record a minute that will not run, and announce it once: only the start that claims the
    minute's row sends its heartbeat. Returns the row's id, ``None`` when the minute had one."""
    claimed = rt.ledger.claim(
        when, status=status, model_version=version, symbols_asked=len(symbols), note=note
    )
    if claimed is not None:
        _announce(rt, when, status, version, len(symbols), note)
    return claimed


def supervise_minutes(
    rt: MinuteRuntime, dispatch: ChordDispatch, now: datetime | None = None
) -> dict[str, list[str]]:
    """Re-dispatch each running minute whose stage has not moved for ``stall_seconds`` while enough
    of its deadline is left for another attempt; close the ones past their deadline.

    Returns ``{"closed": [...], "redispatched": [...]}`` (ISO minutes).
    """
    now = now or datetime.now(UTC)
    p = rt.settings.pipeline
    closed = close_overdue(rt, now)
    stalled = rt.ledger.stalled(
        now, stalled_for=p.stall_seconds, newer_than=now - timedelta(seconds=p.minute_deadline_seconds)
    )
    redispatched = [m for run in stalled if (m := _redispatch(rt, dispatch, run, now)) is not None]
    return {"closed": [iso_minute(dt_to_ms(r.minute)) for r in closed], "redispatched": redispatched}


def _redispatch(rt: MinuteRuntime, dispatch: ChordDispatch, run: RunRef, now: datetime) -> str | None:
    """Dispatch a stalled run again if it may have another attempt; returns its ISO minute if so."""
    p = rt.settings.pipeline
    minute_iso = iso_minute(dt_to_ms(run.minute))
    ends = deadline(rt.settings, minute_iso)
    if run.model_version is None or run.attempts >= p.max_attempts:
        return None
    if (ends - now).total_seconds() < p.stall_seconds:
        return None  # another attempt could not finish in time: the run is closed at its deadline
    attempt = run.attempts + 1
    note = f"re-dispatched (attempt {attempt}): stage {run.stage} stalled for {p.stall_seconds:g} s"
    if not rt.ledger.claim_redispatch(run, note):
        return None  # another supervisor took this attempt
    dispatch_attempt(rt, dispatch, minute_iso, run.id, run.model_version, rt.symbols(), ends, attempt=attempt)
    log.warning("minute re-dispatched", minute=minute_iso, attempt=attempt, stage=run.stage)
    return minute_iso


def _announce(
    rt: MinuteRuntime, minute: datetime, status: str, version: str | None, symbols_asked: int, note: str
) -> None:
    """The heartbeat of a minute that made no signals: every symbol it asked for failed."""
    publish_heartbeat(
        rt.bus,
        rt.settings,
        minute=minute,
        status=status,
        model_version=version,
        symbols_asked=symbols_asked,
        signals=0,
        actionable=0,
        failed=symbols_asked,
        note=note,
    )
