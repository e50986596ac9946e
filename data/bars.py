"""Anchored bars (DESIGN.md §3): model bars built from closed 1-minute candles ending at a minute.

For an anchor minute ``A`` (the open time of the forming candle, i.e. "now" on the minute grid) and a
bar of ``m`` minutes, bar ``k`` (0 = newest) covers the candles with open time in
``[A - (k+1)·m, A - k·m)``. A bar is *complete* when all ``m`` candles are present; an incomplete bar
has NaN prices so that nothing downstream can mistake it for real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.timegrid import MINUTE_MS

if TYPE_CHECKING:
    import pandas as pd

BAR_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class BarPanel:
    """Anchored bars of many symbols on one time axis, as ``[symbol, bar]`` arrays (oldest bar first)."""

    symbols: list[str]
    anchor_ms: int
    bar_minutes: int
    bar_open_ms: np.ndarray  # int64 [n_bars], ascending open time of each bar
    open: np.ndarray  # float64 [n_symbols, n_bars]
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    complete: np.ndarray  # bool [n_symbols, n_bars]
    # int [n_symbols, n_bars]: minutes of each bar that were filled, not traded (None: none known)
    filled: np.ndarray | None = field(default=None)

    @property
    def n_bars(self) -> int:
        return int(self.bar_open_ms.shape[0])

    def subset(self, symbols: list[str]) -> BarPanel:
        """The same bars for ``symbols`` only (each must be in the panel)."""
        rows = [self.symbols.index(s) for s in symbols]
        return BarPanel(
            symbols=list(symbols),
            anchor_ms=self.anchor_ms,
            bar_minutes=self.bar_minutes,
            bar_open_ms=self.bar_open_ms,
            complete=self.complete[rows],
            filled=None if self.filled is None else self.filled[rows],
            **{name: getattr(self, name)[rows] for name in BAR_FIELDS},
        )

    def filled_minutes(self) -> np.ndarray:
        if self.filled is None:
            return np.zeros(self.complete.shape, dtype=np.int64)
        return self.filled

    def quality_reasons(
        self, context_bars: int, max_filled_share: float, min_real_share_newest_bar: float
    ) -> dict[str, str]:
        """Symbols whose window is too little traded to trust a signal, with the reason.

        The window is the newest ``context_bars`` bars (the model's input). A symbol passes when at
        most ``max_filled_share`` of its minutes there were filled and its newest bar is at least
        ``min_real_share_newest_bar`` real. Incomplete bars are the feature stage's own business.
        """
        filled = self.filled_minutes()[:, -context_bars:]
        window_share = filled.sum(axis=1) / (filled.shape[1] * self.bar_minutes)
        newest_real = 1.0 - filled[:, -1] / self.bar_minutes
        reasons: dict[str, str] = {}
        for i, symbol in enumerate(self.symbols):
            if newest_real[i] < min_real_share_newest_bar:
                reasons[symbol] = (
                    f"window_quality: newest bar {newest_real[i]:.0%} traded "
                    f"(needs {min_real_share_newest_bar:.0%}); the exchange printed no candles"
                )
            elif window_share[i] > max_filled_share:
                reasons[symbol] = (
                    f"window_quality: {window_share[i]:.1%} of the last {filled.shape[1]} bars filled "
                    f"(at most {max_filled_share:.0%}); signals resume as real candles replace the gap"
                )
        return reasons

    def index(self) -> pd.DatetimeIndex:
        import pandas as pd

        return pd.DatetimeIndex(pd.to_datetime(self.bar_open_ms, unit="ms", utc=True), name="time")

    def frame(self, symbol: str) -> pd.DataFrame:
        """One symbol's bars as the DataFrame ``ml.features.compute`` takes."""
        import pandas as pd

        i = self.symbols.index(symbol)
        return pd.DataFrame(
            {name: getattr(self, name)[i] for name in BAR_FIELDS},
            index=self.index(),
        )

    def incomplete_symbols(self) -> dict[str, int]:
        """Symbols with at least one incomplete bar, and how many."""
        missing = (~self.complete).sum(axis=1)
        return {s: int(n) for s, n in zip(self.symbols, missing, strict=True) if n}


def bar_open_times(anchor_ms: int, n_bars: int, bar_minutes: int) -> np.ndarray:
    bar_ms = bar_minutes * MINUTE_MS
    return anchor_ms - bar_ms * np.arange(n_bars, 0, -1, dtype=np.int64)


def aggregate_minutes(
    open_time: np.ndarray,
    ohlcv: np.ndarray,
    anchor_ms: int,
    n_bars: int,
    bar_minutes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate one symbol's 1-minute candles into anchored bars.

    ``open_time`` is int64 [n], ``ohlcv`` float64 [n, 5]. Candles outside the window are ignored.
    Returns ``(bars [n_bars, 5], complete [n_bars])`` with bars oldest first.
    """
    total = n_bars * bar_minutes
    start = anchor_ms - total * MINUTE_MS
    slot = (open_time - start) // MINUTE_MS
    keep = (slot >= 0) & (slot < total) & ((open_time - start) % MINUTE_MS == 0)
    grid = np.full((total, 5), np.nan)
    grid[slot[keep]] = ohlcv[keep]
    cube = grid.reshape(n_bars, bar_minutes, 5)
    complete = ~np.isnan(cube[:, :, 3]).any(axis=1)
    bars = np.full((n_bars, 5), np.nan)
    with np.errstate(invalid="ignore"):
        bars[:, 0] = cube[:, 0, 0]
        bars[:, 1] = cube[:, :, 1].max(axis=1)
        bars[:, 2] = cube[:, :, 2].min(axis=1)
        bars[:, 3] = cube[:, -1, 3]
        bars[:, 4] = cube[:, :, 4].sum(axis=1)
    bars[~complete] = np.nan
    return bars, complete


def panel_from_candles(
    candles: dict[str, pd.DataFrame], anchor_ms: int, n_bars: int, bar_minutes: int
) -> BarPanel:
    """Build a ``BarPanel`` from per-symbol candle frames (``data.candles`` layout)."""
    symbols = list(candles)
    shape = (len(symbols), n_bars)
    arrays = {name: np.full(shape, np.nan) for name in BAR_FIELDS}
    complete = np.zeros(shape, dtype=bool)
    filled = np.zeros(shape, dtype=np.int64)
    for i, symbol in enumerate(symbols):
        frame = candles[symbol]
        open_time = frame["open_time"].to_numpy(dtype=np.int64)
        bars, ok = aggregate_minutes(
            open_time, frame[list(BAR_FIELDS)].to_numpy(dtype=np.float64), anchor_ms, n_bars, bar_minutes
        )
        for j, name in enumerate(BAR_FIELDS):
            arrays[name][i] = bars[:, j]
        complete[i] = ok
        if "is_filled" in frame.columns:
            flags = frame["is_filled"].to_numpy(dtype=bool)
            filled[i] = _filled_per_bar(open_time, flags, anchor_ms, n_bars, bar_minutes)
    return BarPanel(
        symbols=symbols,
        anchor_ms=anchor_ms,
        bar_minutes=bar_minutes,
        bar_open_ms=bar_open_times(anchor_ms, n_bars, bar_minutes),
        complete=complete,
        filled=filled,
        **arrays,
    )


def _filled_per_bar(
    open_time: np.ndarray, is_filled: np.ndarray, anchor_ms: int, n_bars: int, bar_minutes: int
) -> np.ndarray:
    slot = (open_time - (anchor_ms - n_bars * bar_minutes * MINUTE_MS)) // MINUTE_MS
    keep = (slot >= 0) & (slot < n_bars * bar_minutes) & is_filled
    return np.bincount(slot[keep] // bar_minutes, minlength=n_bars).astype(np.int64)


def resample_anchored(candles: pd.DataFrame, bar_minutes: int, phase_minute: int = 0) -> pd.DataFrame:
    """Every anchored bar of a long history whose anchors are ``phase_minute`` mod ``bar_minutes``.

    Training uses this: the bars for anchor ``A`` are exactly the rows of this frame that open before
    ``A`` when ``A`` has that phase, so live and training inputs are the same numbers. Returns a frame
    indexed by bar open time (UTC) with ``open, high, low, close, volume`` and ``complete``.
    """
    import pandas as pd

    if candles.empty:
        raise ValueError("no candles to resample")
    bar_ms = bar_minutes * MINUTE_MS
    ts = candles["open_time"].to_numpy(dtype=np.int64)
    offset = (phase_minute % bar_minutes) * MINUTE_MS
    first = ts.min() - ((ts.min() - offset) % bar_ms)
    last_end = ts.max() + MINUTE_MS
    anchor = last_end + ((offset - last_end) % bar_ms)
    n_bars = int((anchor - first) // bar_ms)
    bars, complete = aggregate_minutes(
        ts, candles[list(BAR_FIELDS)].to_numpy(dtype=np.float64), anchor, n_bars, bar_minutes
    )
    index = pd.DatetimeIndex(
        pd.to_datetime(bar_open_times(anchor, n_bars, bar_minutes), unit="ms", utc=True), name="time"
    )
    frame = pd.DataFrame(bars, columns=list(BAR_FIELDS), index=index)
    frame["complete"] = complete
    return frame
