"""The feature engine: API, warm-up and NaN policy, no constant or non-finite feature, scale-free."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest

from ml.features import FEATURE_SPEC, FeatureInputError, compute, compute_series, compute_window
from ml.features.engine import epoch_ms
from tests.support.feature_fixtures import BAR_MINUTES, assert_same, real_bars, sim_bars

SPEC = FEATURE_SPEC
WARMUPS = np.array([f.warmup for f in SPEC.features])
# A coin at tens of thousands of dollars and one at about a cent: the same code serves both.
SYMBOLS = ("BTC/USDT:USDT", "1000PEPE/USDT:USDT")


Month = dict[str, tuple[pd.DataFrame, pd.DataFrame]]  # symbol -> (bars, features)
FIELDS = ("open", "high", "low", "close", "volume")


def _end_ms(bars: pd.DataFrame) -> npt.NDArray[np.int64]:
    """Each bar's end time, epoch ms."""
    index = bars.index
    assert isinstance(index, pd.DatetimeIndex)
    return epoch_ms(index) + BAR_MINUTES * 60_000


@pytest.fixture(scope="module")
def month() -> Month:
    out = {}
    for sym in SYMBOLS:
        bars = sim_bars(sym, days=30)
        out[sym] = (bars, compute(bars))
    return out


def test_compute_returns_the_spec_columns_on_the_same_index(month: Month) -> None:
    bars, feats = month["BTC/USDT:USDT"]
    assert list(feats.columns) == list(SPEC.names)
    assert feats.index.equals(bars.index)
    assert set(feats.dtypes) == {np.dtype(np.float64)}
    assert len(bars) == 30 * 96


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_30_days_no_feature_is_constant_or_non_finite_after_warmup(month: Month, symbol: str) -> None:
    _, feats = month[symbol]
    after = feats.to_numpy()[SPEC.warmup :]
    non_finite = [SPEC.names[i] for i in np.flatnonzero(~np.isfinite(after).all(axis=0))]
    assert not non_finite
    spread = after.max(axis=0) - after.min(axis=0)
    constant = [
        SPEC.names[i] for i in np.flatnonzero(spread <= 1e-12 * np.maximum(1.0, np.abs(after).max(axis=0)))
    ]
    assert not constant
    # Not just "not constant": every feature takes many distinct values over the month.
    distinct = np.array([np.unique(after[:, i]).size for i in range(SPEC.n_features)])
    assert distinct.min() >= 2
    assert (distinct >= 50).sum() >= 230


def test_warmup_rows_are_nan_and_the_first_row_after_is_finite(month: Month) -> None:
    _, feats = month["BTC/USDT:USDT"]
    values = feats.to_numpy()
    first_finite = np.isfinite(values).argmax(axis=0)
    assert (first_finite == WARMUPS).all()
    rows = np.arange(len(values))[:, None]
    assert np.isnan(values[rows < WARMUPS]).all()


def test_leading_nan_of_the_raw_computation_equals_the_declared_warmup() -> None:
    # Without the final mask, a feature's own look-back decides where its values start: a
    # declared warm-up shorter than the real one would show here (longer: in the causality tests).
    bars = sim_bars("ETH/USDT:USDT", days=4)
    o, h, low, c, v = (bars[x].to_numpy()[None, :] for x in FIELDS)
    raw = compute_window(o, h, low, c, v, _end_ms(bars), start=0, mask=False)[0]
    lead = np.isfinite(raw).argmax(axis=0)
    wrong = {SPEC.names[i]: (int(lead[i]), int(WARMUPS[i])) for i in np.flatnonzero(lead != WARMUPS)}
    assert not wrong
    assert np.isfinite(raw[SPEC.warmup :]).all()


def test_an_incomplete_bar_blanks_exactly_the_windows_that_contain_it() -> None:
    bars = sim_bars("SOL/USDT:USDT", days=8)
    k = 400
    clean = compute(bars).to_numpy()
    bars.loc[bars.index[k], "complete"] = False
    holed = compute(bars).to_numpy()
    rows = np.arange(len(bars))[:, None]
    touched = (rows >= k) & (rows <= k + WARMUPS)
    assert np.isnan(holed[touched]).all()
    valid = ~touched & (rows >= WARMUPS)
    assert_same(holed[valid], clean[valid])


def test_nan_prices_count_as_incomplete() -> None:
    bars = sim_bars("SOL/USDT:USDT", days=5).drop(columns="complete")
    bars.loc[bars.index[300], "close"] = np.nan
    bars.loc[bars.index[310], "low"] = -1.0
    feats = compute(bars).to_numpy()
    rows = np.arange(len(bars))[:, None]
    sees = np.zeros(feats.shape, dtype=bool)
    for k in (300, 310):
        sees |= (rows >= k) & (rows - WARMUPS <= k)
    assert np.isnan(feats[sees]).all()
    assert np.isfinite(feats[~sees & (rows >= WARMUPS)]).all()


