"""``control`` queue, on the beat schedule: score the signals whose horizons have passed, then the
quality circuit breaker (``quality.service``, docs/SIGNAL_QUALITY.md)."""

from __future__ import annotations

from typing import Any

from ml.registry import Registry
from quality.service import run_quality
from tasks.common import TRANSIENT_ERRORS
from worker.app import app
from worker.runtime import get_runtime


@app.task(
    name="tasks.quality.score",
    # Idempotent (one transaction per minute and horizon, ON CONFLICT DO NOTHING): a redelivered or
    # overlapping run adds nothing twice, and a worker killed mid-run loses only uncommitted work.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=50,
    time_limit=55,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=2,
    retry_backoff=2,
    retry_jitter=True,
)
def score() -> dict[str, Any]:
    rt = get_runtime()
    if not rt.settings.quality.enabled:
        return {"enabled": False}
    return run_quality(
        rt.signals.engine,
        rt.settings,
        exchange=rt.source.name,
        registry=Registry(rt.settings.model.registry_dir),
    )
