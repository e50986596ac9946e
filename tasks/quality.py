"""``control`` queue, on the beat schedule: score the signals whose horizons have passed, then the
quality circuit breaker, then the champion's feature drift (``quality.service``,
docs/SIGNAL_QUALITY.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ml.features.spec import FEATURE_SPEC
from ml.registry import Registry
from pipeline.minute_service import attempt_id
from pipeline.window_store import WindowStore, window_key
from quality.service import run_quality
from tasks.common import TRANSIENT_ERRORS
from worker.app import app
from worker.runtime import get_runtime


class PipelineWindows:
    """The drift pass's view of the minute pipeline's window store (``quality.drift.LiveWindows``):
    the pipeline's window keys, and each store's own newest-row read."""

    def __init__(
        self,
        store: WindowStore,
        *,
        context: int = FEATURE_SPEC.context,
        n_features: int = FEATURE_SPEC.n_features,
    ) -> None:
        self.store = store
        self.shape = (context, n_features)

    def key(self, minute_iso: str, run: int, attempt: int, symbol: str) -> str:
        return window_key(attempt_id(minute_iso, run, attempt), symbol)

    def newest_rows(self, keys: Sequence[str]) -> list[npt.NDArray[np.float32] | None]:
        return self.store.newest_rows(keys, self.shape)


@app.task(
    name="tasks.quality.score",
    # Idempotent (one transaction per minute and horizon, ON CONFLICT DO NOTHING): a redelivered or
    # overlapping run adds nothing twice, and a worker killed mid-run loses only uncommitted work.
    # The drift pass counts each ledger run's windows once too (quality.drift).
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
        windows=PipelineWindows(rt.windows),
    )
