"""Causality and finite memory, feature by feature.

* No look-ahead: a feature's value at bar t does not change when later bars change or vanish.
* Finite memory: the value at t computed from the whole history equals the value computed from
  the declared window ``[t - warmup, t]`` alone. That is what makes a training row (long history)
  equal to the live row (the newest 96 + 200 bars).
* The declared warm-up is not padding: the oldest bar of the window does move the value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ml.features import FEATURE_SPEC, compute, compute_window
from ml.features.engine import epoch_ms
from tests.support.feature_fixtures import BAR_MINUTES, assert_same, sim_bars

SPEC = FEATURE_SPEC
WARMUPS = np.array([f.warmup for f in SPEC.features])
FIELDS = ("open", "high", "low", "close", "volume")
# Cut points at different offsets inside the engine's 96-row blocks.
CUTS = (317, 450, 583, 866, 1009)


@pytest.fixture(scope="module")
def history() -> tuple[pd.DataFrame, np.ndarray]:
    bars = sim_bars("ETH/USDT:USDT", days=12)
    return bars, compute(bars).to_numpy()


@pytest.mark.parametrize("cut", CUTS)
def test_removing_future_bars_changes_nothing_before(
    history: tuple[pd.DataFrame, np.ndarray], cut: int
) -> None:
    bars, full = history
    head = compute(bars.iloc[: cut + 1]).to_numpy()
    assert_same(head, full[: cut + 1], what=f"cut at {cut}")


@pytest.mark.parametrize("cut", CUTS)
def test_changing_future_bars_changes_nothing_before(
    history: tuple[pd.DataFrame, np.ndarray], cut: int
) -> None:
    bars, full = history
    rng = np.random.default_rng(cut)
    changed = bars.copy()
    after = changed.index[cut + 1 :]
    shock = np.exp(rng.normal(0.0, 0.05, after.size))
    for col in ("open", "high", "low", "close"):
        changed.loc[after, col] *= shock
    changed.loc[after, "volume"] *= rng.lognormal(0.0, 1.0, after.size)
    changed.loc[after[::7], "complete"] = False
    out = compute(changed).to_numpy()
    assert_same(out[: cut + 1], full[: cut + 1], what=f"cut at {cut}")
    # The change is real: rows after the cut do move.
    assert not np.allclose(out[cut + 50], full[cut + 50], equal_nan=True)


@pytest.mark.parametrize("t", [431, 700, 1000])
def test_each_feature_needs_only_its_declared_window(
    history: tuple[pd.DataFrame, np.ndarray], t: int
) -> None:
    bars, full = history
    for k in np.unique(WARMUPS):
        cols = np.flatnonzero(k == WARMUPS)
        window = compute(bars.iloc[t - k : t + 1], bar_minutes=BAR_MINUTES).to_numpy()[-1, cols]
        names = [SPEC.names[i] for i in cols]
        assert np.isfinite(window).all(), f"warm-up {k} is too short for {names}"
        assert_same(window, full[t, cols], what=f"t={t}, warm-up {k}: {names}")


def _last_row(arrays: list[np.ndarray], end_ms: np.ndarray, k: int) -> np.ndarray:
    """Features of the last bar of each window ``[n, k + 1]``; ``arrays`` are the ``FIELDS``."""
    o, h, low, c, v = arrays
    return compute_window(o, h, low, c, v, end_ms, start=k)[:, 0, :]


def test_the_oldest_bar_of_each_declared_window_matters(history: tuple[pd.DataFrame, np.ndarray]) -> None:
    bars, _ = history
    values = {f: bars[f].to_numpy() for f in FIELDS}
    assert isinstance(bars.index, pd.DatetimeIndex)
    end = epoch_ms(bars.index) + BAR_MINUTES * 60_000
    ts = np.arange(SPEC.warmup + 10, len(bars), 11)
    inert: list[str] = []
    for k in np.unique(WARMUPS):
        cols = [i for i in np.flatnonzero(k == WARMUPS) if SPEC.features[i].group != "time"]
        if not cols:
            continue
        idx = ts[:, None] + np.arange(-k, 1)[None, :]
        base = [values[f][idx] for f in FIELDS]
        bumped = [x.copy() for x in base]
        # A higher, wider bar with more volume; still a consistent bar (low <= open, close <= high).
        for j, factor in enumerate((1.1, 1.3, 0.9, 1.15, 5.0)):
            bumped[j][:, 0] *= factor
        a = _last_row(base, end[ts][:, None], k)[:, cols]
        b = _last_row(bumped, end[ts][:, None], k)[:, cols]
        # Above rounding (1e-16) but low enough for the far taps of composed filters (1e-10).
        moved = (np.abs(a - b) > 1e-12 * np.maximum(1.0, np.abs(a))).any(axis=0)
        inert += [SPEC.names[c] for c, m in zip(cols, moved, strict=True) if not m]
    assert not inert, f"declared warm-up longer than the real dependence: {inert}"


def test_time_features_read_only_their_own_bar_time(history: tuple[pd.DataFrame, np.ndarray]) -> None:
    bars, full = history
    cols = [i for i, f in enumerate(SPEC.features) if f.group == "time"]
    assert len(cols) == 6
    assert all(WARMUPS[cols] == 0)
    one = compute(bars.iloc[[600]], bar_minutes=BAR_MINUTES).to_numpy()[0, cols]
    assert_same(one, full[600, cols])