def test_features_are_scale_free() -> None:
    bars = sim_bars("ETH/USDT:USDT", days=5)
    scaled = bars.copy()
    scaled[["open", "high", "low", "close"]] *= 12_345.678
    scaled["volume"] *= 1e-4
    a = compute(bars).to_numpy()
    b = compute(scaled).to_numpy()
    assert_same(b, a, rtol=1e-7, atol=1e-10)


def test_compute_does_not_modify_its_input() -> None:
    bars = sim_bars("ETH/USDT:USDT", days=3)
    before = bars.copy()
    compute(bars)
    pd.testing.assert_frame_equal(bars, before)


def test_compute_is_the_same_core_as_compute_series() -> None:
    bars = sim_bars("ETH/USDT:USDT", days=4).drop(columns="complete")
    o, h, low, c, v = (bars[x].to_numpy() for x in FIELDS)
    series = compute_series(o, h, low, c, v, _end_ms(bars))
    np.testing.assert_array_equal(series, compute(bars).to_numpy())


def test_real_file_with_weekend_gaps_needs_consent() -> None:
    bars = real_bars("EURUSD.csv").iloc[:600]
    with pytest.raises(FeatureInputError, match="not evenly spaced"):
        compute(bars)
    feats = compute(bars, allow_irregular=True)
    assert np.isfinite(feats.to_numpy()[SPEC.warmup :]).all()


def test_short_and_empty_inputs() -> None:
    bars = sim_bars("ETH/USDT:USDT", days=1)
    short = compute(bars.iloc[:50])
    assert short.shape == (50, 240)
    assert np.isfinite(short["ret_1"].iloc[1:]).all()
    assert np.isnan(short["sma_dist_200"]).all()
    empty = compute(bars.iloc[:0])
    assert empty.shape == (0, 240)
    assert list(empty.columns) == list(SPEC.names)
    one = compute(bars.iloc[:1], bar_minutes=15)
    assert np.isfinite(one.filter(like="tod").to_numpy()).all()
    with pytest.raises(FeatureInputError, match="bar_minutes"):
        compute(bars.iloc[:1])


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda b: b.drop(columns="volume"), "missing_columns"),
        (lambda b: b.tz_convert(None), "index_not_utc"),
        (lambda b: b.tz_convert("Europe/London"), "index_not_utc"),
        (lambda b: b.reset_index(drop=True), "index_not_datetime"),
        (lambda b: b.iloc[::-1], "index_not_monotonic"),
        (lambda b: pd.concat([b.iloc[:5], b.iloc[4:10]]), "duplicate_index"),
        (lambda b: b.drop(index=b.index[7]), "irregular_index"),
    ],
)
def test_malformed_input_is_refused_with_a_clear_error(mutate: object, rule: str) -> None:
    bars = sim_bars("ETH/USDT:USDT", days=1)
    with pytest.raises(FeatureInputError) as err:
        compute(mutate(bars))  # type: ignore[operator]
    assert err.value.rule == rule
    assert isinstance(err.value, ValueError)


def test_time_encodings_follow_the_bar_end() -> None:
    bars = sim_bars("ETH/USDT:USDT", days=8)
    feats = compute(bars)
    assert isinstance(bars.index, pd.DatetimeIndex)
    end = bars.index + pd.Timedelta(minutes=BAR_MINUTES)
    hours = end.hour + end.minute / 60.0
    np.testing.assert_allclose(feats["tod_sin"], np.sin(2 * np.pi * hours / 24), atol=1e-12)
    np.testing.assert_allclose(feats["tod_cos"], np.cos(2 * np.pi * hours / 24), atol=1e-12)
    week = (end.dayofweek + hours / 24.0) / 7.0  # Monday 00:00 is phase 0
    np.testing.assert_allclose(feats["dow_sin"], np.sin(2 * np.pi * week), atol=1e-12)
    np.testing.assert_allclose(feats["dow_cos"], np.cos(2 * np.pi * week), atol=1e-12)


def test_results_do_not_depend_on_how_the_work_is_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.features import engine

    bars = sim_bars("ETH/USDT:USDT", days=6)
    whole = compute(bars).to_numpy()
    monkeypatch.setattr(engine, "_ROWS_PER_CALL", 2)
    monkeypatch.setattr(engine, "_BLOCKS_PER_CALL", 3)
    assert_same(compute(bars).to_numpy(), whole)
