"""In-memory candle sources for tests: scripted histories with per-symbol faults."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import SourceUnavailableError, UnknownSymbolError
from core.timegrid import MINUTE_MS


def history(symbol_seed: int, start: int, end: int) -> pd.DataFrame:
    n = (end - start) // MINUTE_MS
    rng = np.random.default_rng(symbol_seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.concatenate([[50.0], close[:-1]])
    return pd.DataFrame(
        {
            "open_time": start + MINUTE_MS * np.arange(n, dtype=np.int64),
            "open": open_,
            "high": np.maximum(open_, close) * 1.0005,
            "low": np.minimum(open_, close) * 0.9995,
            "close": close,
            "volume": rng.uniform(0, 5, n),
            "turnover": np.nan,
        }
    )


class ScriptedSource:
    """A CandleSource over in-memory histories, with per-symbol faults for the failure paths."""

    name = "scripted"

    def __init__(self, symbols: list[str], start: int, end: int) -> None:
        self.data = {s: history(i, start, end) for i, s in enumerate(symbols)}
        self.unavailable: set[str] = set()
        self.calls: list[tuple[str, int, int]] = []

    def list_symbols(self) -> list[str]:
        return list(self.data)

    def fetch(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        self.calls.append((symbol, start_ms, end_ms))
        if symbol in self.unavailable:
            raise SourceUnavailableError(f"{symbol}: exchange timed out 5 times")
        if symbol not in self.data:
            raise UnknownSymbolError(symbol, self.name)
        frame = self.data[symbol]
        ts = frame["open_time"]
        return frame[(ts >= start_ms) & (ts < end_ms)].reset_index(drop=True)
