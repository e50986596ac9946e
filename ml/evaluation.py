"""Held-out evaluation a quant can check: skill against the majority class and against simple
baselines with honest error bars, calibration, what the signals earn net of costs, and a backtest.

Per horizon (``evaluate_outputs``):

* **Classification**: accuracy and macro-F1 of the argmax class against the labels (market-neutral
  classes, ml/dataset.py); the **majority** baseline always predicts the class most frequent in the
  evaluated period itself (a stricter bar than the training majority). Macro-F1 averages the
  per-class ``2 TP / (2 TP + FP + FN)`` over the classes that occur as a label or a prediction.
* **IC** (information coefficient): Spearman's rank correlation of a prediction with the realised
  return across the symbols of one anchor time (at least ``MIN_CROSS_SECTION`` of them), one value
  per time, averaged. Within one time a rank of raw returns equals the rank of market-neutral ones,
  so the market factor every symbol shares plays no part. *Pooled* (one correlation over all
  samples) is reported for the network too. The network's score is its returns head; the baselines
  (ml/baselines.py: ridge, logistic ``p_LONG - p_SHORT``, the past-1 h-return feature) are fitted on
  the version's training rows.
* **Error bars**: consecutive per-time ICs are not independent (a ``h``-bar return overlaps the next
  ``h - 1`` anchors' returns, and the effect the model finds persists), so the standard error of the
  mean IC is the **Newey–West** (Bartlett kernel) long-run standard error of the per-time series with
  lag ``L`` = the number of IC observations one horizon spans (``horizon_bars`` × anchors per bar:
  the horizon in bars with one phase), ``SE² = (γ₀ + 2 Σ_{l≤L} (1 - l/(L+1)) γ_l) / n``. The 95 %
  interval is ``mean ± 1.96 SE``. The network is compared with the **best baseline** (highest mean
  IC on the same period) by the *paired* difference of the two per-time series on the times both
  have, with its own Newey–West SE; ``beats_best_baseline`` is ``difference > 2 SE``.
* **Calibration**: top-label expected calibration error over ``CALIBRATION_BINS`` equal-width bins
  of the top probability (``Σ n_b / N · |accuracy_b - confidence_b|``), the reliability table, and
  the multiclass log-loss against the log-loss of predicting the period's own class frequencies
  (its entropy).

Signals (primary horizon, decoded by ml/decoding.py with the configured rules): the share of rows
actionable, the LONG/SHORT counts and mix next to the period's realised up/down share, and per
direction the hit rate and mean return gross and net of ``rules.round_trip_cost``, on market-neutral
returns (what the labels measure) and on raw returns; plus the non-overlapping backtest of
ml/backtest.py. ``summarize`` picks the primary horizon's headline.

Everything returned is plain JSON types; NaN stays ``float('nan')`` until ``json_ready`` (or the
registry) turns it into ``null``. Long per-time series (the IC series, the equity curve) sit under a
period's ``"series"`` key, which ``without_series`` drops before metrics are stored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import spearmanr

from core.timegrid import MINUTE_MS
from ml.backtest import run_backtest
from ml.dataset import Dataset
from ml.decoding import LONG, NEUTRAL, SHORT, DecodeRules, decode_arrays, softmax
from ml.model.config import DIRECTION_CLASSES
from ml.model.network import UnifiedPatchTST
from ml.model.schema import OutputSchema

MIN_CROSS_SECTION = 5
# Besides the configured threshold, actionable count and hit rate at these (reported, not used).
SWEEP_THRESHOLDS = (0.4, 0.45, 0.5, 0.55)
CALIBRATION_BINS = 10
Z95 = 1.959963984540054
BEAT_SE = 2.0
FloatArray = npt.NDArray[np.float64]


# -- rank correlation ---------------------------------------------------------------------------------
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


def _group_ranks(values: FloatArray, group: npt.NDArray[np.intp], starts: npt.NDArray[np.intp]) -> FloatArray:
    """0-based ranks of ``values`` within each group (``group``: dense ids, ``starts``: each group's
    first position in group order), ties sharing their average rank and NaNs ranked as equal to
    each other and above every number, as ``spearman`` ranks them."""
    keys = _order_keys(values)
    order = np.lexsort((keys, group))
    g, k = group[order], keys[order]
    position = np.arange(order.shape[0], dtype=np.float64) - starts[g]
    new_run = np.concatenate([[True], (g[1:] != g[:-1]) | (k[1:] != k[:-1])])
    run = np.cumsum(new_run) - 1
    average = np.bincount(run, weights=position) / np.bincount(run)
    ranks = np.empty(order.shape[0])
    ranks[order] = average[run]
    return ranks


def ic_series(
    pred: FloatArray, real: FloatArray, times: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """(every distinct anchor time ascending, its cross-sectional Spearman correlation); NaN where
    fewer than ``MIN_CROSS_SECTION`` samples share the time or either side is constant there.

    Vectorised over the times (ranks within each time, then one Pearson correlation of the ranks
    per time): the same values as ``spearman`` per group, without a SciPy call per time.
    """
    unique, group, counts = np.unique(times, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    if unique.size == 0:
        return unique.astype(np.int64), np.empty(0)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rp = _group_ranks(np.asarray(pred, dtype=np.float64), group, starts)
    rr = _group_ranks(np.asarray(real, dtype=np.float64), group, starts)
    # Ranks 0..n-1 average (n - 1) / 2 in every group, ties included.
    centre = (counts[group] - 1) / 2.0
    dp, dr = rp - centre, rr - centre
    cov = np.bincount(group, weights=dp * dr, minlength=unique.size)
    vp = np.bincount(group, weights=dp * dp, minlength=unique.size)
    vr = np.bincount(group, weights=dr * dr, minlength=unique.size)
    ok = (counts >= MIN_CROSS_SECTION) & (vp > 0) & (vr > 0)
    values = np.full(unique.size, np.nan)
    values[ok] = np.clip(cov[ok] / np.sqrt(vp[ok] * vr[ok]), -1.0, 1.0)
    return unique.astype(np.int64), values


def ic_per_time(pred: FloatArray, real: FloatArray, times: npt.NDArray[np.int64]) -> tuple[float, int]:
    """Mean over anchor times of the cross-sectional Spearman correlation, and how many times counted."""
    _, values = ic_series(pred, real, times)
    finite = values[np.isfinite(values)]
    return (float(np.mean(finite)) if finite.size else float("nan")), int(finite.size)


# -- error bars -----------------------------------------------------------------------------------------
def newey_west_se(x: FloatArray, lag: int) -> float:
    """Newey–West (Bartlett kernel) standard error of the mean of the series ``x`` (finite values,
    in time order) with ``lag`` autocovariances; NaN below two values."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    e = x - x.mean()
    lrv = float(e @ e) / n
    for k in range(1, min(int(lag), n - 1) + 1):
        lrv += 2.0 * (1.0 - k / (lag + 1.0)) * float(e[k:] @ e[:-k]) / n
    return math.sqrt(max(lrv, 0.0) / n)


