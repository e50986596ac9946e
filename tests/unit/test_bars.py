"""Anchored bars: the newest bar ends at the anchor, incomplete bars are NaN, training == live."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.timegrid import MINUTE_MS
from data.bars import panel_from_candles, resample_anchored

ANCHOR = 1_700_000_040_000 + 60 * MINUTE_MS


def minutes(n: int, end: int = ANCHOR, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    return pd.DataFrame(
        {
            "open_time": end - MINUTE_MS * np.arange(n, 0, -1, dtype=np.int64),
            "open": open_,
            "high": np.maximum(open_, close) * 1.001,
            "low": np.minimum(open_, close) * 0.999,
            "close": close,
            "volume": rng.uniform(1, 2, n),
            "turnover": np.nan,
        }
    )


def test_newest_bar_covers_the_minutes_before_the_anchor() -> None:
    frame = minutes(60)
    panel = panel_from_candles({"A": frame}, ANCHOR, n_bars=4, bar_minutes=15)
    bars = panel.frame("A")
    last = frame.iloc[-15:]
    assert bars.index[-1] == pd.Timestamp(ANCHOR - 15 * MINUTE_MS, unit="ms", tz="UTC")
    assert bars["open"].iloc[-1] == last["open"].iloc[0]
    assert bars["close"].iloc[-1] == last["close"].iloc[-1]
    assert bars["high"].iloc[-1] == last["high"].max()
    assert bars["low"].iloc[-1] == last["low"].min()
    assert bars["volume"].iloc[-1] == pytest.approx(last["volume"].sum())
    assert panel.complete.all()


def test_missing_minute_makes_only_its_bar_incomplete() -> None:
    frame = minutes(60).drop(index=[20]).reset_index(drop=True)
    panel = panel_from_candles({"A": frame}, ANCHOR, n_bars=4, bar_minutes=15)
    assert panel.complete.tolist() == [[True, False, True, True]]
    assert np.isnan(panel.close[0, 1])
    assert panel.incomplete_symbols() == {"A": 1}


def test_history_shorter_than_the_window_is_incomplete() -> None:
    panel = panel_from_candles({"A": minutes(30)}, ANCHOR, n_bars=4, bar_minutes=15)
    assert panel.complete.tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("phase", [0, 1, 7, 14])
def test_training_resample_equals_live_bars_for_every_anchor_phase(phase: int) -> None:
    frame = minutes(600)
    history = resample_anchored(frame, 15, phase)
    anchors = [
        a for a in range(ANCHOR - 300 * MINUTE_MS, ANCHOR + 1, MINUTE_MS) if (a // MINUTE_MS) % 15 == phase
    ]
    for anchor in anchors:
        live = panel_from_candles({"A": frame}, anchor, n_bars=8, bar_minutes=15).frame("A")
        train = history.loc[history.index < pd.Timestamp(anchor, unit="ms", tz="UTC")].iloc[-8:]
        pd.testing.assert_frame_equal(live, train.drop(columns="complete"), check_freq=False)
