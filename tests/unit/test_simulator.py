"""The market simulator: deterministic, range-independent, realistic enough, with a measurable effect.

The candle-level tests run on the default (switching) market; the figures of the older momentum
effect on ``effect="momentum"``. tests/unit/test_simulator_switching.py covers the switching effect.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import UnknownSymbolError
from core.settings import SimulatorSettings
from core.timegrid import MINUTE_MS, parse_minute
from data.candles import CANDLE_COLUMNS
from data.sources.base import CandleSource
from data.sources.simulator import Effect, SimulatedMarket

DAY_MS = 1440 * MINUTE_MS
JAN_2024 = parse_minute("2024-01-01T00:00:00Z")
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(seed=7, universe_size=1000)


@pytest.fixture(scope="module")
def momentum_market() -> SimulatedMarket:
    return SimulatedMarket(seed=7, universe_size=1000, effect="momentum")


def closes(market: SimulatedMarket, symbols: list[str], start: int, days: int) -> np.ndarray:
    """Closing prices as a [symbol, minute] array."""
    return np.array([market.fetch(s, start, start + days * DAY_MS)["close"].to_numpy() for s in symbols])


def ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, axis=1, kind="stable"), axis=1).astype(np.float64)


def cross_sectional_ic(signal: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """Spearman correlation across symbols at each time: arrays are [time, symbol]."""
    a = ranks(signal)
    b = ranks(outcome)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    ic: np.ndarray = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return ic


def momentum_ic(market: SimulatedMarket, n_symbols: int = 30, days: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """IC of the past 1 h return with the next 1 h return on 15-minute bars, and each bar's regime."""
    symbols = market.list_symbols()[:n_symbols]
    log_close = np.log(closes(market, symbols, JAN_2024, days)[:, 14::15]).T  # close of each 15m bar
    past = log_close[4:-4] - log_close[:-8]
    future = log_close[8:] - log_close[4:-4]
    bar_close_ms = JAN_2024 + (np.arange(log_close.shape[0]) * 15 + 14) * MINUTE_MS
    regime = np.array([market.regime_at(int(t)) for t in bar_close_ms[4:-4]])
    return cross_sectional_ic(past, future), regime


# -- the CandleSource contract ---------------------------------------------------------------------


def test_is_a_candle_source_with_real_looking_tickers_then_synthetic_ones() -> None:
    market = SimulatedMarket(seed=7, universe_size=100)
    assert isinstance(market, CandleSource)
    assert market.name == "simulator"
    symbols = market.list_symbols()
    assert len(symbols) == len(set(symbols)) == 100
    assert symbols[:3] == ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"]
    assert "SIM0042/USDT:USDT" in symbols
    assert all(s.endswith("/USDT:USDT") for s in symbols)


def test_from_settings_uses_seed_and_universe_size() -> None:
    market = SimulatedMarket.from_settings(SimulatorSettings(seed=3, universe_size=60))
    assert (market.seed, len(market.list_symbols()), market.effect) == (3, 60, "switching")
    market = SimulatedMarket.from_settings(SimulatorSettings(effect="momentum"))
    assert market.effect == "momentum"


def test_unknown_symbol_raises_unknown_symbol_error() -> None:
    market = SimulatedMarket(universe_size=50)
    with pytest.raises(UnknownSymbolError) as info:
        market.fetch("NOPE/USDT:USDT", JAN_2024, JAN_2024 + MINUTE_MS)
    assert (info.value.symbol, info.value.source) == ("NOPE/USDT:USDT", "simulator")
    with pytest.raises(UnknownSymbolError):  # exists only in a larger universe
        market.fetch("SIM0060/USDT:USDT", JAN_2024, JAN_2024 + MINUTE_MS)


