"""Training samples: labels, the time-ordered purged split, the train-only scaler, and equality with
the live path for the same bars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.timegrid import MINUTE_MS
from data.bars import panel_from_candles
from ml.dataset import (
    MIN_NEUTRAL_GROUP,
    PURGED,
    TEST,
    TRAIN,
    VAL,
    Dataset,
    DatasetError,
    DatasetSpec,
    SplitBounds,
    build_dataset,
)
from ml.features import FEATURE_SPEC, build_live_batch, compute
from ml.features.engine import epoch_ms
from ml.labels import FLAT, LONG, SHORT, direction_classes, make_labels, tercile_classes
from ml.model import ModelConfig
from ml.scaling import RobustScaler
from ml.training import TrainingRecipe
from tests.support.feature_fixtures import BAR_MINUTES, candles, sim_bars

SYMBOLS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "XRP/USDT:USDT", "DOGE/USDT:USDT"]
DAYS = 20  # three days of feature warm-up, two 3.6-day purge gaps, and room for three parts
CONFIG = ModelConfig()
SPEC = DatasetSpec(phases=(0, 7), train_fraction=0.5, val_fraction=0.25)
Candles = dict[str, pd.DataFrame]  # symbol -> 1-minute candles
BAR_MS = BAR_MINUTES * MINUTE_MS


@pytest.fixture(scope="module")
def data() -> Candles:
    return {s: candles(s, DAYS) for s in SYMBOLS}


@pytest.fixture(scope="module")
def ds(data: Candles) -> Dataset:
    return build_dataset(data, CONFIG, SPEC)


def test_labels_by_hand() -> None:
    close = np.array(
        [100, 101, 99.2, 100.5, 102, 103, 101, 100, 99, 100, 101, 102, 103, 104, 105, 106, 107, 108.0]
    )
    high = close + 0.5
    low = close - 0.5
    complete = np.ones(close.size, dtype=bool)
    labels = make_labels(close, high, low, complete, (1, 2), (0.005, 0.01))
    # Row 0: 16-bar risk window needs rows 1..16: defined; row 1 needs 17: defined; row 2 needs 18: not.
    assert labels.valid.tolist() == [True, True] + [False] * 16
    np.testing.assert_allclose(labels.returns[0], [101 / 100 - 1, 99.2 / 100 - 1])
    assert labels.classes[0].tolist() == [LONG, FLAT]  # +1 % > 0.5 %; -0.8 % is inside the 1 % band
    np.testing.assert_allclose(labels.returns[1], [99.2 / 101 - 1, 100.5 / 101 - 1])
    assert labels.classes[1].tolist() == [SHORT, FLAT]  # -1.8 % < -0.5 %; -0.5 % inside 1 %
    # Risk of row 0: lows of rows 1..4 are 100.5, 98.7, 100, 101.5 -> drawdown 1.3 %; highs 101.5,
    # 99.7, 101, 102.5 -> rally 2.5 %; over 16 bars the lowest low is 98.5, the highest high 107.5.
    np.testing.assert_allclose(labels.risk[0], [0.013, 0.025, 0.015, 0.075])
    assert np.isnan(labels.returns[2]).all()
    assert np.isnan(labels.risk[2]).all()


def test_an_incomplete_future_bar_removes_the_labels_that_need_it() -> None:
    close = np.linspace(100, 110, 40)
    complete = np.ones(40, dtype=bool)
    complete[20] = False
    labels = make_labels(close, close + 1, close - 1, complete, (1, 4, 16, 48)[:3], (0.0015, 0.003, 0.007))
    assert not labels.valid[4:21].any()  # rows 4..20 look at bar 20 (16-bar window) or are bar 20
    assert labels.valid[:4].all()


def test_thresholds_are_inclusive_flat() -> None:
    r = np.array([[0.003], [-0.003], [0.0030001], [-0.0030001], [0.0]])
    assert direction_classes(r, np.array([0.003]))[:, 0].tolist() == [FLAT, FLAT, LONG, SHORT, FLAT]


def test_tercile_classes_rank_each_anchor_time_in_thirds() -> None:
    rng = np.random.default_rng(3)
    # Two anchor times of 9 symbols, one of 3 (too few to rank: the fixed band decides there).
    times = np.repeat(np.array([10, 20, 30]), [9, 9, 3])
    returns = rng.normal(0.0, 0.01, size=(21, 2))
    returns[9:18] *= 50  # a wild time: the thirds do not care how large the moves are
    returns[18:] = [[0.02, 0.0], [-0.02, 0.0], [0.0, 0.0]]
    classes = tercile_classes(returns, times, np.array([0.005, 0.005]), 5)
    for t in (10, 20):
        sel = times == t
        for j in range(2):
            assert np.bincount(classes[sel, j], minlength=3).tolist() == [3, 3, 3]
            order = np.argsort(returns[sel, j])
            assert classes[sel, j][order].tolist() == [SHORT] * 3 + [FLAT] * 3 + [LONG] * 3
    assert classes[18:, 0].tolist() == [LONG, SHORT, FLAT]
    assert classes[18:, 1].tolist() == [FLAT, FLAT, FLAT]


def test_the_recipes_label_by_terciles_of_the_neutral_returns(data: Candles) -> None:
    config = ModelConfig(direction_labels="tercile")
    ds = build_dataset(data, config, SPEC)
    expected = tercile_classes(
        ds.neutral_returns, ds.anchor_ms, np.asarray(config.direction_thresholds), MIN_NEUTRAL_GROUP
    )
    np.testing.assert_array_equal(ds.classes, expected)
    # Five symbols per anchor time, rank fractions 0.1 .. 0.9: two LONG, two SHORT, one FLAT.
    same = ds.anchor_ms == ds.anchor_ms[0]
    assert sorted(ds.classes[same, 0].tolist()) == [LONG, LONG, SHORT, SHORT, FLAT]
    assert TrainingRecipe().model.direction_labels == "tercile"
    assert ModelConfig().direction_labels == "threshold"  # what versions stored before it mean


def test_split_is_time_ordered_with_purge_gaps(ds: Dataset) -> None:
    gap = SPEC.gap_bars(CONFIG) * BAR_MS
    assert gap == (48 + 96 + FEATURE_SPEC.warmup) * BAR_MS
    train, val, test = (ds.anchor_ms[ds.part == p] for p in (TRAIN, VAL, TEST))
    assert train.size
    assert val.size
    assert test.size
    assert val.min() - train.max() >= gap
    assert test.min() - val.max() >= gap
    # No label of one part reaches the next part's first anchor, let alone its labels.
    assert train.max() + CONFIG.max_horizon * BAR_MS < val.min()
    assert val.max() + CONFIG.max_horizon * BAR_MS < test.min()
    # Nor does a later part's input window reach back into an earlier part's label period.
    assert val.min() - (CONFIG.context - 1) * BAR_MS > train.max() + CONFIG.max_horizon * BAR_MS
    # Nor the older bars its features read (the warm-up).
    reach = (CONFIG.context - 1 + FEATURE_SPEC.warmup) * BAR_MS
    assert val.min() - reach > train.max() + CONFIG.max_horizon * BAR_MS
    assert test.min() - reach > val.max() + CONFIG.max_horizon * BAR_MS
    assert (ds.part == PURGED).sum() > 0
    assert ds.split.val_start_ms - ds.split.train_end_ms == gap


def test_samples_are_finite_windows_at_the_requested_phases(ds: Dataset) -> None:
    x = ds.windows(np.arange(len(ds)))
    assert x.shape == (len(ds), 96, 240)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()
    phases = set(((ds.anchor_ms // MINUTE_MS) % BAR_MINUTES).tolist())
    assert phases == {0, 7}
    assert np.isfinite(ds.returns).all()
    assert np.isfinite(ds.risk).all()
    assert set(np.unique(ds.symbol).tolist()) == set(range(len(SYMBOLS)))


def test_scaler_is_fitted_on_training_rows_only(ds: Dataset) -> None:
    rows = []
    everything = []
    for symbol in SYMBOLS:
        for phase in SPEC.phases:
            bars = sim_bars(symbol, DAYS, phase)
            feats = compute(bars, bar_minutes=BAR_MINUTES).to_numpy()
            assert isinstance(bars.index, pd.DatetimeIndex)
            end_ms = epoch_ms(bars.index) + BAR_MS
            ok = np.isfinite(feats).all(axis=1)
            rows.append(feats[ok & (end_ms < ds.split.train_end_ms)])
            everything.append(feats[ok])
    expected = RobustScaler.fit(np.concatenate(rows))
    np.testing.assert_array_equal(ds.scaler.center, expected.center)
    np.testing.assert_array_equal(ds.scaler.scale, expected.scale)
    leaky = RobustScaler.fit(np.concatenate(everything))
    assert not np.array_equal(leaky.center, expected.center)


def test_training_windows_equal_the_live_batch_for_the_same_anchor(ds: Dataset, data: Candles) -> None:
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ds), 4, replace=False):
        symbol = ds.symbols[ds.symbol[i]]
        anchor = int(ds.anchor_ms[i])
        panel = panel_from_candles({symbol: data[symbol]}, anchor, FEATURE_SPEC.window, BAR_MINUTES)
        live = build_live_batch(panel, ds.scaler)
        assert live.symbols == [symbol]
        np.testing.assert_allclose(live.tensor[0], ds.windows(np.array([i]))[0], rtol=0, atol=2e-6)
        assert float(panel.close[0, -1]) == ds.close[i]


def test_neutral_returns_remove_the_cross_sectional_mean(ds: Dataset) -> None:
    t = ds.anchor_ms[0]
    same = ds.anchor_ms == t
    assert same.sum() == len(SYMBOLS)
    np.testing.assert_allclose(ds.neutral_returns[same].mean(axis=0), 0.0, atol=1e-15)


def test_a_given_split_and_scaler_are_used_as_is(ds: Dataset, data: Candles) -> None:
    # Evaluation of a stored version: a shorter history, the stored scaler and boundaries.
    start = ds.split.test_start_ms - (FEATURE_SPEC.warmup + CONFIG.context + 2) * BAR_MS
    short = {s: f[f["open_time"] >= start] for s, f in data.items()}
    again = build_dataset(short, CONFIG, SPEC, scaler=ds.scaler, split=ds.split)
    assert again.scaler is ds.scaler
    a, b = ds.indices("test"), again.indices("test")
    np.testing.assert_array_equal(ds.anchor_ms[a], again.anchor_ms[b])
    np.testing.assert_allclose(ds.windows(a), again.windows(b), rtol=0, atol=2e-6)


def test_split_bounds_round_trip() -> None:
    m = MINUTE_MS
    bounds = SplitBounds.from_anchors(0, 1000 * m, 0.7, 0.15, 10 * m)
    assert bounds == SplitBounds.from_dict(bounds.to_dict())
    edges = (bounds.train_end_ms, bounds.val_start_ms, bounds.val_end_ms, bounds.test_start_ms)
    assert edges == (700 * m, 710 * m, 850 * m, 860 * m)


def test_too_short_a_history_is_a_clear_error(data: Candles) -> None:
    with pytest.raises(DatasetError, match="history too short"):
        build_dataset({s: f.iloc[: 5 * 1440] for s, f in data.items()}, CONFIG, DatasetSpec())
