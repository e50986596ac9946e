"""``features`` queue: sync, validate and compute one chunk of symbols' feature windows."""

from __future__ import annotations

import time
from typing import Any

from celery import Task

from core.logging import get_logger
from core.timegrid import parse_minute
from pipeline.steps import WindowRef, feature_step
from tasks.common import MINUTE_RETRY, TRANSIENT_ERRORS
from worker.app import app
from worker.runtime import get_runtime

log = get_logger(__name__)


@app.task(
    name="tasks.features.compute_symbols",
    bind=True,
    # Idempotent (candle upserts, overwritten window keys): safe to acknowledge late and to rerun
    # when a worker dies mid-task.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=40,
    time_limit=50,
    **MINUTE_RETRY,
)
def compute_symbols(
    self: Task, symbols: list[str], minute: str, run_id: str, model_version: str
) -> list[dict[str, Any]]:
    """Returns one small reference per symbol; a failure is a value, never an exception."""
    rt = get_runtime()
    began = time.perf_counter()
    try:
        scaler = rt.scaler(model_version)
        refs = feature_step(
            store=rt.store,
            source=rt.source,
            windows=rt.windows,
            scaler=scaler,
            settings=rt.settings,
            symbols=symbols,
            minute_ms=parse_minute(minute),
            run_id=run_id,
            watermarks=rt.watermarks,
        )
    except TRANSIENT_ERRORS as exc:
        if (self.request.retries or 0) < (self.max_retries or 0):
            log.warning("feature chunk will be retried", minute=minute, error=f"{type(exc).__name__}: {exc}")
            raise  # Celery's autoretry: the same chunk again after a backoff, before the deadline
        refs = _failed(symbols, exc)
    except Exception as exc:  # one chunk's error must not break the minute's chord
        log.exception("feature chunk failed", minute=minute, symbols=len(symbols))
        refs = _failed(symbols, exc)
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    out = [r.to_json() for r in refs]
    elapsed = round(time.perf_counter() - began, 4)
    for doc in out:
        doc["chunk_seconds"] = elapsed
        if redelivered:
            doc["redelivered"] = True
    return out


def _failed(symbols: list[str], exc: BaseException) -> list[WindowRef]:
    return [WindowRef(s, False, reason=f"feature task error: {type(exc).__name__}: {exc}") for s in symbols]
