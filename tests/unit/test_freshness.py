"""A minute's feature task waits on the stream's watermark, and fetches over REST only what is missing.

The watermark stores are tested on both implementations: the embedded run's condition variable and
the real Redis (pub/sub wake-ups, a Lua script that only moves marks forward).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pandas as pd
import pytest
import redis

from core.settings import Settings
from core.timegrid import MINUTE_MS
from data.db import get_engine
from data.freshness import ensure_closed_candles
from data.ingest import Ingestor
from data.store import CandleStore
from data.stream.watermark import MemoryWatermarks, RedisWatermarks, WatermarkStore
from data.validation import ValidationPolicy
from tests.conftest import REDIS_URL
from tests.support.sources import ScriptedSource

END = 1_763_942_400_000
SYMBOLS = [f"S{i:02d}/USDT:USDT" for i in range(20)]


class SlowSource(ScriptedSource):
    """Answers like an exchange 100 ms away; counts requests and how many ran at once."""

    def __init__(self, *args: object, latency_s: float = 0.1) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0

    def fetch(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(self.latency_s)  # the network round trip being simulated, not a wait for state
            return super().fetch(symbol, start_ms, end_ms)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
def watermarks(request: pytest.FixtureRequest) -> Iterator[WatermarkStore]:
    if request.param == "memory":
        yield MemoryWatermarks()
        return
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter("candles:scripted:*"):
        client.delete(key)
    yield RedisWatermarks(client)
    for key in client.scan_iter("candles:scripted:*"):
        client.delete(key)
    client.close()


@pytest.fixture
def store(sqlite_url: str) -> CandleStore:
    from data import db

    db.upgrade(sqlite_url)
    return CandleStore(get_engine(sqlite_url))


@pytest.fixture
def source() -> SlowSource:
    return SlowSource(SYMBOLS, END - 1440 * MINUTE_MS, END + MINUTE_MS)


def settings(wait_s: float = 2.0) -> Settings:
    return Settings(
        pipeline={"candle_wait_seconds": wait_s},
        data={"sync_initial_minutes": 60},
        ml_integration={"max_parallel": 10},
    )


def stored_until(store: CandleStore, source: SlowSource, end: int) -> None:
    policy = ValidationPolicy()
    Ingestor(store, source, policy, max_workers=10, clock=lambda: end).sync(SYMBOLS, initial_minutes=60)


def test_marks_only_move_forward_and_wake_a_waiter(watermarks: WatermarkStore) -> None:
    assert watermarks.advance("scripted", {"A": 5, "B": 7}) == {"A": 5, "B": 7}
    assert watermarks.advance("scripted", {"A": 4, "B": 8}) == {"B": 8}
    assert watermarks.get("scripted", ["A", "B", "C"]) == {"A": 5, "B": 8}
    timer = threading.Timer(0.2, watermarks.advance, args=("scripted", {"A": 9}))
    began = time.monotonic()
    timer.start()
    assert watermarks.wait("scripted", ["A", "B"], 8, timeout_s=10) == {"A", "B"}
    assert time.monotonic() - began < 5  # woken by the advance, not by the timeout
    assert watermarks.wait("scripted", ["A", "C"], 8, timeout_s=0.1) == {"A"}
    assert not watermarks.is_alive("scripted")
    watermarks.mark_alive("scripted", 5)
    assert watermarks.is_alive("scripted")


def test_with_the_stream_alive_nothing_goes_to_rest(
    store: CandleStore, source: SlowSource, watermarks: WatermarkStore
) -> None:
    stored_until(store, source, END + MINUTE_MS)
    watermarks.mark_alive("scripted", 10)
    watermarks.advance("scripted", dict.fromkeys(SYMBOLS, END))
    source.calls.clear()
    out = ensure_closed_candles(store, source, settings(), SYMBOLS, END + MINUTE_MS, watermarks=watermarks)
    assert out.failures == {}
    assert (out.from_stream, out.from_rest) == (20, 0)
    assert source.calls == []


def test_a_symbol_the_stream_lacks_is_fetched_over_rest_after_the_wait(
    store: CandleStore, source: SlowSource, watermarks: WatermarkStore
) -> None:
    stored_until(store, source, END)
    watermarks.mark_alive("scripted", 10)
    watermarks.advance("scripted", dict.fromkeys(SYMBOLS[1:], END))
    source.calls.clear()
    began = time.monotonic()
    out = ensure_closed_candles(
        store, source, settings(wait_s=0.3), SYMBOLS, END + MINUTE_MS, watermarks=watermarks
    )
    assert time.monotonic() - began >= 0.3
    assert out.failures == {}
    assert (out.from_stream, out.from_rest) == (19, 1)
    assert {c[0] for c in source.calls} == {SYMBOLS[0]}
    assert watermarks.get("scripted", SYMBOLS[:1]) == {SYMBOLS[0]: END}


def test_without_a_stream_all_symbols_are_fetched_concurrently(
    store: CandleStore, source: SlowSource
) -> None:
    stored_until(store, source, END - 5 * MINUTE_MS)
    began = time.monotonic()
    out = ensure_closed_candles(store, source, settings(), SYMBOLS, END + MINUTE_MS, watermarks=None)
    elapsed = time.monotonic() - began
    assert out.failures == {}
    assert out.from_rest == 20
    # 20 requests of 100 ms, 10 at a time: two rounds, not twenty.
    assert source.peak == 10
    assert elapsed < 1.0
    assert store.newest("scripted", SYMBOLS)[SYMBOLS[0]].open_time == END


def test_a_candle_the_exchange_has_not_published_is_a_reason_not_an_error(
    store: CandleStore, source: SlowSource
) -> None:
    stored_until(store, source, END)
    frame = source.data[SYMBOLS[0]]
    source.data[SYMBOLS[0]] = frame[frame["open_time"] < END].reset_index(drop=True)
    out = ensure_closed_candles(
        store, source, settings(wait_s=0.2), SYMBOLS[:2], END + MINUTE_MS, watermarks=None
    )
    assert out.failures == {SYMBOLS[0]: "no closed candle for 2025-11-24T00:00:00Z yet"}
