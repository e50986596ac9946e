"""A simple non-overlapping backtest of the decoded signals at the primary horizon.

Rules (deliberately plain, so the figures can be checked by hand):

* **Rebalance times** are every ``horizon_bars`` bars from the period's first anchor time to its
  last; with several bar phases only the first phase's anchors (phase 0 when present) are used, so
  holding periods never overlap.
* At each rebalance time the book takes **every actionable signal** (LONG or SHORT) of that time,
  **equal weight**, gross exposure 1 (weights ``±1/n``) whenever there is any signal, and holds for
  the horizon; with no signal (or no sample at that time) the book is flat for the period.
* **Period PnL** = the mean over the positions of ``sign × return`` over the horizon, minus
  ``round_trip_cost`` when the book holds anything (every position is opened and closed within the
  period, so the whole book pays one round trip). ``raw`` uses the raw returns; ``neutral`` the
  market-neutral ones (each return minus the mean of all symbols at that time: what the direction
  labels measure, a long-short book hedged against the market).
* **Sharpe** = mean / standard deviation (ddof 1) of the period PnLs, flat periods included,
  × ``sqrt(periods per year)``, periods per year = ``365 × 1440 / (bar_minutes × horizon_bars)``
  (crypto trades around the clock). **Max drawdown** is the largest fall of the cumulative (summed)
  PnL from its running peak, starting from 0. **Turnover** is the mean over rebalances of
  ``Σ |w_t - w_{t-1}| / 2`` (1.0: the whole book replaced by another, 0.5: flat to fully invested
  or back, 0: unchanged positions), against the previous rebalance's weights. **Hit rate** is the
  share of periods with positions whose net PnL is positive.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from core.timegrid import MINUTE_MS
from ml.decoding import LONG, NEUTRAL

FloatArray = npt.NDArray[np.float64]
MINUTES_PER_YEAR = 365 * 1440


def periods_per_year(bar_minutes: int, horizon_bars: int) -> float:
    return MINUTES_PER_YEAR / (bar_minutes * horizon_bars)


def max_drawdown(pnl: FloatArray) -> float:
    """The largest fall of ``cumsum(pnl)`` below its running peak (the curve starts at 0)."""
    if pnl.size == 0:
        return float("nan")
    curve = np.concatenate([[0.0], np.cumsum(pnl)])
    return float((np.maximum.accumulate(curve) - curve).max())


def pnl_stats(
    pnl: FloatArray, gross: FloatArray, active: npt.NDArray[np.bool_], per_year: float
) -> dict[str, Any]:
    n = int(pnl.size)
    std = float(pnl.std(ddof=1)) if n > 1 else float("nan")
    mean = float(pnl.mean()) if n else float("nan")
    sharpe = mean / std * math.sqrt(per_year) if n > 1 and std > 0 else float("nan")
    return {
        "mean": mean,
        "mean_gross": float(gross.mean()) if n else float("nan"),
        "std": std,
        "total": float(pnl.sum()),
        "sharpe": sharpe,
        "max_drawdown": max_drawdown(pnl),
        "hit_rate": float((pnl[active] > 0).mean()) if active.any() else float("nan"),
    }


def run_backtest(
    anchor_ms: npt.NDArray[np.int64],
    symbol: npt.NDArray[np.integer[Any]],
    phase: npt.NDArray[np.integer[Any]],
    direction: npt.NDArray[np.int64],
    raw: FloatArray,
    neutral: FloatArray,
    *,
    horizon_bars: int,
    bar_minutes: int,
    round_trip_cost: float,
) -> dict[str, Any]:
    """The backtest of one period's samples (one row per symbol and anchor time). The result holds
    the per-period curve under ``"series"`` (rebalance times and net PnLs)."""
    step = horizon_bars * bar_minutes * MINUTE_MS
    per_year = periods_per_year(bar_minutes, horizon_bars)
    used_phase = int(0 if (phase == 0).any() else phase.min()) if phase.size else 0
    keep = phase == used_phase
    t, sym, d = anchor_ms[keep], symbol[keep], direction[keep]
    r_raw, r_neu = raw[keep], neutral[keep]
    grid = (
        np.arange(int(t.min()), int(t.max()) + 1, step, dtype=np.int64) if t.size else np.empty(0, np.int64)
    )
    pnl = {"raw": np.zeros(grid.size), "neutral": np.zeros(grid.size)}
    gross = {"raw": np.zeros(grid.size), "neutral": np.zeros(grid.size)}
    active = np.zeros(grid.size, dtype=bool)
    turnover = np.zeros(grid.size)
    longs = shorts = 0
    previous: dict[int, float] = {}
    order = np.argsort(t, kind="stable")
    t_sorted = t[order]
    for k, when in enumerate(grid):
        lo, hi = np.searchsorted(t_sorted, [when, when + 1])
        rows = order[lo:hi]
        rows = rows[d[rows] != NEUTRAL]
        weights: dict[int, float] = {}
        if rows.size:
            sign = np.where(d[rows] == LONG, 1.0, -1.0)
            active[k] = True
            longs += int((sign > 0).sum())
            shorts += int((sign < 0).sum())
            for name, r in (("raw", r_raw), ("neutral", r_neu)):
                gross[name][k] = float((sign * r[rows]).mean())
                pnl[name][k] = gross[name][k] - round_trip_cost
            for s, w in zip(sym[rows].tolist(), (sign / rows.size).tolist(), strict=True):
                weights[int(s)] = weights.get(int(s), 0.0) + w
        names = set(previous) | set(weights)
        turnover[k] = 0.5 * sum(abs(weights.get(s, 0.0) - previous.get(s, 0.0)) for s in names)
        previous = weights
    return {
        "horizon_bars": int(horizon_bars),
        "phase": used_phase,
        "round_trip_cost": float(round_trip_cost),
        "periods": int(grid.size),
        "active_periods": int(active.sum()),
        "periods_per_year": per_year,
        "positions": {"long": longs, "short": shorts},
        "turnover": float(turnover.mean()) if grid.size else float("nan"),
        "raw": pnl_stats(pnl["raw"], gross["raw"], active, per_year),
        "neutral": pnl_stats(pnl["neutral"], gross["neutral"], active, per_year),
        "series": {"time_ms": grid.tolist(), "raw": pnl["raw"].tolist(), "neutral": pnl["neutral"].tolist()},
    }
