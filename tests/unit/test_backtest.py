"""The non-overlapping backtest (ml/backtest.py) on a case small enough to work out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.backtest import max_drawdown, periods_per_year, run_backtest
from ml.decoding import LONG, NEUTRAL, SHORT

T0 = 1_704_067_200_000
M = 60_000
COST = 0.001

# (minutes after T0, symbol, phase, direction, raw return, market-neutral return)
ROWS = [
    (0, 0, 0, LONG, 0.010, 0.008),
    (0, 1, 0, SHORT, 0.004, 0.002),
    (0, 2, 0, NEUTRAL, 0.050, 0.050),
    (15, 0, 0, LONG, 0.500, 0.500),  # not a rebalance time (every 2 bars of 15 minutes)
    (1, 2, 1, SHORT, -0.500, -0.500),  # another phase: ignored
    (30, 0, 0, LONG, -0.020, -0.010),
    (30, 1, 0, SHORT, 0.010, 0.000),
    (60, 0, 0, NEUTRAL, 0.030, 0.030),  # samples, but no signal: flat
    (90, 2, 0, SHORT, -0.006, -0.004),
]


def _run() -> dict:  # type: ignore[type-arg]
    cols = list(zip(*ROWS, strict=True))
    return run_backtest(
        T0 + np.array(cols[0], dtype=np.int64) * M,
        np.array(cols[1], dtype=np.int32),
        np.array(cols[2], dtype=np.int16),
        np.array(cols[3], dtype=np.int64),
        np.array(cols[4], dtype=np.float64),
        np.array(cols[5], dtype=np.float64),
        horizon_bars=2,
        bar_minutes=15,
        round_trip_cost=COST,
    )


def test_hand_worked_pnl_drawdown_turnover_and_hit_rate() -> None:
    result = _run()
    # Rebalances at 0, 30, 60 and 90 minutes.
    assert result["periods"] == 4
    assert result["active_periods"] == 3
    assert result["phase"] == 0
    assert result["positions"] == {"long": 2, "short": 3}
    # 0: (+0.010 - 0.004) / 2 = 0.003; 30: (-0.020 - 0.010) / 2 = -0.015; 60: flat; 90: +0.006.
    net = [0.003 - COST, -0.015 - COST, 0.0, 0.006 - COST]
    np.testing.assert_allclose(result["series"]["raw"], net)
    assert result["series"]["time_ms"] == [T0, T0 + 30 * M, T0 + 60 * M, T0 + 90 * M]
    raw = result["raw"]
    assert raw["mean"] == pytest.approx(np.mean(net))
    assert raw["mean_gross"] == pytest.approx((0.003 - 0.015 + 0.006) / 4)
    assert raw["total"] == pytest.approx(sum(net))
    # Cumulative 0.002, -0.014, -0.014, -0.009: the fall from the peak 0.002 to -0.014.
    assert raw["max_drawdown"] == pytest.approx(0.016)
    assert raw["hit_rate"] == pytest.approx(2 / 3)
    per_year = 365 * 1440 / 30
    assert result["periods_per_year"] == pytest.approx(per_year)
    assert raw["sharpe"] == pytest.approx(np.mean(net) / np.std(net, ddof=1) * math.sqrt(per_year))
    # Book: {0: +1/2, 1: -1/2}, then the same, then flat, then {2: -1}: 0.5, 0, 0.5, 0.5.
    assert result["turnover"] == pytest.approx(0.375)
    # Market-neutral: (0.008 - 0.002) / 2, (-0.010 - 0.000) / 2, 0, +0.004.
    neutral = [0.003 - COST, -0.005 - COST, 0.0, 0.004 - COST]
    np.testing.assert_allclose(result["series"]["neutral"], neutral)
    assert result["neutral"]["max_drawdown"] == pytest.approx(0.006)


def test_helpers() -> None:
    assert max_drawdown(np.array([0.01, 0.02])) == 0.0
    assert max_drawdown(np.array([-0.01, 0.005, -0.02])) == pytest.approx(0.025)
    assert math.isnan(max_drawdown(np.array([])))
    assert periods_per_year(15, 4) == 365 * 24


def test_no_signal_at_all_is_a_flat_book() -> None:
    times = T0 + np.arange(8, dtype=np.int64) * 15 * M
    zeros = np.zeros(8)
    result = run_backtest(
        times,
        np.zeros(8, np.int32),
        np.zeros(8, np.int16),
        np.full(8, NEUTRAL, np.int64),
        zeros,
        zeros,
        horizon_bars=4,
        bar_minutes=15,
        round_trip_cost=COST,
    )
    assert result["periods"] == 2
    assert result["active_periods"] == 0
    assert result["raw"]["mean"] == 0.0
    assert math.isnan(result["raw"]["sharpe"])
    assert math.isnan(result["raw"]["hit_rate"])
    assert result["turnover"] == 0.0