def test_frame_schema_grid_and_half_open_range(market: SimulatedMarket) -> None:
    start = JAN_2024 + 17 * MINUTE_MS + 123  # off the grid: the first candle is the next minute
    frame = market.fetch("ETH/USDT:USDT", start, JAN_2024 + 500 * MINUTE_MS)
    assert list(frame.columns) == list(CANDLE_COLUMNS)
    assert frame["open_time"].dtype == np.int64
    assert all(frame[c].dtype == np.float64 for c in CANDLE_COLUMNS[1:])
    times = frame["open_time"].to_numpy()
    assert times[0] == JAN_2024 + 18 * MINUTE_MS
    assert times[-1] == JAN_2024 + 499 * MINUTE_MS
    assert (np.diff(times) == MINUTE_MS).all()
    assert isinstance(frame.index, pd.RangeIndex)


@pytest.mark.parametrize(
    ("start", "end"),
    [(JAN_2024, JAN_2024), (JAN_2024 + 5, JAN_2024 + MINUTE_MS), (JAN_2024 + DAY_MS, JAN_2024)],
)
def test_empty_ranges_give_an_empty_candle_frame(market: SimulatedMarket, start: int, end: int) -> None:
    frame = market.fetch("BTC/USDT:USDT", start, end)
    assert frame.empty
    assert list(frame.columns) == list(CANDLE_COLUMNS)


# -- determinism -----------------------------------------------------------------------------------


def test_same_seed_same_market_other_seed_other_market() -> None:
    a = SimulatedMarket(seed=11).fetch("SOL/USDT:USDT", JAN_2024, JAN_2024 + DAY_MS)
    b = SimulatedMarket(seed=11).fetch("SOL/USDT:USDT", JAN_2024, JAN_2024 + DAY_MS)
    c = SimulatedMarket(seed=12).fetch("SOL/USDT:USDT", JAN_2024, JAN_2024 + DAY_MS)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert not np.array_equal(a["close"].to_numpy(), c["close"].to_numpy())


def test_a_symbol_does_not_depend_on_the_universe_size() -> None:
    small = SimulatedMarket(seed=7, universe_size=60).fetch("SIM0055/USDT:USDT", JAN_2024, JAN_2024 + DAY_MS)
    large = SimulatedMarket(seed=7, universe_size=5000).fetch(
        "SIM0055/USDT:USDT", JAN_2024, JAN_2024 + DAY_MS
    )
    pd.testing.assert_frame_equal(small, large, check_exact=True)


def frame_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(frame.to_numpy(dtype=np.float64).tobytes()).hexdigest()


