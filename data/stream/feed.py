"""What a candle feed delivers, and the interface every feed (exchange or simulator) implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class KlineUpdate:
    """One 1-minute kline as the exchange pushed it. ``confirmed``: the exchange says it is closed.

    ``symbol`` is the unified (ccxt) symbol, ``BTC/USDT:USDT``; ``received_ms`` is the local clock
    when the message arrived (for latency figures).
    """

    symbol: str
    open_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    turnover: float
    confirmed: bool
    received_ms: int


UpdateSink = Callable[[list[KlineUpdate]], None]


@runtime_checkable
class CandleFeed(Protocol):
    """A live source of kline updates for a universe of symbols.

    ``run`` connects, subscribes to every symbol and calls ``sink`` with the updates of each
    message, in arrival order, from the event loop's thread, until it is cancelled. It returns or
    raises (``core.errors.TemporaryError`` for a lost or silent connection) when the connection
    ends; the stream service then reconnects with backoff and repairs the missed range over REST.
    Updates may be duplicated, out of order or unconfirmed: the service sorts that out.
    """

    name: str

    async def run(self, symbols: Sequence[str], sink: UpdateSink) -> None: ...

    async def close(self) -> None: ...
