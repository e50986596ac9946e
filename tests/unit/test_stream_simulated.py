"""The simulator as a live feed: the embedded run's candles take the same path as an exchange's."""

from __future__ import annotations

import asyncio
import time

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.stream.factory import make_feed
from data.stream.feed import KlineUpdate
from data.stream.service import CandleStreamService, StreamThread
from data.stream.simulated import SimulatedFeed
from data.stream.watermark import MemoryWatermarks


def test_a_minute_update_is_the_simulators_closed_candle() -> None:
    market = SimulatedMarket(seed=3, universe_size=5)
    symbols = market.list_symbols()[:3]
    minute = floor_minute(now_ms()) - 10 * MINUTE_MS
    updates = SimulatedFeed(market).minute_updates(symbols, minute)
    assert [u.symbol for u in updates] == symbols
    for u in updates:
        row = market.fetch(u.symbol, minute, minute + MINUTE_MS).iloc[0]
        assert (u.open_ms, u.open, u.close, u.volume, u.confirmed) == (
            minute,
            row.open,
            row.close,
            row.volume,
            True,
        )


def test_the_embedded_feed_is_the_simulator() -> None:
    market = SimulatedMarket(seed=3, universe_size=5)
    assert isinstance(make_feed(Settings(), market), SimulatedFeed)


class LateStartClock:
    """A clock that starts ``lead_ms`` before a minute boundary at its first reading, then runs in
    real time: the feed waits fractions of a second, not a minute, and no start-up delay races it."""

    def __init__(self, boundary: int, lead_ms: int = 300) -> None:
        self.origin = boundary - lead_ms
        self.started: float | None = None

    def __call__(self) -> int:
        if self.started is None:
            self.started = time.monotonic()
        return self.origin + int((time.monotonic() - self.started) * 1000)


def test_the_feed_confirms_each_minute_as_it_closes() -> None:
    market = SimulatedMarket(seed=3, universe_size=5)
    symbols = market.list_symbols()
    boundary = floor_minute(now_ms()) - 5 * MINUTE_MS
    got: list[KlineUpdate] = []

    async def first_minute() -> None:
        arrived = asyncio.Event()

        def sink(updates: list[KlineUpdate]) -> None:
            got.extend(updates)
            arrived.set()

        feed = SimulatedFeed(market, clock=LateStartClock(boundary))
        run = asyncio.create_task(feed.run(symbols, sink))
        await arrived.wait()
        run.cancel()

    asyncio.run(asyncio.wait_for(first_minute(), timeout=10))
    expected = [(s, boundary - MINUTE_MS, True) for s in symbols]
    assert [(u.symbol, u.open_ms, u.confirmed) for u in got] == expected


def test_the_stream_service_on_the_simulated_feed_moves_the_watermark(sqlite_url: str) -> None:
    market = SimulatedMarket(seed=3, universe_size=5)
    symbols = market.list_symbols()
    boundary = floor_minute(now_ms()) - 5 * MINUTE_MS
    clock = LateStartClock(boundary)
    db.upgrade(sqlite_url)
    store = CandleStore(db.get_engine(sqlite_url))
    marks = MemoryWatermarks()
    service = CandleStreamService(
        feed=SimulatedFeed(market, clock=clock),
        store=store,
        source=market,
        watermarks=marks,
        settings=Settings(data={"sync_initial_minutes": 30}, stream={"flush_interval_s": 0.05}),
        symbols=symbols,
        clock=clock,
    )
    with StreamThread(service):
        # Stored by the stream or, on a slow start, by the start-up repair: either way exactly once.
        assert marks.wait("simulator", symbols, boundary - MINUTE_MS, 10) == set(symbols)
        assert marks.is_alive("simulator")
    newest = store.newest("simulator", symbols)
    assert {s: c.open_time for s, c in newest.items()} == dict.fromkeys(symbols, boundary - MINUTE_MS)
    for symbol in symbols:
        stored = store.read_candles("simulator", symbol, boundary - 30 * MINUTE_MS, boundary)
        assert list(stored["open_time"]) == list(range(boundary - 30 * MINUTE_MS, boundary, MINUTE_MS))
