"""``inference`` queue (a dedicated solo worker, GPU when there is one): one batched forward pass."""

from __future__ import annotations

from typing import Any

from core.timegrid import parse_minute
from pipeline.ledger import FAILED, INFERENCE
from pipeline.steps import WindowRef, inference_step
from tasks.common import MINUTE_RETRY, TRANSIENT_ERRORS
from worker.app import app
from worker.runtime import get_runtime

# Bookkeeping fields a feature task adds to each reference.
_TASK_FIELDS = ("redelivered", "chunk_seconds")


@app.task(
    name="tasks.inference.predict_batch",
    # Pure function of stored windows: safe to acknowledge late and to run again.
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=30,
    time_limit=40,
    **MINUTE_RETRY,
)
def predict_batch(
    chunk_results: list[list[dict[str, Any]]], minute: str, run_id: str, run: int, model_version: str
) -> dict[str, Any]:
    """Chord callback: ``chunk_results`` are the feature tasks' references, in chunk order."""
    rt = get_runtime()
    rt.ledger.mark_stage(run, INFERENCE)
    docs = [doc for part in chunk_results for doc in part]
    refs = [WindowRef.from_json({k: v for k, v in doc.items() if k not in _TASK_FIELDS}) for doc in docs]
    chunk_seconds = [float(part[0].get("chunk_seconds", 0.0)) for part in chunk_results if part]
    redelivered = sorted({doc["symbol"] for doc in docs if doc.get("redelivered")})
    try:
        result = inference_step(
            refs=refs,
            windows=rt.windows,
            predict=lambda tensor: rt.predict(tensor, model_version),
            settings=rt.settings,
            minute_ms=parse_minute(minute),
        )
    except TRANSIENT_ERRORS:
        raise  # retried; the supervisor closes the run if the retries outlast its deadline
    except Exception as exc:
        rt.ledger.update(
            run, status=FAILED, note=f"inference failed: {type(exc).__name__}: {exc}", finished=True
        )
        raise
    if redelivered:
        result["note"] = f"feature work for {len(redelivered)} symbols was redelivered after a worker loss"
    result["symbols_asked"] = len(refs)
    result["feature_timings"] = {
        "features_max_chunk": max(chunk_seconds, default=0.0),
        "features_sum": round(sum(chunk_seconds), 4),
    }
    return result
