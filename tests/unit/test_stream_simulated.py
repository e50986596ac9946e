"""The simulator as a live feed: the embedded run's candles take the same path as an exchange's."""

from __future__ import annotations

import time

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.stream.factory import make_feed
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


def test_the_stream_stores_each_minute_as_it_closes(sqlite_url: str) -> None:
    market = SimulatedMarket(seed=3, universe_size=5)
    symbols = market.list_symbols()
    # The feed's clock runs 300 ms before a minute boundary, so the test waits 0.3 s, not a minute.
    boundary = floor_minute(now_ms()) - 5 * MINUTE_MS
    started = time.monotonic()

    def clock() -> int:
        return boundary - 300 + int((time.monotonic() - started) * 1000)

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
        assert marks.wait("simulator", symbols, boundary - MINUTE_MS, 10) == set(symbols)
        assert marks.is_alive("simulator")
    newest = store.newest("simulator", symbols)
    assert {s: c.open_time for s, c in newest.items()} == dict.fromkeys(symbols, boundary - MINUTE_MS)
    assert service.stats.written == len(symbols)  # the rest came from the start-up repair
    assert service.stats.minute_latency_s[boundary - MINUTE_MS] < 5
