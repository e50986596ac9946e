"""The minute's feature and inference stages as the tasks run them: the steps of ``pipeline.steps``
with the run's bookkeeping (ledger stage, failure policy) and small JSON in and out.

A stage's arguments and results are JSON values (symbols, ISO minutes, window references), never
arrays: they travel through the broker between the feature tasks and the inference task.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from core.logging import get_logger
from core.timegrid import parse_minute
from pipeline.errors import TRANSIENT_ERRORS
from pipeline.ledger import FAILED, INFERENCE
from pipeline.ports import FeatureRuntime, InferenceRuntime
from pipeline.steps import WindowRef, feature_step, inference_step

log = get_logger(__name__)

# Bookkeeping fields the feature stage adds to each reference.
_CHUNK_FIELDS = ("redelivered", "chunk_seconds")


def features_stage(
    rt: FeatureRuntime,
    symbols: list[str],
    minute_iso: str,
    run_id: str,
    model_version: str,
    *,
    may_retry: bool = False,
    redelivered: bool = False,
) -> list[dict[str, Any]]:
    """One chunk's windows: one small reference per symbol, a failure is a value.

    A transient error is raised while ``may_retry`` (the task retries the chunk before the
    deadline); after that, and on any other error, the chunk's symbols fail alone and the minute
    goes on without them. ``redelivered`` (the task came back after a worker loss) is noted.
    """
    began = time.perf_counter()
    try:
        refs = feature_step(
            store=rt.store,
            source=rt.source,
            windows=rt.windows,
            scaler=rt.scaler(model_version),
            settings=rt.settings,
            symbols=symbols,
            minute_ms=parse_minute(minute_iso),
            run_id=run_id,
            watermarks=rt.watermarks,
        )
    except TRANSIENT_ERRORS as exc:
        if may_retry:
            log.warning(
                "feature chunk will be retried", minute=minute_iso, error=f"{type(exc).__name__}: {exc}"
            )
            raise
        refs = _failed(symbols, exc)
    except Exception as exc:
        # The chord's boundary: whatever breaks one chunk (a bad candle, a scaler error) must not
        # break the minute's other chunks; its symbols carry the reason to the ledger instead.
        log.exception("feature chunk failed", minute=minute_iso, symbols=len(symbols))
        refs = _failed(symbols, exc)
    elapsed = round(time.perf_counter() - began, 4)
    out = [r.to_json() for r in refs]
    for doc in out:
        doc["chunk_seconds"] = elapsed
        if redelivered:
            doc["redelivered"] = True
    return out


def inference_stage(
    rt: InferenceRuntime,
    chunk_results: Sequence[Sequence[dict[str, Any]]],
    minute_iso: str,
    run: int,
    model_version: str,
) -> dict[str, Any]:
    """The minute's one batched forward pass over the feature stages' references (in chunk order).

    Returns ``inference_step``'s ``signals``, ``predictions``, ``failures`` and ``timings``, plus
    ``symbols_asked``, ``feature_timings`` and a ``note`` when feature work was redelivered. A
    transient error is raised for the task to retry; any other error closes the run as failed
    before it is raised. With ``quality.shadow_enabled`` the registry's challenger scores the same
    tensor after the champion (``shadow``: its rows, or the error that cost them; never an exception).
    """
    rt.ledger.mark_stage(run, INFERENCE)
    docs = [doc for part in chunk_results for doc in part]
    refs = [WindowRef.from_json({k: v for k, v in doc.items() if k not in _CHUNK_FIELDS}) for doc in docs]
    chunk_seconds = [float(part[0].get("chunk_seconds", 0.0)) for part in chunk_results if part]
    redelivered = sorted({doc["symbol"] for doc in docs if doc.get("redelivered")})
    # The shadow challenger scores the same tensor after the champion; its failure is a value.
    shadow = (
        (lambda tensor: rt.predict_shadow(tensor, model_version))
        if rt.settings.quality.shadow_enabled
        else None
    )
    try:
        result: dict[str, Any] = inference_step(
            refs=refs,
            windows=rt.windows,
            predict=lambda tensor: rt.predict(tensor, model_version),
            settings=rt.settings,
            minute_ms=parse_minute(minute_iso),
            shadow=shadow,
        )
    except TRANSIENT_ERRORS:
        raise  # retried; the supervisor closes the run if the retries outlast its deadline
    except Exception as exc:
        rt.ledger.update(
            run, status=FAILED, note=f"inference failed: {type(exc).__name__}: {exc}", finished=True
        )
        raise
    if "error" in result.get("shadow", {}):
        rt.count_shadow_failure()
    if redelivered:
        result["note"] = f"feature work for {len(redelivered)} symbols was redelivered after a worker loss"
    result["symbols_asked"] = len(refs)
    result["feature_timings"] = {
        "features_max_chunk": max(chunk_seconds, default=0.0),
        "features_sum": round(sum(chunk_seconds), 4),
    }
    return result


def _failed(symbols: list[str], exc: BaseException) -> list[WindowRef]:
    return [WindowRef(s, False, reason=f"feature task error: {type(exc).__name__}: {exc}") for s in symbols]