def naive_se(x: FloatArray) -> float:
    """The i.i.d. standard error of the mean (what Newey–West reduces to with lag 0)."""
    return newey_west_se(x, 0)


def mean_ci(x: FloatArray, lag: int) -> dict[str, Any]:
    """Mean of the finite values of ``x`` with its Newey–West SE and 95 % interval."""
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    mean = float(v.mean()) if v.size else float("nan")
    se = newey_west_se(v, lag)
    return {
        "mean": mean,
        "se": se,
        "ci_low": mean - Z95 * se,
        "ci_high": mean + Z95 * se,
        "times": int(v.size),
    }


def paired_difference(a: FloatArray, b: FloatArray, lag: int) -> dict[str, Any]:
    """``a - b`` on the positions where both are finite, as ``mean_ci``, plus ``beats`` (> 2 SE)."""
    both = np.isfinite(a) & np.isfinite(b)
    out = mean_ci(a[both] - b[both], lag)
    out = {"difference": out.pop("mean"), **out}
    out["beats"] = bool(np.isfinite(out["se"]) and out["difference"] > BEAT_SE * out["se"])
    return out


def lag_steps(times: npt.NDArray[np.int64], horizon_bars: int, bar_ms: int) -> int:
    """Newey–West lag: how many consecutive IC observations one horizon spans (the horizon in bars
    when the anchors are one bar apart, more with several phases)."""
    unique = np.unique(times)
    if unique.size < 2:
        return int(horizon_bars)
    step = float(np.median(np.diff(unique)))
    per_bar = max(1, round(bar_ms / step)) if step > 0 else 1
    return int(horizon_bars * per_bar)


