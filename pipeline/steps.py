"""The minute pipeline's model-side steps as plain functions (the Celery tasks only call these).

``feature_step``: make sure the newest closed candles are stored (the stream's watermark, else
REST), read the anchored bars, judge each window's quality, compute the scaled ``float32`` windows
and park them in the window store. Each symbol ends ``ok`` with a key, or with a reason; one
symbol's failure never stops the others.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from core.logging import get_logger
from core.settings import Settings
from core.timegrid import MINUTE_MS, iso_minute
from data.freshness import ensure_closed_candles
from data.sources.base import CandleSource
from data.store import CandleStore
from data.stream.watermark import WatermarkStore
from ml.decoding import decode
from ml.features import FEATURE_SPEC, build_live_batch
from ml.features.live import Scaler
from ml.outputs import ModelOutputs, horizon_label
from pipeline.window_store import WindowStore, window_key

log = get_logger(__name__)


@dataclass(frozen=True)
class WindowRef:
    """What a feature task returns per symbol: small JSON, never the matrix itself."""

    symbol: str
    ok: bool
    key: str | None = None
    reason: str | None = None
    bar_end_ms: int | None = None
    close: float | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> WindowRef:
        return cls(**doc)  # type: ignore[arg-type]


def feature_step(
    *,
    store: CandleStore,
    source: CandleSource,
    windows: WindowStore,
    scaler: Scaler,
    settings: Settings,
    symbols: Sequence[str],
    minute_ms: int,
    run_id: str,
    watermarks: WatermarkStore | None = None,
) -> list[WindowRef]:
    failures = ensure_closed_candles(
        store, source, settings, symbols, minute_ms, watermarks=watermarks
    ).failures
    usable = [s for s in symbols if s not in failures]
    if usable:
        panel = store.read_bars(
            source.name, usable, minute_ms, FEATURE_SPEC.window, settings.data.bar_minutes
        )
        failures |= panel.quality_reasons(
            FEATURE_SPEC.context,
            settings.pipeline.max_filled_share,
            settings.pipeline.min_real_share_newest_bar,
        )
    refs = [WindowRef(symbol=s, ok=False, reason=failures[s]) for s in symbols if s in failures]
    usable = [s for s in usable if s not in failures]
    if not usable:
        return refs
    if len(usable) < len(panel.symbols):
        panel = panel.subset(usable)
    batch = build_live_batch(panel, scaler)
    stored = {window_key(run_id, s): batch.tensor[i] for i, s in enumerate(batch.symbols)}
    windows.put_many(stored, settings.pipeline.feature_ttl_seconds)
    close = dict(zip(panel.symbols, panel.close[:, -1], strict=True))
    bar_end = int(panel.bar_open_ms[-1]) + settings.data.bar_minutes * MINUTE_MS
    for symbol in usable:
        quality = batch.quality.get(symbol)
        if symbol in batch.symbols:
            refs.append(
                WindowRef(
                    symbol,
                    True,
                    key=window_key(run_id, symbol),
                    bar_end_ms=bar_end,
                    close=float(close[symbol]),
                )
            )
        else:
            reason = (
                quality.reason if quality is not None and quality.reason else "rejected by the feature stage"
            )
            refs.append(WindowRef(symbol, False, reason=reason))
    order = {s: i for i, s in enumerate(symbols)}
    refs.sort(key=lambda r: order[r.symbol])
    return refs


def inference_step(
    *,
    refs: Sequence[WindowRef],
    windows: WindowStore,
    predict: Callable[[npt.NDArray[np.float32]], ModelOutputs],
    settings: Settings,
    minute_ms: int,
    shadow: Callable[[npt.NDArray[np.float32]], ModelOutputs | None] | None = None,
) -> dict[str, object]:
    """Fetch every window in one round trip, run one batched forward pass, decode every row.

    Returns JSON-ready ``signals`` and ``predictions`` rows plus per-symbol ``failures``.

    ``shadow`` (the shadow challenger, docs/SIGNAL_QUALITY.md) is called with the same tensor once the
    champion's forward pass is done, in a thread of its own while this one decodes the champion's rows
    (on a GPU the challenger's kernels then run while the CPU decodes); its rows go under ``"shadow"``
    (``version``, ``signals``, ``predictions``) and its times under ``timings["shadow_forward"]`` (the
    call), ``["shadow_wait"]`` (what it added after the champion's rows) and ``["shadow_decode"]``.
    Whatever it raises is logged and recorded as ``{"shadow": {"error": ...}}``: the champion's rows
    stand.
    """
    failures = {r.symbol: r.reason or "failed" for r in refs if not r.ok}
    ready = [r for r in refs if r.ok and r.key]
    began = time.perf_counter()
    shape = (FEATURE_SPEC.context, FEATURE_SPEC.n_features)
    fetched = windows.get_many([r.key or "" for r in ready], shape)
    present = [(r, w) for r, w in zip(ready, fetched, strict=True) if w is not None]
    for r, w in zip(ready, fetched, strict=True):
        if w is None:
            failures[r.symbol] = "feature window expired or missing before inference"
    fetch_s = time.perf_counter() - began
    if not present:
        return {"signals": [], "predictions": [], "failures": failures, "timings": {"fetch": fetch_s}}
    tensor = np.stack([w for _, w in present]).astype(np.float32, copy=False)
    began = time.perf_counter()
    model = predict(tensor)
    forward_s = time.perf_counter() - began
    pending = _in_background(shadow, tensor) if shadow is not None else None
    present_refs = [r for r, _ in present]
    signals, predictions = _model_rows(present_refs, model, settings, minute_ms)
    timings: dict[str, float] = {
        "fetch": round(fetch_s, 4),
        "forward": round(forward_s, 4),
        "batch": len(present),
    }
    result: dict[str, object] = {
        "signals": signals,
        "predictions": predictions,
        "failures": failures,
        "timings": timings,
    }
    if pending is not None:
        shadow_doc = _shadow_rows(present_refs, pending, settings, minute_ms, timings)
        if shadow_doc is not None:
            result["shadow"] = shadow_doc
    return result


def _in_background(
    call: Callable[[npt.NDArray[np.float32]], ModelOutputs | None], tensor: npt.NDArray[np.float32]
) -> Future[tuple[ModelOutputs | None, float]]:
    """``call(tensor)`` and its duration, in a thread of its own (one per minute: a pool's threads would
    not survive the fork of a prefork worker's children)."""
    future: Future[tuple[ModelOutputs | None, float]] = Future()

    def run() -> None:
        began = time.perf_counter()
        try:
            future.set_result((call(tensor), time.perf_counter() - began))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which decides
            future.set_exception(exc)

    threading.Thread(target=run, name="shadow-challenger", daemon=True).start()
    return future


def _shadow_rows(
    refs: Sequence[WindowRef],
    pending: Future[tuple[ModelOutputs | None, float]],
    settings: Settings,
    minute_ms: int,
    timings: dict[str, float],
) -> dict[str, object] | None:
    """The shadow challenger's rows, or why there are none; None when there was none to score."""
    began = time.perf_counter()
    try:
        model, forward_s = pending.result()
        wait_s = time.perf_counter() - began
        if model is None:
            return None
        began = time.perf_counter()
        signals, predictions = _model_rows(refs, model, settings, minute_ms)
    except Exception as exc:  # noqa: BLE001
        # The isolation boundary: a broken challenger (bad weights, a CUDA error, outputs that do not
        # decode) costs its own rows, never the champion's minute.
        error = f"{type(exc).__name__}: {exc}"
        log.warning("shadow challenger skipped", minute=iso_minute(minute_ms), error=error)
        return {"error": error}
    timings["shadow_forward"] = round(forward_s, 4)
    timings["shadow_wait"] = round(wait_s, 4)
    timings["shadow_decode"] = round(time.perf_counter() - began, 4)
    return {"version": model.version, "signals": signals, "predictions": predictions}


def _model_rows(
    refs: Sequence[WindowRef], model: ModelOutputs, settings: Settings, minute_ms: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """One model's decoded ``signals`` and raw ``predictions`` rows, in ``refs`` order."""
    prices = np.array([r.close for r in refs], dtype=np.float64)
    decoded = decode(model.outputs, model.temperature, prices, settings, model.schema)
    minute = iso_minute(minute_ms)
    expires = iso_minute(minute_ms + settings.decoding.signal_ttl_minutes * MINUTE_MS)
    labels = [horizon_label(h, model.schema.bar_minutes) for h in model.schema.horizons]
    signals: list[dict[str, object]] = []
    predictions: list[dict[str, object]] = []
    bar_ends: dict[int, str] = {}  # one string per distinct bar end (all symbols share one, mostly)
    for ref, sig, row in zip(refs, decoded, model.outputs.tolist(), strict=True):
        bar_end_ms = int(ref.bar_end_ms or minute_ms)
        bar_end = bar_ends.get(bar_end_ms) or bar_ends.setdefault(bar_end_ms, iso_minute(bar_end_ms))
        signals.append(
            {
                "symbol": ref.symbol,
                "minute": minute,
                "model_version": model.version,
                "bar_end": bar_end,
                "direction": sig.direction,
                "confidence": sig.confidence,
                "probabilities": {
                    label: {"long": p[0], "short": p[1], "flat": p[2]}
                    for label, p in zip(labels, sig.probabilities, strict=True)
                },
                "returns": dict(zip(labels, sig.returns, strict=True)),
                "risk": dict(zip(sig.risk_names, sig.risk, strict=True)),
                "entry_price": sig.entry_price,
                "stop_loss": sig.stop_loss,
                "take_profit": sig.take_profit,
                "expires_at": expires,
            }
        )
        predictions.append(
            {
                "symbol": ref.symbol,
                "minute": minute,
                "model_version": model.version,
                "outputs": row,
                "temperature": model.temperature,
            }
        )
    return signals, predictions
