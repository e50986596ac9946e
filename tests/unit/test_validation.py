"""Every validation rule rejects bad data with its rule name; good data passes untouched."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import DataValidationError
from core.timegrid import MINUTE_MS
from data.validation import ValidationPolicy, is_stale, staleness_ms, validate_batch

T0 = 1_700_000_040_000  # on the minute grid
NOW = T0 + 10 * MINUTE_MS
POLICY = ValidationPolicy(max_fill_gap_minutes=3, max_abs_log_return=0.25, stale_after_ms=300_000)


def candles(n: int = 5, start: int = T0) -> pd.DataFrame:
    close = 100.0 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "open_time": start + MINUTE_MS * np.arange(n, dtype=np.int64),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 10.0),
            "turnover": close * 10.0,
        }
    )


def rule_of(frame: pd.DataFrame, **kwargs: object) -> str:
    with pytest.raises(DataValidationError) as info:
        validate_batch(frame, "BTC/USDT:USDT", now_ms=kwargs.pop("now_ms", NOW), policy=POLICY, **kwargs)  # type: ignore[arg-type]
    assert "BTC/USDT:USDT" in str(info.value)
    return info.value.rule


def test_clean_batch_passes_unchanged() -> None:
    frame = candles()
    batch = validate_batch(frame, "X", now_ms=NOW, policy=POLICY)
    assert batch.filled_minutes == 0
    assert not batch.frame["is_filled"].any()
    pd.testing.assert_frame_equal(batch.frame.drop(columns="is_filled"), frame)


def test_empty_batch_is_not_an_error() -> None:
    batch = validate_batch(candles(0), "X", now_ms=NOW, policy=POLICY)
    assert batch.newest_open_ms is None


def test_off_grid_timestamp() -> None:
    frame = candles()
    frame.loc[[2], "open_time"] += 1_000
    assert rule_of(frame) == "off_grid"


def test_duplicate_candle() -> None:
    frame = pd.concat([candles(3), candles(3).iloc[[2]]], ignore_index=True)
    assert rule_of(frame) == "duplicate"


def test_out_of_order_candles() -> None:
    frame = candles().iloc[[0, 2, 1, 3, 4]].reset_index(drop=True)
    assert rule_of(frame) == "out_of_order"


def test_forming_candle_is_rejected() -> None:
    frame = candles()
    assert rule_of(frame, now_ms=int(frame["open_time"].iloc[-1]) + MINUTE_MS // 2) == "not_closed"


@pytest.mark.parametrize("column", ["open", "high", "low", "close", "volume"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values(column: str, value: float) -> None:
    frame = candles()
    frame.loc[1, column] = value
    assert rule_of(frame) == "non_finite"


def test_non_positive_price() -> None:
    frame = candles()
    frame.loc[3, ["low"]] = 0.0
    assert rule_of(frame) == "non_positive_price"


@pytest.mark.parametrize(("column", "value"), [("high", 99.0), ("low", 200.0)])
def test_high_low_must_bound_open_and_close(column: str, value: float) -> None:
    frame = candles()
    frame.loc[0, column] = value
    assert rule_of(frame) == "ohlc_inconsistent"


def test_negative_volume() -> None:
    frame = candles()
    frame.loc[4, "volume"] = -1.0
    assert rule_of(frame) == "negative_volume"


def test_price_spike_inside_batch_and_against_stored_close() -> None:
    frame = candles()
    frame.loc[2, ["open", "high", "low", "close"]] = [150.0, 160.0, 140.0, 150.0]
    assert rule_of(frame) == "price_spike"
    assert rule_of(candles(), prev_close=50.0, expected_start_ms=T0) == "price_spike"


def test_spike_bound_is_configurable() -> None:
    frame = candles()
    frame.loc[2, ["open", "high", "low", "close"]] = [150.0, 160.0, 140.0, 150.0]
    loose = ValidationPolicy(max_abs_log_return=1.0)
    assert validate_batch(frame, "X", now_ms=NOW, policy=loose).filled_minutes == 0


def test_short_gap_is_filled_with_flat_candles_at_previous_close() -> None:
    frame = candles(6).drop(index=[2, 3]).reset_index(drop=True)
    batch = validate_batch(frame, "X", now_ms=NOW, policy=POLICY)
    assert batch.filled_minutes == 2
    out = batch.frame
    assert list(out["open_time"]) == [T0 + i * MINUTE_MS for i in range(6)]
    filled = out[out["is_filled"]]
    assert len(filled) == 2
    assert (filled[["open", "high", "low", "close"]] == 101.0).all().all()
    assert (filled["volume"] == 0).all()


def test_long_gap_is_an_outage_filled_flagged_and_reported() -> None:
    frame = candles(10).drop(index=[2, 3, 4, 5]).reset_index(drop=True)
    batch = validate_batch(frame, "X", now_ms=T0 + 20 * MINUTE_MS, policy=POLICY)
    assert batch.filled_minutes == 4
    assert list(batch.frame["open_time"]) == [T0 + i * MINUTE_MS for i in range(10)]
    assert batch.frame["is_filled"].tolist() == [False, False, True, True, True, True] + [False] * 4
    [gap] = batch.gaps
    assert (gap.start_ms, gap.end_ms, gap.minutes, gap.filled, gap.outage) == (
        T0 + 2 * MINUTE_MS,
        T0 + 6 * MINUTE_MS,
        4,
        4,
        True,
    )
    assert gap.describe() == "long gap 2023-11-14T22:16:00Z .. 2023-11-14T22:20:00Z (4 min)"


def test_short_gaps_are_reported_but_are_not_outages() -> None:
    frame = candles(8).drop(index=[2, 5, 6]).reset_index(drop=True)
    batch = validate_batch(frame, "X", now_ms=NOW, policy=POLICY)
    assert [(g.minutes, g.outage) for g in batch.gaps] == [(1, False), (2, False)]


def test_only_the_newest_minutes_of_a_very_long_gap_are_filled() -> None:
    policy = ValidationPolicy(max_fill_gap_minutes=3, max_gap_fill_minutes=5)
    start = T0 + 100 * MINUTE_MS
    batch = validate_batch(
        candles(2, start),
        "X",
        now_ms=start + 5 * MINUTE_MS,
        policy=policy,
        expected_start_ms=T0,
        prev_close=1.0,
    )
    [gap] = batch.gaps
    assert (gap.minutes, gap.filled) == (100, 5)
    assert batch.frame["open_time"].iloc[0] == start - 5 * MINUTE_MS
    assert batch.filled_minutes == 5


def test_a_price_that_moved_during_an_outage_is_not_a_spike() -> None:
    start = T0 + 30 * MINUTE_MS
    # +40 % across a 30-minute outage is real; the same move from one minute to the next is not.
    moved = validate_batch(
        candles(2, start) * [1, 1.4, 1.4, 1.4, 1.4, 1, 1.4],
        "X",
        now_ms=start + 5 * MINUTE_MS,
        policy=POLICY,
        expected_start_ms=T0,
        prev_close=100.0,
    )
    assert moved.gaps[0].outage
    assert rule_of(candles(2, T0) * [1, 1.4, 1.4, 1.4, 1.4, 1, 1.4], prev_close=100.0) == "price_spike"


def test_missing_minutes_before_a_first_candle_are_filled_at_its_open() -> None:
    batch = validate_batch(candles(2), "X", now_ms=NOW, policy=POLICY, expected_start_ms=T0 - 2 * MINUTE_MS)
    assert batch.filled_minutes == 2
    assert (batch.frame.loc[batch.frame["is_filled"], "close"] == 99.5).all()


def test_gap_against_stored_history() -> None:
    batch_long = validate_batch(
        candles(), "X", now_ms=NOW, policy=POLICY, expected_start_ms=T0 - 5 * MINUTE_MS, prev_close=100.0
    )
    assert [(g.minutes, g.outage) for g in batch_long.gaps] == [(5, True)]
    batch = validate_batch(
        candles(), "X", now_ms=NOW, policy=POLICY, expected_start_ms=T0 - 2 * MINUTE_MS, prev_close=99.0
    )
    assert batch.filled_minutes == 2
    assert batch.frame["open_time"].iloc[0] == T0 - 2 * MINUTE_MS


def test_overlap_with_stored_history() -> None:
    assert rule_of(candles(), expected_start_ms=T0 + MINUTE_MS, prev_close=100.0) == "overlap"


def test_malformed_frame() -> None:
    assert rule_of(candles().drop(columns=["close"])) == "malformed"


def test_staleness() -> None:
    assert staleness_ms(None, NOW) is None
    assert staleness_ms(NOW - MINUTE_MS, NOW) == 0
    assert is_stale(None, NOW, POLICY)
    assert not is_stale(NOW - 5 * MINUTE_MS, NOW, POLICY)
    assert is_stale(NOW - 7 * MINUTE_MS, NOW, POLICY)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("close", float("nan")),
        ("volume", float("inf")),
        ("low", -1.0),
        ("high", 50.0),  # below open and close
        ("low", 500.0),  # above open and close
        ("volume", -3.0),
        ("close", 1000.0),  # a 2.3 log-return spike
        (None, None),  # clean
    ],
)
def test_the_vectorised_check_agrees_with_the_rules(column: str | None, value: float | None) -> None:
    from data.validation import failing_rows

    frame = candles(4)
    if column is not None:
        frame.loc[2, column] = value
    values = frame[["open", "high", "low", "close", "volume", "turnover"]].to_numpy()
    prev = np.r_[99.0, values[:-1, 3]]
    flagged = failing_rows(frame["open_time"].to_numpy(), values, prev, POLICY)
    try:
        validate_batch(frame, "X", now_ms=NOW, policy=POLICY, prev_close=99.0)
        refused = False
    except DataValidationError:
        refused = True
    assert flagged.any() == refused
    assert flagged.tolist() == [False, False, refused, refused and column == "close" and value == 1000.0]
