"""The market simulator as a live feed: each minute, as it closes, every symbol's confirmed candle.

It gives the embedded ``mlsignals run`` the same path as an exchange (feed -> stream service ->
store + watermark -> feature tasks) with no network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data.sources.base import CandleSource
from data.stream.feed import KlineUpdate, UpdateSink

# An exchange confirms a candle a moment after its minute ends; so does the simulator.
PUBLISH_DELAY_S = 0.05


class SimulatedFeed:
    def __init__(self, market: CandleSource, *, clock: Callable[[], int] = now_ms) -> None:
        self.market = market
        self.name = market.name
        self.clock = clock

    def minute_updates(self, symbols: Sequence[str], open_ms: int) -> list[KlineUpdate]:
        received = self.clock()
        out = []
        for symbol in symbols:
            frame = self.market.fetch(symbol, open_ms, open_ms + MINUTE_MS)
            times = frame["open_time"].to_numpy(dtype="int64")
            values = frame[["open", "high", "low", "close", "volume", "turnover"]].to_numpy(dtype="float64")
            for ts, (o, h, lo, c, v, t) in zip(times, values, strict=True):
                out.append(KlineUpdate(symbol, int(ts), o, h, lo, c, v, t, True, received))
        return out

    async def run(self, symbols: Sequence[str], sink: UpdateSink) -> None:
        while True:
            now = self.clock()
            closes = floor_minute(now) + MINUTE_MS
            await asyncio.sleep((closes - now) / 1000 + PUBLISH_DELAY_S)
            updates = await asyncio.to_thread(self.minute_updates, symbols, closes - MINUTE_MS)
            sink(updates)

    async def close(self) -> None:
        return None
