"""The interface every candle source implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd


@runtime_checkable
class CandleSource(Protocol):
    """A provider of closed 1-minute candles.

    ``name`` is stored as ``raw_market_data.exchange`` (``bybit``, ``simulator``, ``file``).
    ``fetch`` returns a candle frame (``data.candles``) with every closed candle whose open time lies
    in ``[start_ms, end_ms)``, ascending. Callers pass ``end_ms`` no later than the open time of the
    forming candle, so a source never returns it. A symbol the source does not know raises
    ``core.errors.UnknownSymbolError``; a source that stays unreachable after its retries raises
    ``core.errors.SourceUnavailableError``.
    """

    name: str

    def list_symbols(self) -> list[str]: ...

    def fetch(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame: ...
