"""The live path: anchored bars of many symbols -> scaled float32 [symbols, 96, 240] + quality flags.

Live and training are the same numbers: the live rows of a panel equal the training rows that
``compute`` gives for the same bars inside a long history, before and after scaling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.timegrid import MINUTE_MS
from data.bars import panel_from_candles, resample_anchored
from ml.features import FEATURE_SPEC, FeatureSpecMismatchError, build_live_batch, compute
from ml.features import live as live_module
from ml.features.engine import epoch_ms
from ml.features.indicators import REGISTRY
from ml.scaling import RobustScaler
from tests.support.feature_fixtures import BAR_MINUTES, DAY_MS, START_MS, assert_same, candles, sim_bars

SPEC = FEATURE_SPEC
SYMBOLS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "XRP/USDT:USDT", "DOGE/USDT:USDT", "1000PEPE/USDT:USDT"]
DAYS = 6
# An anchor off the quarter hour: live bars end at the current minute, not on a 15-minute grid.
ANCHOR = START_MS + 5 * DAY_MS + 7 * 60 * MINUTE_MS + 7 * MINUTE_MS
N_BARS = SPEC.window + 24
BAR_MS = BAR_MINUTES * MINUTE_MS


@pytest.fixture(scope="module")
def scaler() -> RobustScaler:
    feats = compute(sim_bars("SOL/USDT:USDT", days=10)).to_numpy()
    return RobustScaler.fit(feats[np.isfinite(feats).all(axis=1)])


def _candles(symbols: list[str]) -> dict[str, pd.DataFrame]:
    return {s: candles(s, DAYS).copy() for s in symbols}


def test_live_batch_shape_dtype_and_metadata(scaler: RobustScaler) -> None:
    panel = panel_from_candles(_candles(SYMBOLS), ANCHOR, N_BARS, BAR_MINUTES)
    batch = build_live_batch(panel, scaler)
    assert batch.symbols == SYMBOLS
    assert batch.tensor.shape == (len(SYMBOLS), SPEC.context, SPEC.n_features)
    assert batch.tensor.dtype == np.float32
    assert batch.tensor.flags.c_contiguous
    assert np.isfinite(batch.tensor).all()
    assert np.abs(batch.tensor).max() <= scaler.clip
    assert all(q.ok and q.reason is None for q in batch.quality.values())
    assert not batch.rejected
    assert batch.spec_hash == SPEC.hash
    assert batch.anchor_ms == ANCHOR
    np.testing.assert_array_equal(batch.bar_end_ms, panel.bar_open_ms[-SPEC.context :] + BAR_MS)
    assert batch.bar_end_ms[-1] == ANCHOR
    tensor = torch.from_numpy(batch.tensor)
    assert tensor.shape == (len(SYMBOLS), 96, 240)
    assert tensor.dtype == torch.float32


def test_live_rows_equal_training_rows_from_a_long_history(scaler: RobustScaler) -> None:
    panel = panel_from_candles(_candles(SYMBOLS), ANCHOR, N_BARS, BAR_MINUTES)
    batch = build_live_batch(panel, scaler)
    raw = live_module.live_features(panel)
    phase = (ANCHOR // MINUTE_MS) % BAR_MINUTES
    for i, sym in enumerate(SYMBOLS):
        # Training: every anchored bar of the whole history with the live anchor's phase.
        history = resample_anchored(candles(sym, DAYS), BAR_MINUTES, phase)
        train = compute(history)
        assert isinstance(train.index, pd.DatetimeIndex)
        open_ms = epoch_ms(train.index)
        rows = (open_ms >= ANCHOR - SPEC.context * BAR_MS) & (open_ms < ANCHOR)
        assert rows.sum() == SPEC.context
        expected = train.to_numpy()[rows]
        assert_same(raw.values[i], expected, what=sym)
        np.testing.assert_allclose(batch.tensor[i], scaler.transform(expected), rtol=1e-6, atol=2e-6)


def test_live_rows_equal_compute_on_the_same_bars() -> None:
    panel = panel_from_candles(_candles(SYMBOLS[:3]), ANCHOR, N_BARS, BAR_MINUTES)
    raw = live_module.live_features(panel)
    for i, sym in enumerate(panel.symbols):
        assert_same(raw.values[i], compute(panel.frame(sym)).to_numpy()[-SPEC.context :], what=sym)


def test_bad_symbols_are_rejected_with_a_reason_and_the_others_go_on(scaler: RobustScaler) -> None:
    data = _candles(SYMBOLS)
    gappy, young = SYMBOLS[1], SYMBOLS[3]
    frame = data[gappy]
    # Three missing minutes in three different bars inside the live window.
    lost = ANCHOR - np.array([5, 200, 2000]) * MINUTE_MS
    data[gappy] = frame[~frame["open_time"].isin(lost)]
    # A symbol listed 30 hours before the anchor: not enough history for the warm-up.
    listed = ANCHOR - 30 * 60 * MINUTE_MS
    data[young] = data[young][data[young]["open_time"] >= listed]
    panel = panel_from_candles(data, ANCHOR, N_BARS, BAR_MINUTES)
    batch = build_live_batch(panel, scaler)

    assert batch.symbols == [s for s in SYMBOLS if s not in (gappy, young)]
    assert batch.quality[gappy].reason == "incomplete bars: 3"
    assert batch.quality[gappy].incomplete_bars == 3
    young_reason = batch.quality[young].reason
    assert young_reason is not None
    assert young_reason.startswith("insufficient history: 120 of the 296 bars")
    assert batch.rejected == {gappy: "incomplete bars: 3", young: young_reason}
    assert batch.tensor.shape == (3, 96, 240)

    clean = build_live_batch(panel_from_candles(_candles(batch.symbols), ANCHOR, N_BARS, BAR_MINUTES), scaler)
    np.testing.assert_allclose(batch.tensor, clean.tensor, rtol=1e-6, atol=2e-6)


def test_a_non_finite_feature_rejects_only_its_symbol(
    monkeypatch: pytest.MonkeyPatch, scaler: RobustScaler
) -> None:
    original = REGISTRY["rsi"]

    def broken(ctx: object, **params: int) -> np.ndarray:
        out = original(ctx, **params).copy()
        out[2, 40] = np.nan  # the third symbol, 40th of the 96 rows
        return out

    monkeypatch.setitem(REGISTRY, "rsi", broken)
    panel = panel_from_candles(_candles(SYMBOLS), ANCHOR, N_BARS, BAR_MINUTES)
    batch = build_live_batch(panel, scaler)
    bad = SYMBOLS[2]
    end = pd.Timestamp(int(panel.bar_open_ms[-96 + 40] + BAR_MS), unit="ms", tz="UTC")
    assert batch.quality[bad].reason == f"non-finite feature rsi_6 at bar ending {end:%Y-%m-%dT%H:%M:%SZ}"
    assert batch.symbols == [s for s in SYMBOLS if s != bad]


def test_every_symbol_rejected_gives_an_empty_batch(scaler: RobustScaler) -> None:
    data = {s: c[c["open_time"] >= ANCHOR - 3 * DAY_MS // 4] for s, c in _candles(SYMBOLS[:2]).items()}
    batch = build_live_batch(panel_from_candles(data, ANCHOR, N_BARS, BAR_MINUTES), scaler)
    assert batch.tensor.shape == (0, 96, 240)
    assert batch.symbols == []
    assert set(batch.rejected) == set(SYMBOLS[:2])


def test_a_panel_shorter_than_context_plus_warmup_is_an_error(scaler: RobustScaler) -> None:
    panel = panel_from_candles(_candles(SYMBOLS[:1]), ANCHOR, SPEC.window - 1, BAR_MINUTES)
    with pytest.raises(ValueError, match="needs 296 bars"):
        build_live_batch(panel, scaler)


def test_a_scaler_for_another_spec_is_refused(scaler: RobustScaler) -> None:
    other = RobustScaler(scaler.names, "f" * 64, scaler.center, scaler.scale)
    panel = panel_from_candles(_candles(SYMBOLS[:1]), ANCHOR, N_BARS, BAR_MINUTES)
    with pytest.raises(FeatureSpecMismatchError):
        build_live_batch(panel, other)
