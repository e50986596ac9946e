"""The stream service's rules, on SQLite and the real PostgreSQL, with a scripted feed and clock.

Each scenario counts the store: every minute exactly once, real where the exchange had it, filled
(flagged, recorded as a gap) only where it had nothing even over REST.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pandas as pd
import pytest

from core.errors import SourceUnavailableError
from core.settings import Settings
from core.timegrid import MINUTE_MS
from data.db import get_engine
from data.store import CandleStore
from data.stream.feed import KlineUpdate, UpdateSink
from data.stream.service import CandleStreamService, StreamThread
from data.stream.watermark import MemoryWatermarks
from tests.support.sources import ScriptedSource

END = 1_763_942_400_000  # 2025-11-24T00:00Z: the stream starts here
SYMBOLS = ["AAA/USDT:USDT", "BBB/USDT:USDT", "CCC/USDT:USDT"]


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.mono = 0.0

    def __call__(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.mono


class ScriptedFeed:
    """A feed the test drives: ``push`` from any thread, ``drop`` ends the connection."""

    name = "scripted"

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue[list[KlineUpdate] | None] | None = None
        self.connected = threading.Event()
        self.delivered = threading.Event()
        self.connections = 0

    async def run(self, _symbols: Sequence[str], sink: UpdateSink) -> None:
        # KlineFeed.run's signature; the script plays whatever it was given, for any symbols.
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue()
        self.connections += 1
        self.connected.set()
        while True:
            item = await self.queue.get()
            if item is None:
                self.connected.clear()
                raise SourceUnavailableError("connection dropped")
            sink(item)
            self.delivered.set()

    def push(self, updates: list[KlineUpdate]) -> None:
        assert self.loop is not None
        assert self.queue is not None
        self.loop.call_soon_threadsafe(self.queue.put_nowait, updates)

    def drop(self) -> None:
        assert self.loop is not None
        assert self.queue is not None
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    async def close(self) -> None:
        return None


def update(source: ScriptedSource, symbol: str, open_ms: int, *, confirmed: bool = True) -> KlineUpdate:
    frame = source.data[symbol]
    row = frame[frame["open_time"] == open_ms].iloc[0]
    return KlineUpdate(
        symbol, open_ms, row.open, row.high, row.low, row.close, row.volume, 0.0, confirmed, open_ms
    )


def minute(source: ScriptedSource, open_ms: int, symbols: Sequence[str] = SYMBOLS) -> list[KlineUpdate]:
    return [update(source, s, open_ms) for s in symbols]


@pytest.fixture
def store(migrated_url: str) -> CandleStore:
    return CandleStore(get_engine(migrated_url))


@pytest.fixture
def source() -> ScriptedSource:
    # The exchange's REST history runs 6 hours past the stream's start.
    return ScriptedSource(SYMBOLS, END - 2 * 1440 * MINUTE_MS, END + 360 * MINUTE_MS)


@pytest.fixture
def clock() -> Clock:
    return Clock(END)


def service(
    store: CandleStore,
    source: ScriptedSource,
    clock: Clock,
    feed: ScriptedFeed | None = None,
    **stream: float,
) -> tuple[CandleStreamService, MemoryWatermarks]:
    settings = Settings(
        data={"sync_initial_minutes": 600},
        stream={"hole_grace_s": 2.0, "flush_interval_s": 0.05, "reconnect_base_delay_s": 0.0, **stream},
    )
    marks = MemoryWatermarks()
    svc = CandleStreamService(
        feed=feed or ScriptedFeed(),
        store=store,
        source=source,
        watermarks=marks,
        settings=settings,
        symbols=SYMBOLS,
        clock=clock,
        monotonic=clock.monotonic,
    )
    return svc, marks


def stored(store: CandleStore, symbol: str, start: int, end: int) -> pd.DataFrame:
    return store.read_candles("scripted", symbol, start, end)


def assert_exactly_once(store: CandleStore, source: ScriptedSource, start: int, end: int) -> None:
    """Every minute of [start, end) stored once per symbol, equal to the exchange's candle."""
    for symbol in SYMBOLS:
        got = stored(store, symbol, start, end)
        assert list(got["open_time"]) == list(range(start, end, MINUTE_MS)), symbol
        assert not got["is_filled"].any()
        truth = source.data[symbol].set_index("open_time").loc[got["open_time"], "close"].to_numpy()
        assert (got["close"].to_numpy() == truth).all()


