"""Data for the feature, dataset and training tests: simulated candles and anchored bars, the real
OHLCV files of ``backtesting``, and a NaN-aware float comparison."""

from __future__ import annotations

import importlib.resources
from functools import lru_cache

import numpy as np
import pandas as pd

from data.bars import resample_anchored
from data.sources.simulator import SimulatedMarket

START_MS = 1_704_067_200_000  # 2024-01-01 00:00 UTC, a Monday
BAR_MINUTES = 15
DAY_MS = 86_400_000


@lru_cache(maxsize=4)
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=7)


@lru_cache(maxsize=64)
def candles(symbol: str, days: int, start_ms: int = START_MS) -> pd.DataFrame:
    return market().fetch(symbol, start_ms, start_ms + days * DAY_MS)


def sim_bars(symbol: str = "BTC/USDT:USDT", days: int = 30, phase: int = 0) -> pd.DataFrame:
    """Anchored 15-minute bars of a simulated symbol, as training builds them."""
    return resample_anchored(candles(symbol, days), BAR_MINUTES, phase).copy()


@lru_cache(maxsize=4)
def _real(name: str) -> pd.DataFrame:
    resource = importlib.resources.files("backtesting.test") / name
    with importlib.resources.as_file(resource) as path:
        frame = pd.read_csv(path, index_col=0, parse_dates=True)
    frame.columns = [c.lower() for c in frame.columns]
    frame.index = pd.DatetimeIndex(frame.index).tz_localize("UTC")
    return frame[["open", "high", "low", "close", "volume"]].astype(np.float64)


def real_bars(name: str = "EURUSD.csv") -> pd.DataFrame:
    """Real OHLCV bars shipped with ``backtesting`` (EURUSD hourly, GOOG daily); weekends and
    holidays are gaps in the index, so the rows are consecutive bars, not a regular grid."""
    return _real(name).copy()


def assert_same(
    a: np.ndarray, b: np.ndarray, *, rtol: float = 1e-9, atol: float = 1e-12, what: str = ""
) -> None:
    """Equal up to floating-point rounding, NaN where the other is NaN."""
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)