def test_same_market_in_another_process() -> None:
    start, end = JAN_2024 + 700 * MINUTE_MS, JAN_2024 + 2 * DAY_MS
    code = (
        "import hashlib, numpy as np\n"
        "from data.sources.simulator import SimulatedMarket\n"
        f"f = SimulatedMarket(seed=5).fetch('SIM0123/USDT:USDT', {start}, {end})\n"
        "print(hashlib.sha256(f.to_numpy(dtype=np.float64).tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    here = SimulatedMarket(seed=5).fetch("SIM0123/USDT:USDT", start, end)
    assert out.stdout.strip() == frame_digest(here)


# Candles of the momentum market as the simulator made them before the switching effect existed
# (rows 0, 777, 1439, 1440 and 2879 from 2024-01-01, seed 7: open, high, low, close, volume). Prices and
# volumes are whole ticks and lots, so only a numpy change of a sampling algorithm can move them.
MOMENTUM_PINNED = {
    "BTC/USDT:USDT": [
        (58200.0, 58215.0, 58185.0, 58207.0, 7.12),
        (56583.0, 56588.0, 56535.0, 56537.0, 162.17),
        (57147.0, 57237.0, 57133.0, 57215.0, 77.32),
        (57215.0, 57294.0, 57212.0, 57274.0, 39.39),
        (60600.0, 60709.0, 60578.0, 60704.0, 145.3),
    ],
    "SIM0123/USDT:USDT": [
        (12.501, 12.503, 12.486, 12.487, 1522.6),
        (11.964, 11.97, 11.947, 11.948, 651.3),
        (12.434, 12.466, 12.431, 12.449, 2387.8),
        (12.449, 12.503, 12.444, 12.493, 2533.5),
        (12.091, 12.18, 12.081, 12.154, 1860.5),
    ],
}


@pytest.mark.parametrize("symbol", sorted(MOMENTUM_PINNED))
def test_the_momentum_market_keeps_its_candles(momentum_market: SimulatedMarket, symbol: str) -> None:
    frame = momentum_market.fetch(symbol, JAN_2024, JAN_2024 + 2 * DAY_MS)
    rows = frame.iloc[[0, 777, 1439, 1440, 2879]][["open", "high", "low", "close", "volume"]]
    assert [tuple(row) for row in rows.itertuples(index=False)] == MOMENTUM_PINNED[symbol]
    # The default market is another one: the same market factor, other idiosyncratic moves.
    switching = SimulatedMarket(seed=7).fetch(symbol, JAN_2024, JAN_2024 + 2 * DAY_MS)
    assert not np.array_equal(switching["close"].to_numpy(), frame["close"].to_numpy())


# 2023-12-21 00:00 UTC is day 19712 = 616 × 32: a boundary of the simulator's 32-day level blocks.
BLOCK_EDGE = parse_minute("2023-12-21T00:00:00Z")


@pytest.mark.parametrize("effect", ["switching", "momentum"])
@pytest.mark.parametrize(
    ("symbol", "start"),
    [
        ("BTC/USDT:USDT", JAN_2024 - 3 * 60 * MINUTE_MS),
        ("SIM0500/USDT:USDT", BLOCK_EDGE - 2 * DAY_MS - 77 * MINUTE_MS),
        ("DOGE/USDT:USDT", -DAY_MS - 5 * MINUTE_MS),  # across the 1970 epoch
    ],
)
def test_any_split_of_a_range_gives_the_same_candles(symbol: str, start: int, effect: Effect) -> None:
    end = start + 3 * DAY_MS + 31 * MINUTE_MS
    whole = SimulatedMarket(seed=7, effect=effect).fetch(symbol, start, end)
    assert len(whole) == (end - start) // MINUTE_MS
    rng = np.random.default_rng(0)
    day_edge = (start // DAY_MS + 1) * DAY_MS
    cuts = [day_edge, day_edge - MINUTE_MS, day_edge + MINUTE_MS, start + MINUTE_MS, end - MINUTE_MS]
    cuts += [int(start + MINUTE_MS * rng.integers(1, (end - start) // MINUTE_MS)) for _ in range(4)]
    for cut in cuts:
        # A fresh market per half, so that no cache can hide a dependence on the order of calls.
        left = SimulatedMarket(seed=7, effect=effect).fetch(symbol, start, cut)
        right = SimulatedMarket(seed=7, effect=effect).fetch(symbol, cut, end)
        joined = pd.concat([left, right], ignore_index=True)
        pd.testing.assert_frame_equal(joined, whole, check_exact=True)
    # Many small pieces from one long-lived market, fetched newest first.
    market = SimulatedMarket(seed=7, effect=effect)
    edges = sorted({start, end, *cuts})
    pieces = [market.fetch(symbol, a, b) for a, b in reversed(list(itertools.pairwise(edges)))]
    pd.testing.assert_frame_equal(pd.concat(pieces[::-1], ignore_index=True), whole, check_exact=True)


# -- candle sanity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("symbol", ["BTC/USDT:USDT", "1000PEPE/USDT:USDT", "SIM0077/USDT:USDT"])
def test_candles_are_consistent_positive_continuous_and_on_the_tick(
    market: SimulatedMarket, symbol: str
) -> None:
    frame = market.fetch(symbol, JAN_2024 - DAY_MS // 2, JAN_2024 + 2 * DAY_MS)
    o, h, lo, c = (frame[col].to_numpy() for col in ("open", "high", "low", "close"))
    v, t = frame["volume"].to_numpy(), frame["turnover"].to_numpy()
    assert (lo > 0).all()
    assert (h >= np.maximum(o, c)).all()
    assert (lo <= np.minimum(o, c)).all()
    assert (h > lo).mean() > 0.9  # most minutes trade a range
    assert (o[1:] == c[:-1]).all()  # the next open is the previous close, across midnight too
    assert (v >= 0).all()
    np.testing.assert_allclose(t, v * (h + lo + c) / 3.0, rtol=1e-12)
    # Five significant digits at the base level: every price is a whole number of ticks.
    tick = 10.0 ** (math.floor(math.log10(market.base_price(symbol))) - 4)
    for prices in (o, h, lo, c):
        ticks = prices / tick
        np.testing.assert_allclose(ticks, np.round(ticks), atol=1e-6)
    assert np.unique(c).size > 100  # the tick is fine enough for prices to move


def test_universe_prices_span_a_cent_to_a_hundred_thousand(market: SimulatedMarket) -> None:
    bases = np.array([market.base_price(s) for s in market.list_symbols()])
    assert bases.min() < 0.02
    assert bases.max() > 50_000
    assert 55_000 < market.base_price("BTC/USDT:USDT") < 65_000
    # log-uniform: every decade holds a fair share of the synthetic symbols
    decades = np.histogram(np.log10(bases[40:]), bins=np.arange(-2, 6))[0]
    assert decades.min() > 0.08 * bases[40:].size
    for symbol in (market.list_symbols()[int(bases.argmin())], market.list_symbols()[int(bases.argmax())]):
        frame = market.fetch(symbol, JAN_2024, JAN_2024 + DAY_MS)
        ratio = frame["close"].to_numpy() / market.base_price(symbol)
        assert ((ratio > 0.2) & (ratio < 5)).all()


def test_one_minute_returns_have_fat_tails(market: SimulatedMarket) -> None:
    close = closes(market, market.list_symbols()[:10], JAN_2024, 7)
    r = np.diff(np.log(close), axis=1)
    z = (r - r.mean(axis=1, keepdims=True)) / r.std(axis=1, keepdims=True)
    kurtosis = (z**4).mean(axis=1)
    assert (kurtosis > 3.0).all(), kurtosis  # a normal distribution has 3
    assert np.median(kurtosis) > 6.0, kurtosis


def test_symbols_share_a_market_factor(market: SimulatedMarket) -> None:
    close = closes(market, market.list_symbols()[:20], JAN_2024, 7)
    hourly = np.diff(np.log(close[:, 59::60]), axis=1)
    corr = np.corrcoef(hourly)
    mean_pairwise = corr[np.triu_indices_from(corr, k=1)].mean()
    assert mean_pairwise > 0.1
    assert mean_pairwise < 0.9  # and each has its own moves


def test_volume_follows_the_utc_sessions(market: SimulatedMarket) -> None:
    symbols = market.list_symbols()[:10]
    start = JAN_2024 + 7 * DAY_MS  # Monday 2024-01-08, two full weeks
    frames = [market.fetch(s, start, start + 14 * DAY_MS) for s in symbols]
    hour = (frames[0]["open_time"].to_numpy() // (60 * MINUTE_MS)) % 24
    # Turnover in units of each symbol's own mean, so that BTC does not drown the rest.
    rel = np.array([f["turnover"].to_numpy() / f["turnover"].mean() for f in frames]).mean(axis=0)
    by_hour = np.array([rel[hour == h].mean() for h in range(24)])
    assert by_hour.max() / by_hour.min() > 1.5
    assert by_hour[13:17].mean() > by_hour[19:23].mean()  # the US session beats the evening lull


def test_volume_rises_with_the_size_of_the_move(market: SimulatedMarket) -> None:
    frame = market.fetch("SOL/USDT:USDT", JAN_2024, JAN_2024 + 3 * DAY_MS)
    move = np.abs(np.log(frame["close"] / frame["open"]))
    assert np.corrcoef(move, frame["volume"])[0, 1] > 0.2


def test_volatility_regimes_are_market_wide_and_distinct(market: SimulatedMarket) -> None:
    close = closes(market, ["ETH/USDT:USDT", "SIM0100/USDT:USDT"], JAN_2024, 28)
    r = np.diff(np.log(close), axis=1)
    minute_ms = JAN_2024 + np.arange(1, close.shape[1]) * MINUTE_MS
    regime = np.array([market.regime_at(int(t)) for t in minute_ms[::240]]).repeat(240)[: r.shape[1]]
    vol = {name: r[:, regime == name].std(axis=1) for name in ("calm", "normal", "turbulent")}
    assert (vol["calm"] < vol["normal"]).all()
    assert (vol["normal"] < vol["turbulent"]).all()


@pytest.mark.parametrize("when", ["2020-03-01", "2021-11-17", "2023-06-30", "2026-02-10", "2029-12-31"])
def test_prices_stay_near_their_base_level_for_years(market: SimulatedMarket, when: str) -> None:
    start = parse_minute(f"{when}T00:00:00Z")
    for symbol in market.list_symbols()[:40] + market.list_symbols()[900:920]:
        frame = market.fetch(symbol, start, start + 6 * 60 * MINUTE_MS)
        base = market.base_price(symbol)
        assert frame["low"].min() > base / 20, (symbol, when)
        assert frame["high"].max() < base * 20, (symbol, when)


# -- the documented learnable effect -------------------------------------------------------------------


def test_effect_is_described() -> None:
    text = SimulatedMarket.effect_description
    assert "momentum" in text
    assert "docs/SIMULATOR.md" in text


def test_momentum_effect_is_learnable_from_15_minute_bars(momentum_market: SimulatedMarket) -> None:
    ic, regime = momentum_ic(momentum_market)
    # Overlapping 1 h windows every 15 min: about 670 cross-sections of 30 symbols.
    assert ic.mean() > 0.05, ic.mean()
    assert ic[regime == "turbulent"].mean() > 0.1
    assert ic[regime == "turbulent"].mean() > ic[regime == "calm"].mean() + 0.05


def test_momentum_effect_controls_are_near_zero(momentum_market: SimulatedMarket) -> None:
    without, _ = momentum_ic(SimulatedMarket(seed=7, effect_strength=0.0, effect="momentum"))
    assert abs(without.mean()) < 0.03, without.mean()
    # Shuffling the outcomes across symbols breaks the link, whatever the market did.
    symbols = momentum_market.list_symbols()[:30]
    log_close = np.log(closes(momentum_market, symbols, JAN_2024, 7)[:, 14::15]).T
    past = log_close[4:-4] - log_close[:-8]
    future = log_close[8:] - log_close[4:-4]
    shuffled = np.random.default_rng(1).permuted(future, axis=1)
    assert abs(cross_sectional_ic(past, shuffled).mean()) < 0.03


@pytest.mark.parametrize("effect", ["switching", "momentum"])
def test_a_pickled_market_is_the_same_market(effect: Effect) -> None:
    market = SimulatedMarket(seed=9, universe_size=70, effect_strength=0.5, effect=effect)
    market.fetch("BTC/USDT:USDT", JAN_2024, JAN_2024 + 60 * MINUTE_MS)  # warm caches must not matter
    clone = pickle.loads(pickle.dumps(market))
    assert (clone.seed, clone.universe_size, clone.effect_strength, clone.effect) == (9, 70, 0.5, effect)
    assert repr(clone) == repr(market)
    pd.testing.assert_frame_equal(
        clone.fetch("SIM0066/USDT:USDT", JAN_2024, JAN_2024 + DAY_MS),
        market.fetch("SIM0066/USDT:USDT", JAN_2024, JAN_2024 + DAY_MS),
        check_exact=True,
    )