# -- classification -------------------------------------------------------------------------------------
def confusion_matrix(true: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64], n_c: int) -> Any:
    confusion = np.zeros((n_c, n_c), dtype=np.int64)
    np.add.at(confusion, (true, predicted), 1)
    return confusion


def macro_f1(confusion: npt.NDArray[np.int64]) -> float:
    """Mean per-class F1 over the classes that occur as a label or as a prediction (a rows-true,
    columns-predicted confusion matrix)."""
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not present.any():
        return float("nan")
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())


def calibration(
    probs: FloatArray, labels: npt.NDArray[np.int64], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Top-label ECE and reliability table over ``bins`` equal-width bins of the top probability, and
    the log-loss against the period's class-frequency log-loss."""
    n, n_c = probs.shape
    if n == 0:
        return {
            "ece": float("nan"),
            "bins": [],
            "log_loss": float("nan"),
            "class_frequency_log_loss": float("nan"),
        }
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    table = []
    ece = 0.0
    for b in range(bins):
        sel = which == b
        count = int(sel.sum())
        conf = float(confidence[sel].mean()) if count else float("nan")
        acc = float(correct[sel].mean()) if count else float("nan")
        if count:
            ece += count / n * abs(acc - conf)
        table.append(
            {
                "bin": b,
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": count,
                "mean_confidence": conf,
                "accuracy": acc,
            }
        )
    p_true = np.clip(probs[np.arange(n), labels], 1e-15, 1.0)
    freq = np.bincount(labels, minlength=n_c) / n
    nz = freq[freq > 0]
    log_loss = float(-np.log(p_true).mean())
    base = float(-(nz * np.log(nz)).sum())
    return {
        "ece": float(ece),
        "bins": table,
        "log_loss": log_loss,
        "class_frequency_log_loss": base,
        "beats_class_frequency": bool(log_loss < base),
    }


# -- the network's outputs ----------------------------------------------------------------------------
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


def _opt(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _horizon_ic(
    network: FloatArray,
    baselines: Mapping[str, FloatArray],
    realised: FloatArray,
    times: npt.NDArray[np.int64],
    lag: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(IC block of one horizon, its per-time series)."""
    series_times, net = ic_series(network, realised, times)
    scores = {"network": net} | {name: ic_series(p, realised, times)[1] for name, p in baselines.items()}
    block: dict[str, Any] = {"se_method": "newey_west", "lag": int(lag)}
    block |= {name: mean_ci(values, lag) for name, values in scores.items()}
    block["best_baseline"] = None
    block["vs_best_baseline"] = None
    ranked = [(name, block[name]["mean"]) for name in baselines if np.isfinite(block[name]["mean"])]
    if ranked:
        best = max(ranked, key=lambda item: item[1])[0]
        diff = paired_difference(net, scores[best], lag)
        block["best_baseline"] = best
        block["vs_best_baseline"] = {
            "baseline": best,
            "difference": diff["difference"],
            "se": diff["se"],
            "ci_low": diff["ci_low"],
            "ci_high": diff["ci_high"],
            "times": diff["times"],
            "beats_best_baseline": diff["beats"],
        }
    series = {"time_ms": series_times.tolist()} | {name: v.tolist() for name, v in scores.items()}
    return block, series


def evaluate_outputs(
    outputs: FloatArray,
    temperature: float,
    schema: OutputSchema,
    ds: Dataset,
    idx: npt.NDArray[np.int64],
    rules: DecodeRules,
    *,
    baselines: Mapping[str, FloatArray] | None = None,
) -> dict[str, Any]:
    """The report of one period: the samples ``idx`` of ``ds``, the network's ``outputs`` for them and
    the baselines' scores (name to ``[len(idx), H]``, ml/baselines.py) when given."""
    baselines = baselines or {}
    n_h = len(schema.horizons)
    n_c = len(DIRECTION_CLASSES)
    bar_ms = schema.bar_minutes * MINUTE_MS
    logits = outputs[:, n_h : n_h + n_h * n_c].reshape(-1, n_h, n_c)
    probs = softmax(logits, temperature)
    predicted = probs.argmax(axis=-1)
    true = ds.classes[idx]
    realised = ds.returns[idx]
    times = ds.anchor_ms[idx]
    horizons = []
    ic_series_by_h = []
    for h, bars in enumerate(schema.horizons):
        confusion = confusion_matrix(true[:, h], predicted[:, h], n_c)
        counts = confusion.sum(axis=1)
        majority = int(counts.argmax())
        n = int(counts.sum())
        majority_confusion = confusion_matrix(true[:, h], np.full(n, majority, dtype=np.int64), n_c)
        score = probs[:, h, 0] - probs[:, h, 1]
        ic_score, _ = ic_per_time(score, realised[:, h], times)
        lag = lag_steps(times, int(bars), bar_ms)
        ic_block, series = _horizon_ic(
            outputs[:, h], {k: v[:, h] for k, v in baselines.items()}, realised[:, h], times, lag
        )
        ic_series_by_h.append({"horizon_bars": int(bars), **series})
        accuracy = float(np.trace(confusion) / n) if n else float("nan")
        baseline = float(counts[majority] / n) if n else float("nan")
        horizons.append(
            {
                "horizon_bars": int(bars),
                "samples": n,
                "accuracy": accuracy,
                "macro_f1": macro_f1(confusion),
                "majority_class": DIRECTION_CLASSES[majority],
                "majority_accuracy": baseline,
                "majority_macro_f1": macro_f1(majority_confusion),
                "beats_majority": bool(accuracy > baseline),
                "class_counts": {c: int(k) for c, k in zip(DIRECTION_CLASSES, counts, strict=True)},
                "predicted_counts": {
                    c: int(k) for c, k in zip(DIRECTION_CLASSES, confusion.sum(axis=0), strict=True)
                },
                "confusion": confusion.tolist(),
                "ic_per_time": ic_block["network"]["mean"],
                "ic_pooled": spearman(outputs[:, h], realised[:, h]),
                "ic_times": ic_block["network"]["times"],
                "ic_direction_score_per_time": ic_score,
                "ic": ic_block,
                "calibration": calibration(probs[:, h], true[:, h]),
            }
        )
    p = rules.primary_horizon
    primary = realised[:, p]
    neutral = ds.neutral_returns[idx][:, p]
    decoded = decode_arrays(outputs, temperature, ds.close[idx], rules, schema)
    signals = _signals(decoded.direction, primary, neutral, rules)
    sweep = [
        _legacy_signals(
            decode_arrays(
                outputs, temperature, ds.close[idx], replace(rules, confidence_threshold=t), schema
            ).direction,
            primary,
            t,
        )
        for t in SWEEP_THRESHOLDS
    ]
    backtest = run_backtest(
        times,
        ds.symbol[idx],
        ds.phase[idx],
        decoded.direction,
        primary,
        neutral,
        horizon_bars=int(schema.horizons[p]),
        bar_minutes=schema.bar_minutes,
        round_trip_cost=rules.round_trip_cost,
    )
    curve = backtest.pop("series")
    return {
        "samples": int(idx.shape[0]),
        "symbols": int(np.unique(ds.symbol[idx]).shape[0]),
        "first_anchor_ms": int(times.min()) if times.size else None,
        "last_anchor_ms": int(times.max()) if times.size else None,
        "temperature": float(temperature),
        "baselines": sorted(baselines),
        "horizons": horizons,
        "signals": {"primary_horizon_bars": int(schema.horizons[p]), **signals},
        "signals_by_threshold": sweep,
        "backtest": backtest,
        "series": {"ic": ic_series_by_h, "backtest": curve},
    }


def _direction_returns(signed: FloatArray, cost: float) -> dict[str, Any]:
    n = int(signed.shape[0])
    gross = float(signed.mean()) if n else float("nan")
    return {
        "hit_rate": float((signed > 0).mean()) if n else float("nan"),
        "mean_gross": gross,
        "mean_net": gross - cost,
    }


def _signals(
    direction: npt.NDArray[np.int64], raw: FloatArray, neutral: FloatArray, rules: DecodeRules
) -> dict[str, Any]:
    """Actionable share and mix, the period's realised up/down share, and per direction the hit rate
    and mean return gross and net of the round-trip cost (market-neutral and raw)."""
    rows = int(direction.shape[0])
    act = direction != NEUTRAL
    n_act = int(act.sum())
    n_long, n_short = int((direction == LONG).sum()), int((direction == SHORT).sum())
    by_direction = {}
    for name, code, sign in (("LONG", LONG, 1.0), ("SHORT", SHORT, -1.0)):
        sel = direction == code
        by_direction[name] = {
            "count": int(sel.sum()),
            "neutral": _direction_returns(sign * neutral[sel], rules.round_trip_cost),
            "raw": _direction_returns(sign * raw[sel], rules.round_trip_cost),
        }
    legacy = _legacy_signals(direction, raw, rules.confidence_threshold)
    return {
        **legacy,
        "edge_margin": rules.edge_margin,
        "round_trip_cost": rules.round_trip_cost,
        "rows": rows,
        "actionable_share": n_act / rows if rows else float("nan"),
        "long_share": n_long / n_act if n_act else float("nan"),
        "short_share": n_short / n_act if n_act else float("nan"),
        "realised_up_share": float((raw > 0).mean()) if rows else float("nan"),
        "realised_down_share": float((raw < 0).mean()) if rows else float("nan"),
        "by_direction": by_direction,
    }


def _legacy_signals(
    direction: npt.NDArray[np.int64], realised: FloatArray, threshold: float
) -> dict[str, Any]:
    """Count and raw-return hit rate of the actionable rows (the figures of earlier versions)."""
    act = direction != NEUTRAL
    hits = ((direction == LONG) & (realised > 0)) | ((direction == SHORT) & (realised < 0))
    signed = np.where(direction == LONG, realised, -realised)
    n_act = int(act.sum())
    return {
        "confidence_threshold": threshold,
        "actionable": n_act,
        "long": int((direction == LONG).sum()),
        "short": int((direction == SHORT).sum()),
        "hit_rate": float(hits[act].mean()) if n_act else None,
        "mean_signed_return": float(signed[act].mean()) if n_act else None,
    }


# -- the headline ---------------------------------------------------------------------------------------
def summarize(report: Mapping[str, Any], primary_horizon: int) -> dict[str, Any]:
    """The primary horizon's headline of one period's report (``evaluate_outputs``)."""
    h = report["horizons"][primary_horizon]
    ic = h["ic"]
    vs = ic.get("vs_best_baseline") or {}
    best = ic.get("best_baseline")
    sig = report["signals"]
    by_dir = sig.get("by_direction", {})
    bt = report.get("backtest", {})
    return {
        "horizon_bars": h["horizon_bars"],
        "samples": report["samples"],
        "network_ic": ic["network"]["mean"],
        "network_ic_se": ic["network"]["se"],
        "best_baseline": best,
        "best_baseline_ic": ic[best]["mean"] if best else float("nan"),
        "difference": vs.get("difference", float("nan")),
        "difference_se": vs.get("se", float("nan")),
        "beats_best_baseline": bool(vs.get("beats_best_baseline", False)),
        "accuracy": h["accuracy"],
        "majority_accuracy": h["majority_accuracy"],
        "ece": {str(x["horizon_bars"]): x["calibration"]["ece"] for x in report["horizons"]},
        "actionable_share": sig.get("actionable_share", float("nan")),
        "long_share": sig.get("long_share", float("nan")),
        "short_share": sig.get("short_share", float("nan")),
        "net_return": {d: by_dir[d]["neutral"]["mean_net"] for d in by_dir},
        "net_return_raw": {d: by_dir[d]["raw"]["mean_net"] for d in by_dir},
        "backtest_sharpe": bt.get("raw", {}).get("sharpe", float("nan")),
        "backtest_sharpe_neutral": bt.get("neutral", {}).get("sharpe", float("nan")),
    }


def without_series(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``metrics`` without the periods' long ``series`` (what the registry stores)."""
    return {
        k: ({kk: vv for kk, vv in v.items() if kk != "series"} if isinstance(v, Mapping) else v)
        for k, v in metrics.items()
    }


def json_ready(value: Any) -> Any:
    """``value`` as plain JSON types: NumPy scalars and arrays converted, non-finite floats None."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _opt(float(value))
    return value
