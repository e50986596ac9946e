"""The in-memory candle frame every source returns and every writer accepts.

A candle frame is a ``pandas.DataFrame`` with a RangeIndex and exactly ``CANDLE_COLUMNS``:
``open_time`` (int64, ms since the epoch, UTC, on the minute grid) and float64 OHLCV plus
``turnover`` (quote volume; NaN when the source does not report it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
VALUE_COLUMNS: tuple[str, ...] = (*PRICE_COLUMNS, "volume", "turnover")
CANDLE_COLUMNS: tuple[str, ...] = ("open_time", *VALUE_COLUMNS)


def empty_candles() -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame({"open_time": np.empty(0, dtype=np.int64)})
    for col in VALUE_COLUMNS:
        frame[col] = np.empty(0, dtype=np.float64)
    return frame


def candles_from_rows(rows: Sequence[Sequence[float | int | None]]) -> pd.DataFrame:
    """Build a frame from ``[ts, o, h, l, c, v]`` or ``[ts, o, h, l, c, v, turnover]`` rows (ccxt order)."""
    import pandas as pd

    if not rows:
        return empty_candles()
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] not in (6, 7):
        raise ValueError(f"candle rows need 6 or 7 columns, got shape {arr.shape}")
    if arr.shape[1] == 6:
        arr = np.column_stack([arr, np.full(len(arr), np.nan)])
    frame = pd.DataFrame(arr[:, 1:], columns=list(VALUE_COLUMNS))
    frame.insert(0, "open_time", arr[:, 0].astype(np.int64))
    return frame


def coerce_candles(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with exactly the candle columns and dtypes (``turnover`` may be absent)."""
    import pandas as pd

    missing = [c for c in CANDLE_COLUMNS if c not in frame.columns and c != "turnover"]
    if missing:
        raise ValueError(f"candle frame lacks columns {missing}")
    out = pd.DataFrame({"open_time": frame["open_time"].to_numpy(dtype=np.int64)})
    for col in VALUE_COLUMNS:
        values = frame[col] if col in frame.columns else pd.Series(np.nan, index=frame.index)
        out[col] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    return out
