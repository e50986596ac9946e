"""``features`` queue: sync, validate and compute one chunk of symbols' feature windows
(``pipeline.stages.features_stage``)."""

from __future__ import annotations

from typing import Any

from celery import Task

from pipeline.stages import features_stage
from tasks.common import MINUTE_RETRY
from worker.app import app
from worker.runtime import get_runtime


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
    self: Task[Any, Any], symbols: list[str], minute: str, run_id: str, model_version: str
) -> list[dict[str, Any]]:
    """Returns one small reference per symbol; a failure is a value, never an exception.

    A transient error is retried by Celery's autoretry (the same chunk after a backoff, before the
    deadline) while retries are left; then the chunk's symbols fail alone.
    """
    return features_stage(
        get_runtime(),
        symbols,
        minute,
        run_id,
        model_version,
        may_retry=(self.request.retries or 0) < (self.max_retries or 0),
        redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
    )
