"""Window quality after an outage: which symbols get a signal, and how soon they come back.

The recovery times here are the ones docs/DATA.md quotes: with the default thresholds (at most
20 % of the 96-bar context filled, the newest bar at least half traded) a symbol is back 8 minutes
after a 10-minute or a 2-hour outage ends, and about 19 hours after a 1-day outage.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.settings import PipelineSettings
from core.timegrid import MINUTE_MS
from data.bars import panel_from_candles
from data.validation import ValidationPolicy, validate_batch
from ml.features import FEATURE_SPEC

BAR = 15
T0 = 1_763_942_400_000
CONTEXT = FEATURE_SPEC.context
DEFAULTS = PipelineSettings()


def traded(start: int, minutes: int, price: float = 100.0) -> pd.DataFrame:
    close = price * np.exp(np.cumsum(np.full(minutes, 1e-5)))
    return pd.DataFrame(
        {
            "open_time": start + MINUTE_MS * np.arange(minutes, dtype=np.int64),
            "open": close,
            "high": close * 1.001,
            "low": close * 0.999,
            "close": close,
            "volume": 1.0,
            "turnover": np.nan,
        }
    )


def history_with_outage(outage_minutes: int, after_minutes: int) -> tuple[pd.DataFrame, int]:
    """A day and a half of candles, an outage, then ``after_minutes`` of candles; and the anchor."""
    before = CONTEXT * BAR + 600
    resume = T0 + (before + outage_minutes) * MINUTE_MS
    raw = pd.concat([traded(T0, before), traded(resume, after_minutes)], ignore_index=True)
    policy = ValidationPolicy(max_abs_log_return=1.0)
    batch = validate_batch(raw, "X", now_ms=resume + after_minutes * MINUTE_MS, policy=policy)
    return batch.frame, resume + after_minutes * MINUTE_MS


def reasons(outage_minutes: int, after_minutes: int) -> dict[str, str]:
    frame, anchor = history_with_outage(outage_minutes, after_minutes)
    panel = panel_from_candles({"X": frame}, anchor, CONTEXT, BAR)
    assert panel.complete.all()  # filled minutes keep the bars whole
    return panel.quality_reasons(
        CONTEXT, DEFAULTS.max_filled_share, DEFAULTS.min_real_share_newest_bar
    )


def minutes_until_signal(outage_minutes: int, step: int = 1, limit: int = 2 * 1440) -> int:
    """The first minute after the outage ends at which the window passes (searched by bisection)."""
    low, high = 0, limit
    assert reasons(outage_minutes, high) == {}
    while high - low > step:
        mid = (low + high) // 2
        if reasons(outage_minutes, mid):
            low = mid
        else:
            high = mid
    return high


def test_a_clean_window_passes() -> None:
    assert reasons(0, 60) == {}


def test_during_an_outage_the_newest_bar_is_not_real() -> None:
    # The candles resumed one minute ago: 14 of the newest bar's 15 minutes are filled.
    [reason] = reasons(30, 1).values()
    assert reason.startswith("window_quality: newest bar 7% traded")


@pytest.mark.parametrize(
    ("outage", "expected_minutes"),
    [(10, 8), (120, 8)],
)
def test_short_outages_come_back_within_a_bar(outage: int, expected_minutes: int) -> None:
    assert minutes_until_signal(outage) == expected_minutes


def test_a_day_long_outage_comes_back_when_80_percent_of_the_context_is_real() -> None:
    back = minutes_until_signal(1440, step=1)
    # 1440 filled minutes of a 1440-minute context; 20 % may stay filled: 1152 real minutes needed.
    assert back == 1152
    [reason] = reasons(1440, 600).values()
    assert "of the last 96 bars filled" in reason
