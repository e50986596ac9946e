"""Rolling quality of a model version at one horizon, from its resolved outcomes (quality.outcomes).

Over a window of outcomes (the newest N resolved signals, the last D days, or since a time):

* **hit rate** and **mean net return** of the actionable signals, per direction: the share whose
  market-neutral return had the signal's sign, and the mean of ``sign * neutral_return - cost``;
* **IC**: per minute, the Spearman correlation across symbols of the predicted return at the
  horizon with the realised market-neutral return (``ml.evaluation.ic_series``, minutes with fewer
  than 5 symbols left out); their mean, its Newey–West standard error with the horizon's length in
  minutes as the lag (consecutive minutes share most of their future), and ``t = mean / se`` (only
  once the window spans ``MIN_PERIODS`` non-overlapping horizons: before that no SE is honest);
* **calibration**: top-label ECE over 10 equal-width bins and the reliability table
  (``ml.evaluation.calibration``) of the horizon's probabilities against the realised class;
* **Brier score**: the mean over signals of ``sum_k (p_k - y_k)^2`` over LONG, SHORT, FLAT.

A window of the newest N signals is cut at a whole minute: the oldest minute is dropped when the
limit split it, so that no minute's IC rests on a part of its symbols.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, func, select

from core.timegrid import MINUTE_MS
from data.models import SignalOutcome
from ml.evaluation import calibration, ic_series, lag_steps, newey_west_se
from ml.model.config import DIRECTION_CLASSES
from quality.outcomes import RESOLVED, UNRESOLVED

FloatArray = npt.NDArray[np.float64]
DIRECTIONS = ("LONG", "SHORT")
# Non-overlapping horizons a window must span before its IC gets a standard error and a t-statistic.
MIN_PERIODS = 5


@dataclass(frozen=True)
class OutcomeRows:
    """The resolved outcomes of one version and horizon, oldest first, as arrays."""

    minute_ms: npt.NDArray[np.int64]
    symbol: list[str]
    direction: npt.NDArray[np.str_]
    predicted: FloatArray
    neutral: FloatArray
    probs: FloatArray  # [n, 3] LONG, SHORT, FLAT
    realised_class: npt.NDArray[np.int64]
    correct: npt.NDArray[np.bool_]
    net: FloatArray
    net_raw: FloatArray

    @property
    def size(self) -> int:
        return int(self.minute_ms.shape[0])


def load_outcomes(
    engine: Engine,
    model_version: str,
    horizon_bars: int,
    *,
    since: datetime | None = None,
    made_after: datetime | None = None,
    limit: int | None = None,
    actionable_only: bool = False,
    minutes: Sequence[datetime] | None = None,
) -> OutcomeRows:
    """Resolved outcomes with ``minute >= since`` (and among ``minutes``, when given) of signals
    stored after ``made_after``, the newest ``limit`` (cut at a whole minute), oldest first."""
    o = SignalOutcome
    conditions = [o.model_version == model_version, o.horizon_bars == horizon_bars, o.status == RESOLVED]
    if since is not None:
        conditions.append(o.minute >= since)
    if made_after is not None:
        conditions.append(o.signal_made_at > made_after)
    if actionable_only:
        conditions.append(o.actionable.is_(True))
    if minutes is not None:
        conditions.append(o.minute.in_(list(minutes)))
    stmt = (
        select(
            o.minute,
            o.symbol,
            o.direction,
            o.predicted_return,
            o.neutral_return,
            o.prob_long,
            o.prob_short,
            o.prob_flat,
            o.realised_class,
            o.correct,
            o.net_return,
            o.net_return_raw,
        )
        .where(*conditions)
        .order_by(o.minute.desc(), o.signal_id.desc())
    )
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    with engine.connect() as conn:
        rows = list(conn.execute(stmt).all())
    if limit is not None and len(rows) > limit:
        cut = rows[limit].minute
        rows = [r for r in rows[:limit] if r.minute != cut]
    rows.reverse()
    nan = float("nan")
    return OutcomeRows(
        minute_ms=np.array([int(r.minute.timestamp() * 1000) for r in rows], dtype=np.int64),
        symbol=[r.symbol for r in rows],
        direction=np.array([r.direction for r in rows], dtype=np.str_),
        predicted=np.array([nan if r.predicted_return is None else r.predicted_return for r in rows]),
        neutral=np.array([r.neutral_return for r in rows], dtype=np.float64),
        probs=np.array(
            [[_f(r.prob_long), _f(r.prob_short), _f(r.prob_flat)] for r in rows], dtype=np.float64
        ).reshape(-1, 3),
        realised_class=np.array([DIRECTION_CLASSES.index(r.realised_class) for r in rows], dtype=np.int64),
        correct=np.array([bool(r.correct) for r in rows], dtype=bool),
        net=np.array([nan if r.net_return is None else r.net_return for r in rows]),
        net_raw=np.array([nan if r.net_return_raw is None else r.net_return_raw for r in rows]),
    )


def count_unresolved(
    engine: Engine, model_version: str, horizon_bars: int, since: datetime | None = None
) -> int:
    o = SignalOutcome
    conditions = [o.model_version == model_version, o.horizon_bars == horizon_bars, o.status == UNRESOLVED]
    if since is not None:
        conditions.append(o.minute >= since)
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(o).where(*conditions)).scalar() or 0)


def direction_figures(rows: OutcomeRows) -> dict[str, dict[str, Any]]:
    """Per direction: actionable signals, hit rate, mean net return (market-neutral and raw)."""
    out: dict[str, dict[str, Any]] = {}
    for name in DIRECTIONS:
        sel = rows.direction == name
        n = int(sel.sum())
        out[name] = {
            "signals": n,
            "hit_rate": float(rows.correct[sel].mean()) if n else None,
            "mean_net_return": _finite_mean(rows.net[sel]),
            "mean_net_return_raw": _finite_mean(rows.net_raw[sel]),
        }
    return out


def span_periods(minute_ms: npt.NDArray[np.int64], period_ms: int) -> int:
    """How many periods of ``period_ms`` the ascending minutes span, from the oldest to the newest:
    0 for none, 1 within one period."""
    return int((minute_ms[-1] - minute_ms[0]) // period_ms) + 1 if minute_ms.size else 0


def ic_figures(rows: OutcomeRows, horizon_bars: int, bar_minutes: int) -> dict[str, Any]:
    """Mean per-minute IC with its Newey–West SE and t-statistic; the per-minute series too."""
    times, values = ic_series(rows.predicted, rows.neutral, rows.minute_ms)
    finite = np.isfinite(values)
    v = values[finite]
    lag = lag_steps(times[finite], horizon_bars, bar_minutes * MINUTE_MS) if v.size else 0
    mean = float(v.mean()) if v.size else None
    horizon_ms = horizon_bars * bar_minutes * MINUTE_MS
    periods = span_periods(times[finite], horizon_ms)
    # Minutes inside one horizon share most of their future: with fewer non-overlapping periods
    # than this, no standard error (Newey–West included) means anything.
    se = newey_west_se(v, lag) if periods >= MIN_PERIODS else float("nan")
    return {
        "mean": mean,
        "se": _opt(se),
        "t": _opt(mean / se) if mean is not None and np.isfinite(se) and se > 0 else None,
        "minutes": int(v.size),
        "periods": periods,
        "lag": int(lag),
        "series": {"time_ms": times[finite].tolist(), "ic": v.tolist()},
    }


def brier(probs: FloatArray, labels: npt.NDArray[np.int64]) -> float | None:
    if labels.size == 0:
        return None
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def window_figures(rows: OutcomeRows, horizon_bars: int, bar_minutes: int) -> dict[str, Any]:
    """Every figure of one window (the module's docstring has the definitions)."""
    has_probs = np.isfinite(rows.probs).all(axis=1)
    probs, labels = rows.probs[has_probs], rows.realised_class[has_probs]
    cal = calibration(probs, labels)
    actionable = rows.direction != "NEUTRAL"
    return {
        "signals": rows.size,
        "minutes": int(np.unique(rows.minute_ms).size),
        "first_ms": int(rows.minute_ms[0]) if rows.size else None,
        "last_ms": int(rows.minute_ms[-1]) if rows.size else None,
        "actionable": int(actionable.sum()),
        "hit_rate": float(rows.correct[actionable].mean()) if actionable.any() else None,
        "directions": direction_figures(rows),
        "ic": ic_figures(rows, horizon_bars, bar_minutes),
        "ece": _opt(cal["ece"]),
        "reliability": cal["bins"],
        "brier": brier(probs, labels),
    }


def _finite_mean(values: FloatArray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _f(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _opt(value: float | None) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
