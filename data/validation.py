"""Candle validation rules (docs/DATA_VALIDATION.md). A batch passes whole or is rejected whole.

Each rule raises ``DataValidationError`` with a stable ``rule`` name; the ingestion quarantines the
symbol with it. Missing minutes are never a rejection: an exchange that printed nothing for a while
(an illiquid market, maintenance, an outage) is a fact to record, not bad data. Every gap is filled
with flat synthetic candles flagged ``is_filled`` (so that bars stay whole and the feature stage can
judge how much of a window is real) and reported as a ``Gap``; gaps longer than
``max_fill_gap_minutes`` are outages. Only the newest ``max_gap_fill_minutes`` of a gap are filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from core.errors import DataValidationError
from core.settings import Settings
from core.timegrid import MINUTE_MS, iso_minute
from data.candles import CANDLE_COLUMNS, PRICE_COLUMNS, coerce_candles

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class ValidationPolicy:
    max_fill_gap_minutes: int = 3
    max_abs_log_return: float = 0.25
    stale_after_ms: int = 300_000
    max_gap_fill_minutes: int = (96 + 200 + 1) * 15
    outage_min_share: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationPolicy:
        return cls(
            max_fill_gap_minutes=settings.data.max_fill_gap_minutes,
            max_abs_log_return=settings.data.max_abs_log_return,
            stale_after_ms=settings.data.stale_after_seconds * 1000,
            max_gap_fill_minutes=settings.data.max_gap_fill_minutes,
            outage_min_share=settings.data.outage_min_share,
        )


@dataclass(frozen=True)
class Gap:
    """Minutes ``[start_ms, end_ms)`` the source had no candle for; ``filled`` of them were filled."""

    start_ms: int
    end_ms: int
    filled: int
    outage: bool

    @property
    def minutes(self) -> int:
        return (self.end_ms - self.start_ms) // MINUTE_MS

    def describe(self) -> str:
        kind = "long gap" if self.outage else "gap"
        tail = "" if self.filled == self.minutes else f", newest {self.filled} filled"
        return f"{kind} {iso_minute(self.start_ms)} .. {iso_minute(self.end_ms)} ({self.minutes} min{tail})"


@dataclass(frozen=True)
class ValidatedBatch:
    """A batch that passed every rule: ``frame`` has the candle columns plus ``is_filled``."""

    symbol: str
    frame: pd.DataFrame
    filled_minutes: int
    gaps: tuple[Gap, ...] = ()

    @property
    def newest_open_ms(self) -> int | None:
        return int(self.frame["open_time"].iloc[-1]) if len(self.frame) else None


def _first(mask: np.ndarray | np.bool_) -> int:
    return int(np.flatnonzero(mask)[0])


def validate_batch(
    frame: pd.DataFrame,
    symbol: str,
    *,
    now_ms: int,
    policy: ValidationPolicy,
    expected_start_ms: int | None = None,
    prev_close: float | None = None,
) -> ValidatedBatch:
    """Check one symbol's new candles; ``expected_start_ms``/``prev_close`` continue stored history."""

    def fail(rule: str, message: str) -> DataValidationError:
        return DataValidationError(rule, message, symbol=symbol)

    try:
        candles = coerce_candles(frame)
    except (ValueError, TypeError, KeyError) as exc:
        raise fail("malformed", str(exc)) from exc
    ts = candles["open_time"].to_numpy()
    if len(ts) == 0:
        return ValidatedBatch(symbol, candles.assign(is_filled=np.zeros(0, dtype=bool)), 0)

    off_grid = ts % MINUTE_MS != 0
    if off_grid.any():
        raise fail("off_grid", f"open time {int(ts[_first(off_grid)])} ms is not on the 1-minute grid")
    step = np.diff(ts)
    if (step == 0).any():
        raise fail("duplicate", f"candle {iso_minute(int(ts[_first(step == 0)]))} appears more than once")
    if (step < 0).any():
        i = _first(step < 0)
        raise fail(
            "out_of_order", f"candle {iso_minute(int(ts[i + 1]))} comes after {iso_minute(int(ts[i]))}"
        )
    if ts[-1] + MINUTE_MS > now_ms:
        raise fail("not_closed", f"candle {iso_minute(int(ts[-1]))} has not closed yet")
    if expected_start_ms is not None and ts[0] < expected_start_ms:
        raise fail("overlap", f"candle {iso_minute(int(ts[0]))} precedes {iso_minute(expected_start_ms)}")

    values = candles[["open", "high", "low", "close", "volume"]].to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        column = CANDLE_COLUMNS[1 + col]
        raise fail("non_finite", f"{column} is {values[row, col]} at {iso_minute(int(ts[row]))}")
    prices = candles[list(PRICE_COLUMNS)].to_numpy()
    if (prices <= 0).any():
        row = _first((prices <= 0).any(axis=1))
        raise fail("non_positive_price", f"price <= 0 at {iso_minute(int(ts[row]))}")
    o, h, lo, c = prices.T
    incoherent = (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (h < lo)
    if incoherent.any():
        row = _first(incoherent)
        raise fail(
            "ohlc_inconsistent",
            f"high {h[row]} / low {lo[row]} do not bound open {o[row]} / close {c[row]}"
            f" at {iso_minute(int(ts[row]))}",
        )
    volume = values[:, 4]
    if (volume < 0).any():
        row = _first(volume < 0)
        raise fail("negative_volume", f"volume {volume[row]} at {iso_minute(int(ts[row]))}")

    closes = c if prev_close is None else np.concatenate([[prev_close], c])
    log_ret = np.abs(np.diff(np.log(closes)))
    # A price that moved while the exchange printed nothing for longer than an ordinary gap moved
    # for real: only returns between minutes close together can be spikes.
    if prev_close is None:
        span = np.diff(ts)
    else:
        span = np.diff(np.concatenate([[_previous_open(ts, expected_start_ms)], ts]))
    spikes = (log_ret > policy.max_abs_log_return) & (span <= (policy.max_fill_gap_minutes + 1) * MINUTE_MS)
    if spikes.any():
        i = _first(spikes)
        at = ts[i] if prev_close is not None else ts[i + 1]
        raise fail(
            "price_spike",
            f"|log return| {log_ret[i]:.3f} at {iso_minute(int(at))} exceeds {policy.max_abs_log_return}",
        )

    return _fill_gaps(candles, symbol, policy, expected_start_ms, prev_close)


def failing_rows(
    ts: np.ndarray, values: np.ndarray, prev_close: np.ndarray, policy: ValidationPolicy
) -> npt.NDArray[np.bool_]:
    """The rows that break a rule, checked for many symbols' next minutes at once.

    ``values`` are ``[n, 6]`` open, high, low, close, volume, turnover; ``prev_close`` is each row's
    previous close (NaN where unknown). The caller guarantees one row per minute, in order, with no
    hole; a failing row's symbol goes through ``validate_batch`` for the rule's name and message.
    """
    o, h, lo, c, v = values[:, 0], values[:, 1], values[:, 2], values[:, 3], values[:, 4]
    with np.errstate(invalid="ignore", divide="ignore"):
        bad: npt.NDArray[np.bool_] = ~np.isfinite(values[:, :5]).all(axis=1) | (ts % MINUTE_MS != 0)
        bad |= (values[:, :4] <= 0).any(axis=1) | (v < 0)
        bad |= (h < np.maximum(o, c)) | (lo > np.minimum(o, c)) | (h < lo)
        bad |= np.abs(np.log(c / prev_close)) > policy.max_abs_log_return
    return bad


def _previous_open(ts: np.ndarray, expected_start_ms: int | None) -> int:
    return int(ts[0] - MINUTE_MS if expected_start_ms is None else expected_start_ms - MINUTE_MS)


def _fill_gaps(
    candles: pd.DataFrame,
    symbol: str,
    policy: ValidationPolicy,
    expected_start_ms: int | None,
    prev_close: float | None,
) -> ValidatedBatch:
    import pandas as pd

    ts = candles["open_time"].to_numpy()
    missing = np.diff(np.concatenate([[_previous_open(ts, expected_start_ms)], ts])) // MINUTE_MS - 1
    out = candles.assign(is_filled=np.zeros(len(candles), dtype=bool))
    idx = np.flatnonzero(missing)
    if not len(idx):
        return ValidatedBatch(symbol, out, 0)
    # Older minutes of a very long gap lie outside every live window: filling them only costs rows.
    fills = np.minimum(missing[idx], policy.max_gap_fill_minutes)
    gaps = tuple(
        Gap(
            start_ms=int(ts[i] - MINUTE_MS * missing[i]),
            end_ms=int(ts[i]),
            filled=int(n),
            outage=bool(missing[i] > policy.max_fill_gap_minutes),
        )
        for i, n in zip(idx, fills, strict=True)
    )
    # A flat candle at the previous close says "no trade happened": the honest minimum claim. Before
    # the first candle of a symbol with no history the only price known is that candle's open.
    closes = candles["close"].to_numpy()
    first_price = prev_close if prev_close is not None else float(candles["open"].iloc[0])
    before = np.concatenate([[first_price], closes[:-1]])
    fill_ts = np.concatenate(
        [ts[i] - MINUTE_MS * np.arange(n, 0, -1) for i, n in zip(idx, fills, strict=True)]
    )
    fill_px = np.repeat(before[idx], fills)
    fill = pd.DataFrame(
        {
            "open_time": fill_ts.astype(np.int64),
            "open": fill_px,
            "high": fill_px,
            "low": fill_px,
            "close": fill_px,
            "volume": 0.0,
            "turnover": 0.0,
            "is_filled": True,
        }
    )
    merged = pd.concat([out, fill], ignore_index=True).sort_values("open_time", kind="stable")
    return ValidatedBatch(symbol, merged.reset_index(drop=True), int(fills.sum()), gaps)


def staleness_ms(newest_open_ms: int | None, now_ms: int) -> int | None:
    """How far the newest stored candle's close lags ``now`` (None when nothing is stored)."""
    if newest_open_ms is None:
        return None
    return max(0, now_ms - (newest_open_ms + MINUTE_MS))


def is_stale(newest_open_ms: int | None, now_ms: int, policy: ValidationPolicy) -> bool:
    lag = staleness_ms(newest_open_ms, now_ms)
    return lag is None or lag > policy.stale_after_ms
