"""Champion against challenger on the same minutes (``mlsignals model compare``): the live evidence
for a promotion, which stays a human decision (``mlsignals model promote``).

The challenger is scored in the champion's batch every minute as the shadow challenger (its signals
stored under its own version, never traded) and the outcomes ledger (quality.outcomes) resolves the
signals of every version. Per horizon, both versions' resolved outcomes are cut to the
``(minute, symbol)`` pairs that **both** have, so every figure of one column rests on exactly the
samples of the other:

* each version's figures of ``quality.rolling.window_figures``: IC (mean per-minute Spearman of the
  predicted return against the realised market-neutral one, Newey–West SE and t), hit rate and mean
  net return per direction, ECE and Brier;
* the **paired test** of the IC: per minute, the challenger's IC minus the champion's (same symbols,
  same realised returns: within a minute the two versions' neutral returns differ by a constant, so
  their ranks are the same); the mean difference, its Newey–West standard error with the horizon's
  length in minutes as the lag (``ml.evaluation.lag_steps``: consecutive minutes share most of their
  future) and ``t = mean / se``. As in quality.rolling, no SE or t is given before the minutes span
  ``MIN_PERIODS`` non-overlapping horizons.

Hit rates and net returns of the two columns count each version's own actionable signals of the
common pairs, so their counts differ: each model chooses when to act.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine

from core.settings import Settings
from core.timegrid import MINUTE_MS
from ml.evaluation import lag_steps, newey_west_se
from ml.outputs import horizon_label
from quality.outcomes import HORIZONS
from quality.rolling import MIN_PERIODS, OutcomeRows, load_outcomes, window_figures


def common_pairs(a: OutcomeRows, b: OutcomeRows) -> tuple[OutcomeRows, OutcomeRows]:
    """Both row sets cut to the ``(minute, symbol)`` pairs they share, in each one's order."""
    keys_a = list(zip(a.minute_ms.tolist(), a.symbol, strict=True))
    keys_b = list(zip(b.minute_ms.tolist(), b.symbol, strict=True))
    shared = set(keys_a) & set(keys_b)
    keep_a = np.array([k in shared for k in keys_a], dtype=bool)
    keep_b = np.array([k in shared for k in keys_b], dtype=bool)
    return subset(a, keep_a), subset(b, keep_b)


def subset(rows: OutcomeRows, keep: np.ndarray) -> OutcomeRows:
    """The rows where ``keep`` is true (every field: arrays and the list of symbols)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(rows):
        value = getattr(rows, f.name)
        if isinstance(value, list):
            values[f.name] = [v for v, k in zip(value, keep.tolist(), strict=True) if k]
        else:
            values[f.name] = value[keep] if keep.size else value[:0]
    return OutcomeRows(**values)


def paired_ic(
    champion_ic: Mapping[str, Any], challenger_ic: Mapping[str, Any], horizon_bars: int, bar_minutes: int
) -> dict[str, Any]:
    """The paired test of two ``ic_figures`` results: per minute both have, challenger minus champion."""
    a = dict(zip(champion_ic["series"]["time_ms"], champion_ic["series"]["ic"], strict=True))
    b = dict(zip(challenger_ic["series"]["time_ms"], challenger_ic["series"]["ic"], strict=True))
    times = np.array(sorted(set(a) & set(b)), dtype=np.int64)
    diff = np.array([b[t] - a[t] for t in times.tolist()], dtype=np.float64)
    if not diff.size:
        empty: dict[str, list[Any]] = {"time_ms": [], "difference": []}
        nothing = {"mean": None, "se": None, "t": None, "minutes": 0, "periods": 0, "lag": 0}
        return nothing | {"min_periods": MIN_PERIODS, "series": empty}
    lag = lag_steps(times, horizon_bars, bar_minutes * MINUTE_MS)
    periods = int((times[-1] - times[0]) // (horizon_bars * bar_minutes * MINUTE_MS)) + 1
    mean = float(diff.mean())
    # Fewer non-overlapping horizons than MIN_PERIODS: no standard error means anything (rolling.py).
    se = newey_west_se(diff, lag) if periods >= MIN_PERIODS else float("nan")
    ok = bool(np.isfinite(se) and se > 0)
    return {
        "mean": mean,
        "se": float(se) if ok else None,
        "t": mean / float(se) if ok else None,
        "minutes": int(diff.size),
        "periods": periods,
        "min_periods": MIN_PERIODS,
        "lag": int(lag),
        "series": {"time_ms": times.tolist(), "difference": diff.tolist()},
    }


def compare_versions(
    engine: Engine,
    settings: Settings,
    champion: str,
    challenger: str,
    *,
    horizons: Sequence[int] = HORIZONS,
    since: datetime | None = None,
) -> dict[str, Any]:
    """``{"champion", "challenger", "since", "horizons": [...]}``: per horizon the number of common
    pairs and minutes, both versions' ``window_figures`` on them and the paired IC test."""
    bar_minutes = settings.data.bar_minutes
    out = []
    for h in horizons:
        rows_a, rows_b = common_pairs(
            load_outcomes(engine, champion, h, since=since), load_outcomes(engine, challenger, h, since=since)
        )
        figures_a = window_figures(rows_a, h, bar_minutes)
        figures_b = window_figures(rows_b, h, bar_minutes)
        out.append(
            {
                "horizon_bars": h,
                "horizon": horizon_label(h, bar_minutes),
                "pairs": rows_a.size,
                "minutes": figures_a["minutes"],
                "champion": figures_a,
                "challenger": figures_b,
                "paired_ic": paired_ic(figures_a["ic"], figures_b["ic"], h, bar_minutes),
            }
        )
    return {
        "champion": champion,
        "challenger": challenger,
        "since": since.isoformat() if since is not None else None,
        "horizons": out,
    }


def without_series(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without the per-minute series and reliability tables (``--json``)."""
    horizons = []
    for h in report["horizons"]:
        item = dict(h)
        for side in ("champion", "challenger"):
            figures = {k: v for k, v in item[side].items() if k != "reliability"}
            figures["ic"] = {k: v for k, v in figures["ic"].items() if k != "series"}
            item[side] = figures
        item["paired_ic"] = {k: v for k, v in item["paired_ic"].items() if k != "series"}
        horizons.append(item)
    return {**report, "horizons": horizons}
