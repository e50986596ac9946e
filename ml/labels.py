"""Training targets from future anchored bars (DESIGN.md §5), for one symbol and one bar phase.

For the bar ending at anchor ``t`` (row ``t``, the newest bar a live signal at ``t`` sees):

* ``return_h = close[t+h] / close[t] - 1`` for each horizon ``h`` (bars);
* ``class_h`` = LONG (0) if ``return_h > threshold_h``, SHORT (1) if ``return_h < -threshold_h``,
  else FLAT (2): the band including its edges is FLAT. ``make_labels`` classifies the symbol's own
  return; the training samples (``ml.dataset``) classify the market-neutral return instead, with
  the same ``direction_classes``, once all symbols of an anchor time are known; or, with
  ``direction_labels="tercile"`` (the training recipes' setting), by ``tercile_classes``: the top
  third of the cross-section's market-neutral returns at that anchor time is LONG, the bottom third
  SHORT, the middle FLAT, so the class frequencies are a third each in every regime;
* ``drawdown_w = max(0, 1 - min(low[t+1..t+w]) / close[t])`` and
  ``rally_w = max(0, max(high[t+1..t+w]) / close[t] - 1)`` for the risk windows ``w`` (4 and 16
  bars), in the order of ``ml.model.config.RISK_NAMES``.

A row has labels only when every bar ``t+1 .. t+max(horizons, windows)`` is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from ml.model.config import RISK_NAMES, RISK_WINDOWS

LONG, SHORT, FLAT = 0, 1, 2

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Labels:
    returns: FloatArray  # [n, H]
    classes: npt.NDArray[np.int64]  # [n, H]
    risk: FloatArray  # [n, 4] in RISK_NAMES order
    valid: npt.NDArray[np.bool_]  # [n] every label of the row is defined


def direction_classes(returns: FloatArray, thresholds: FloatArray) -> npt.NDArray[np.int64]:
    out = np.full(returns.shape, FLAT, dtype=np.int64)
    out[returns > thresholds] = LONG
    out[returns < -thresholds] = SHORT
    return out


def tercile_classes(
    neutral: FloatArray,
    times: npt.NDArray[np.int64],
    fallback_thresholds: FloatArray,
    min_group: int,
) -> npt.NDArray[np.int64]:
    """Classes ``[n, H]`` by the rank of each sample's market-neutral return among the samples of
    its anchor time: rank fraction ``(position + 0.5) / count`` above 2/3 is LONG, below 1/3 SHORT.

    Why ranks and not a fixed band: a fixed band makes the class frequencies follow the market's
    volatility (a calm month is mostly FLAT), so probabilities calibrated on one period are off on
    the next; ranks keep the prior at a third per class whatever the regime, and leave the size of
    the move to the returns head, which decoding already uses for the cost check (ml/decoding.py).
    Anchor times with fewer than ``min_group`` samples have no cross-section to rank: there the
    fixed ``fallback_thresholds`` apply, as ``direction_classes`` does.
    """
    out = direction_classes(neutral, fallback_thresholds)
    _, group, counts = np.unique(times, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ranked = counts[group] >= min_group
    for j in range(neutral.shape[1]):
        order = np.lexsort((neutral[:, j], group))
        fraction = np.empty(order.shape[0])
        fraction[order] = (np.arange(order.shape[0]) - starts[group[order]] + 0.5) / counts[group[order]]
        column = np.full(order.shape[0], FLAT, dtype=np.int64)
        column[fraction > 2.0 / 3.0] = LONG
        column[fraction < 1.0 / 3.0] = SHORT
        out[ranked, j] = column[ranked]
    return out


def _future_extreme(values: FloatArray, window: int, fn: str) -> FloatArray:
    """``fn`` (min or max) over rows ``t+1 .. t+window`` for every ``t``; NaN where it runs off the end."""
    n = values.shape[0]
    out = np.full(n, np.nan)
    if n > window:
        view = sliding_window_view(values[1:], window)  # row t covers values[t+1 .. t+window]
        out[: view.shape[0]] = view.min(axis=1) if fn == "min" else view.max(axis=1)
    return out


def make_labels(
    close: FloatArray,
    high: FloatArray,
    low: FloatArray,
    complete: npt.NDArray[np.bool_],
    horizons: tuple[int, ...],
    thresholds: tuple[float, ...],
) -> Labels:
    n = close.shape[0]
    lookahead = max(*horizons, *RISK_WINDOWS)
    ok = complete & np.isfinite(close) & np.isfinite(high) & np.isfinite(low)
    # valid[t]: bars t+1 .. t+lookahead all complete (and t itself).
    bad = np.concatenate([[0], np.cumsum(~ok)])
    idx = np.arange(n)
    end = np.minimum(idx + lookahead, n - 1)
    valid = ok & (idx + lookahead < n) & (bad[end + 1] - bad[idx + 1] == 0)

    returns = np.full((n, len(horizons)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j, h in enumerate(horizons):
            returns[: n - h, j] = close[h:] / close[: n - h] - 1.0
        risk = np.full((n, len(RISK_NAMES)), np.nan)
        for j, (name, w) in enumerate(zip(RISK_NAMES, RISK_WINDOWS, strict=True)):
            if name.startswith("drawdown"):
                risk[:, j] = np.maximum(0.0, 1.0 - _future_extreme(low, w, "min") / close)
            else:
                risk[:, j] = np.maximum(0.0, _future_extreme(high, w, "max") / close - 1.0)
    classes = direction_classes(returns, np.asarray(thresholds, dtype=np.float64))
    returns[~valid] = np.nan
    risk[~valid] = np.nan
    return Labels(returns=returns, classes=classes, risk=risk, valid=valid)