def test_confirmed_candles_are_written_once_and_move_the_watermark(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    svc, marks = service(store, source, clock)
    svc.repair(SYMBOLS, None)
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END - MINUTE_MS)
    clock.ms = END + MINUTE_MS + 200
    forming = [update(source, s, END + MINUTE_MS, confirmed=False) for s in SYMBOLS]
    # The forming candle is ignored; the closed one is written once, whatever the repeats.
    svc.flush([*forming, *minute(source, END), *minute(source, END)])
    svc.flush(minute(source, END))
    assert_exactly_once(store, source, END - 600 * MINUTE_MS, END + MINUTE_MS)
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END)
    assert (svc.stats.unconfirmed, svc.stats.duplicates, svc.stats.written) == (3, 6, 3)
    assert marks.minutes[-1] == ("scripted", END, 3)
    assert marks.lagging[("scripted", END)] == ()
    assert svc.stats.minute_latency_s[END] == pytest.approx(0.2)


def test_out_of_order_candles_wait_for_the_one_before_them(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    svc, marks = service(store, source, clock)
    svc.repair(SYMBOLS, None)
    clock.ms = END + 3 * MINUTE_MS
    svc.flush(minute(source, END + 2 * MINUTE_MS) + minute(source, END + MINUTE_MS))
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END - MINUTE_MS)  # END is missing
    svc.flush(minute(source, END))
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END + 2 * MINUTE_MS)
    assert_exactly_once(store, source, END - 600 * MINUTE_MS, END + 3 * MINUTE_MS)
    assert svc.stats.repairs == 1  # only the start-up repair: nothing went to REST


def test_a_hole_is_repaired_over_rest_after_the_grace(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    svc, marks = service(store, source, clock)
    svc.repair(SYMBOLS, None)
    clock.ms = END + 6 * MINUTE_MS
    # The stream lost minutes END .. END+4 (a dropped connection); END+5 arrives.
    svc.flush(minute(source, END + 5 * MINUTE_MS))
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END - MINUTE_MS)
    clock.mono += 2.5
    svc.flush()
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END + 5 * MINUTE_MS)
    assert_exactly_once(store, source, END - 600 * MINUTE_MS, END + 6 * MINUTE_MS)
    assert store.gaps("scripted") == []


def test_an_exchange_wide_outage_is_filled_flagged_recorded_once_and_ingestion_resumes(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    svc, marks = service(store, source, clock)
    svc.repair(SYMBOLS, None)
    # The exchange printed nothing from END for 10 minutes, on the stream and over REST alike.
    for symbol in SYMBOLS:
        frame = source.data[symbol]
        ts = frame["open_time"]
        source.data[symbol] = frame[(ts < END) | (ts >= END + 10 * MINUTE_MS)].reset_index(drop=True)
    clock.ms = END + 11 * MINUTE_MS + 300
    svc.flush(minute(source, END + 10 * MINUTE_MS))
    clock.mono += 2.5
    svc.flush()
    # The first candle after the outage is stored and moves the watermark at once.
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END + 10 * MINUTE_MS)
    for symbol in SYMBOLS:
        got = stored(store, symbol, END, END + 11 * MINUTE_MS)
        assert list(got["open_time"]) == list(range(END, END + 11 * MINUTE_MS, MINUTE_MS))
        assert got["is_filled"].tolist() == [True] * 10 + [False]
    gaps = store.gaps("scripted")
    assert [(g.symbol, g.start_ms, g.minutes, g.outage) for g in gaps] == [
        (s, END, 10, True) for s in SYMBOLS
    ]
    assert store.quarantined("scripted") == {}
    # The next minutes stream on as usual.
    clock.ms += MINUTE_MS
    svc.flush(minute(source, END + 11 * MINUTE_MS))
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END + 11 * MINUTE_MS)


