"""Held-out evaluation: per-horizon accuracy and confusion against the majority class, information
coefficient per time and pooled, and the actionable signals' count and hit rate.

* **Accuracy** is the argmax class against the label; the **baseline** always predicts the class
  most frequent in the evaluated period itself (a stricter bar than the training majority).
* **IC** is Spearman's rank correlation of the predicted return (returns head) with the realised
  return. *Per time*: one correlation across the symbols of each anchor time (at least
  ``MIN_CROSS_SECTION`` of them), averaged; this removes the market factor that every symbol
  shares (docs/SIMULATOR.md). *Pooled*: one correlation over all samples.
* **Signals** are decoded with the configured rules (ml/decoding.py); a LONG (SHORT) is a *hit*
  when the realised return over the primary horizon is above (below) zero.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import spearmanr

from ml.dataset import Dataset
from ml.decoding import LONG, NEUTRAL, SHORT, DecodeRules, decode_arrays, softmax
from ml.model.config import DIRECTION_CLASSES
from ml.model.network import UnifiedPatchTST
from ml.model.schema import OutputSchema

MIN_CROSS_SECTION = 5
# Besides the configured threshold, actionable count and hit rate at these (reported, not used).
SWEEP_THRESHOLDS = (0.4, 0.45, 0.5, 0.55)
FloatArray = npt.NDArray[np.float64]


def _order_keys(x: FloatArray) -> npt.NDArray[np.intp]:
    """Dense ranks 0..k-1 of ``x``: equal values share one (-0.0 == 0.0), and the NaNs share the
    highest (NumPy's sort order puts them after every number, +inf included)."""
    return np.unique(x, return_inverse=True, equal_nan=True)[1]


def spearman(a: FloatArray, b: FloatArray) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``): ties share their average rank.

    NaN with fewer than two samples or when either side is constant (all tied). A NaN input does not
    make the result NaN: NaNs are ranked as equal to each other and above every number. Ranking the
    dense keys of ``_order_keys`` instead of the values gives the same ranks and hands SciPy finite
    input only, so its NaN policy and its constant-input warning never apply.
    """
    if a.shape[0] < 2:
        return float("nan")
    ka, kb = _order_keys(a), _order_keys(b)
    if ka.max() == 0 or kb.max() == 0:
        return float("nan")
    return float(spearmanr(ka, kb).statistic)


def ic_per_time(pred: FloatArray, real: FloatArray, times: npt.NDArray[np.int64]) -> tuple[float, int]:
    """Mean over anchor times of the cross-sectional Spearman correlation, and how many times counted."""
    order = np.argsort(times, kind="stable")
    t_sorted = times[order]
    cuts = np.flatnonzero(np.diff(t_sorted)) + 1
    values = []
    for group in np.split(order, cuts):
        if group.shape[0] >= MIN_CROSS_SECTION:
            v = spearman(pred[group], real[group])
            if np.isfinite(v):
                values.append(v)
    return (float(np.mean(values)) if values else float("nan")), len(values)


def predict_outputs(
    model: UnifiedPatchTST,
    ds: Dataset,
    idx: npt.NDArray[np.int64],
    device: torch.device,
    batch_size: int = 512,
) -> FloatArray:
    model.eval()
    out = np.empty((idx.shape[0], model.config.n_outputs), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, idx.shape[0], batch_size):
            part = idx[start : start + batch_size]
            xb = torch.from_numpy(ds.windows(part)).to(device)
            out[start : start + part.shape[0]] = model(xb).float().cpu().numpy()
    return out


def evaluate_outputs(
    outputs: FloatArray,
    temperature: float,
    schema: OutputSchema,
    ds: Dataset,
    idx: npt.NDArray[np.int64],
    rules: DecodeRules,
) -> dict[str, Any]:
    n_h = len(schema.horizons)
    n_c = len(DIRECTION_CLASSES)
    logits = outputs[:, n_h : n_h + n_h * n_c].reshape(-1, n_h, n_c)
    probs = softmax(logits, temperature)
    predicted = probs.argmax(axis=-1)
    true = ds.classes[idx]
    realised = ds.returns[idx]
    times = ds.anchor_ms[idx]
    horizons = []
    for h, bars in enumerate(schema.horizons):
        confusion = np.zeros((n_c, n_c), dtype=np.int64)
        np.add.at(confusion, (true[:, h], predicted[:, h]), 1)
        counts = confusion.sum(axis=1)
        majority = int(counts.argmax())
        n = int(counts.sum())
        ic_time, n_times = ic_per_time(outputs[:, h], realised[:, h], times)
        score = probs[:, h, 0] - probs[:, h, 1]
        ic_score, _ = ic_per_time(score, realised[:, h], times)
        accuracy = float(np.trace(confusion) / n) if n else float("nan")
        baseline = float(counts[majority] / n) if n else float("nan")
        horizons.append(
            {
                "horizon_bars": int(bars),
                "samples": n,
                "accuracy": accuracy,
                "majority_class": DIRECTION_CLASSES[majority],
                "majority_accuracy": baseline,
                "beats_majority": bool(accuracy > baseline),
                "class_counts": {c: int(k) for c, k in zip(DIRECTION_CLASSES, counts, strict=True)},
                "predicted_counts": {
                    c: int(k) for c, k in zip(DIRECTION_CLASSES, confusion.sum(axis=0), strict=True)
                },
                "confusion": confusion.tolist(),
                "ic_per_time": ic_time,
                "ic_pooled": spearman(outputs[:, h], realised[:, h]),
                "ic_times": n_times,
                "ic_direction_score_per_time": ic_score,
            }
        )
    primary = realised[:, rules.primary_horizon]
    signals = _signals(outputs, temperature, schema, ds.close[idx], primary, rules)
    sweep = [
        _signals(outputs, temperature, schema, ds.close[idx], primary, replace(rules, confidence_threshold=t))
        for t in SWEEP_THRESHOLDS
    ]
    return {
        "samples": int(idx.shape[0]),
        "symbols": int(np.unique(ds.symbol[idx]).shape[0]),
        "first_anchor_ms": int(times.min()) if times.size else None,
        "last_anchor_ms": int(times.max()) if times.size else None,
        "temperature": float(temperature),
        "horizons": horizons,
        "signals": {"primary_horizon_bars": int(schema.horizons[rules.primary_horizon]), **signals},
        "signals_by_threshold": sweep,
    }


def _signals(
    outputs: FloatArray,
    temperature: float,
    schema: OutputSchema,
    prices: FloatArray,
    realised: FloatArray,
    rules: DecodeRules,
) -> dict[str, Any]:
    decoded = decode_arrays(outputs, temperature, prices, rules, schema)
    act = decoded.direction != NEUTRAL
    hits = ((decoded.direction == LONG) & (realised > 0)) | ((decoded.direction == SHORT) & (realised < 0))
    signed = np.where(decoded.direction == LONG, realised, -realised)
    n_act = int(act.sum())
    return {
        "confidence_threshold": rules.confidence_threshold,
        "actionable": n_act,
        "long": int((decoded.direction == LONG).sum()),
        "short": int((decoded.direction == SHORT).sum()),
        "hit_rate": float(hits[act].mean()) if n_act else None,
        "mean_signed_return": float(signed[act].mean()) if n_act else None,
    }