def test_a_symbol_the_stream_stops_sending_is_kept_current_over_rest(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    svc, marks = service(store, source, clock)
    svc.repair(SYMBOLS, None)
    for k in range(3):
        clock.ms = END + (k + 1) * MINUTE_MS + 500
        svc.flush(minute(source, END + k * MINUTE_MS, SYMBOLS[:2]))
    # Minute announcements do not wait for the stopped symbol.
    assert marks.minutes[-1][1:] == (END + 2 * MINUTE_MS, 2)
    assert marks.lagging[("scripted", END + 2 * MINUTE_MS)] == (SYMBOLS[2],)
    clock.ms = END + 3 * MINUTE_MS + 2500  # past the grace of the next minute
    svc.flush()
    assert marks.get("scripted", SYMBOLS)[SYMBOLS[2]] == END + 2 * MINUTE_MS
    assert_exactly_once(store, source, END - 600 * MINUTE_MS, END + 3 * MINUTE_MS)


def test_a_rejected_candle_is_quarantined_not_stored_and_not_lost_for_the_others(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    svc, marks = service(store, source, clock)
    svc.repair(SYMBOLS, None)
    clock.ms = END + MINUTE_MS
    bad = update(source, SYMBOLS[0], END)
    bad = KlineUpdate(bad.symbol, bad.open_ms, bad.open, bad.high, bad.low, float("nan"), 1.0, 0.0, True, 0)
    svc.flush([bad, *minute(source, END, SYMBOLS[1:])])
    assert store.quarantined("scripted")[SYMBOLS[0]][0] == "non_finite"
    assert marks.get("scripted", SYMBOLS)[SYMBOLS[0]] == END - MINUTE_MS
    assert marks.get("scripted", SYMBOLS)[SYMBOLS[1]] == END
    assert stored(store, SYMBOLS[0], END, END + MINUTE_MS).empty


def test_a_database_failure_keeps_the_candles_for_the_next_flush(
    store: CandleStore, source: ScriptedSource, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc, marks = service(store, source, clock)
    svc.repair(SYMBOLS, None)
    clock.ms = END + MINUTE_MS
    original = store.write

    def broken(*_args: object, **_kwargs: object) -> int:
        raise ConnectionError("database restarting")

    monkeypatch.setattr(store, "write", broken)
    with pytest.raises(ConnectionError):
        svc.flush(minute(source, END))
    monkeypatch.setattr(store, "write", original)
    svc.flush()
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END)
    assert_exactly_once(store, source, END - 600 * MINUTE_MS, END + MINUTE_MS)


def test_the_service_reconnects_and_repairs_what_it_missed(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    feed = ScriptedFeed()
    svc, marks = service(store, source, clock, feed)
    with StreamThread(svc):
        assert feed.connected.wait(10)
        clock.ms = END + MINUTE_MS
        feed.push(minute(source, END))
        assert marks.wait("scripted", SYMBOLS, END, 10) == set(SYMBOLS)
        # Disconnected for 5 minutes: the reconnect brings every symbol up to date over REST first.
        clock.ms = END + 6 * MINUTE_MS  # before the drop: the reconnect may come at once
        feed.drop()
        assert marks.wait("scripted", SYMBOLS, END + 5 * MINUTE_MS, 10) == set(SYMBOLS)
        assert feed.connected.wait(10)
        feed.push(minute(source, END + 6 * MINUTE_MS))
        clock.ms = END + 7 * MINUTE_MS
        assert marks.wait("scripted", SYMBOLS, END + 6 * MINUTE_MS, 10) == set(SYMBOLS)
    assert feed.connections == 2
    assert svc.stats.reconnects == 1
    assert_exactly_once(store, source, END - 600 * MINUTE_MS, END + 7 * MINUTE_MS)


def test_backoff_grows_with_jitter_and_is_capped(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    svc, _ = service(store, source, clock, reconnect_base_delay_s=0.5, reconnect_max_delay_s=8.0)
    delays = [[svc.backoff_s(a) for _ in range(200)] for a in (1, 3, 10)]
    assert all(0 <= d <= 8.0 for row in delays for d in row)
    assert len({round(d, 6) for d in delays[1]}) > 100  # jittered, not one fixed delay
    assert max(delays[0]) <= 1.0 < max(delays[1])


def test_an_exchange_down_at_start_up_does_not_stop_the_stream(
    store: CandleStore, source: ScriptedSource, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = ScriptedFeed()
    svc, marks = service(store, source, clock, feed)

    def down() -> list[str]:
        raise SourceUnavailableError("exchange under maintenance")

    monkeypatch.setattr(source, "list_symbols", down)
    with StreamThread(svc) as thread:
        assert feed.connected.wait(10)  # streaming although the REST catch-up failed
        monkeypatch.undo()
        # Back up: the next minute's laggard repair fills history, the stream goes on.
        clock.ms = END + MINUTE_MS + 2500
        feed.push(minute(source, END))
        assert marks.wait("scripted", SYMBOLS, END, 10) == set(SYMBOLS)
    assert thread.error is None
    assert svc.stats.flush_errors >= 1
    # The late repair took the initial 600 minutes back from its own minute, END + 1.
    assert_exactly_once(store, source, END - 599 * MINUTE_MS, END + MINUTE_MS)


def test_a_clean_stop_writes_what_arrived_since_the_last_flush(
    store: CandleStore, source: ScriptedSource, clock: Clock
) -> None:
    feed = ScriptedFeed()
    svc, marks = service(store, source, clock, feed, flush_interval_s=1.0)
    thread = StreamThread(svc).start()
    assert feed.connected.wait(10)
    clock.ms = END + MINUTE_MS
    feed.push(minute(source, END))
    assert feed.delivered.wait(10)
    thread.stop()  # most likely before the next flush, a second away
    assert thread.error is None
    assert marks.get("scripted", SYMBOLS) == dict.fromkeys(SYMBOLS, END)
    assert_exactly_once(store, source, END - 600 * MINUTE_MS, END + MINUTE_MS)
