"""The candle stream end to end on this machine: one simulated clock, the Bybit REST and WebSocket
fakes, the real ccxt pro feed, the real exchange source, a real store and watermarks.

``stream_rig(...)`` starts all of it (the service in a ``StreamThread``), waits until the start-up
REST sync is stored and every topic is subscribed, and yields a ``StreamRig`` to drive it. The clock
is simulated: the REST server's forming candle, the WebSocket pushes' ``ts``, the source's "closed"
cut and the service's minute arithmetic all read it, so a test moves time minute by minute (or ten
minutes at once) in no time. A hole's grace runs on the real monotonic clock; the once-a-minute
laggard repair waits for the simulated clock to pass ``hole_grace_s`` into the minute (a test that
holds the clock on a minute boundary never triggers it). Every wait is on an event (a watermark's
pub/sub or condition variable, the WS server's state, a sink count), never a sleep.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import redis
from sqlalchemy import bindparam, text

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute
from data import db
from data.sources.exchange import ExchangeCandleSource
from data.store import CandleStore
from data.stream.bybit import BybitKlineFeed
from data.stream.feed import CandleFeed, KlineUpdate, UpdateSink
from data.stream.service import CandleStreamService, StreamThread
from data.stream.watermark import RedisWatermarks, WatermarkStore
from tests.fakes.bybit_ws import FakeBybitWsServer, running_ws_server
from tests.fakes.exchange_server import (
    KLINE_PATH,
    FakeExchangeServer,
    formula_candle,
    running_exchange_server,
)

EXCHANGE = "bybit"
WAIT_S = 30.0
# Stream settings that keep a test short: a flush every 50 ms, a hole waits 0.5 s (real time) for
# its candle before the REST repair, a lost connection is reconnected within 0.2 s.
FAST_STREAM: dict[str, float] = {
    "flush_interval_s": 0.05,
    "hole_grace_s": 0.5,
    "reconnect_base_delay_s": 0.05,
    "reconnect_max_delay_s": 0.2,
    "silence_timeout_s": 15.0,
}
# The gateway's own limiter would pace a 500-symbol repair at 80 requests/s; a local server needs none.
UNLIMITED_REST: dict[str, Any] = {
    "requests_per_second": 100_000.0,
    "request_burst": 10_000,
    "retry_base_delay_s": 0.0,
    "timeout_ms": 10_000,
}
CANDLE_VALUES = ("open", "high", "low", "close", "volume")


class SimClock:
    """Milliseconds since the epoch that move only when told to (and only forward). Thread-safe."""

    def __init__(self, ms: int) -> None:
        self._ms = ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        return self._ms

    def set(self, ms: int) -> int:
        with self._lock:
            if ms < self._ms:
                raise ValueError(f"the clock only moves forward ({ms} < {self._ms})")
            self._ms = ms
            return ms

    def advance(self, ms: int) -> int:
        with self._lock:
            self._ms += ms
            return self._ms

    @property
    def minute(self) -> int:
        """The open time of the forming minute."""
        return floor_minute(self._ms)


def symbol_ids(n: int, prefix: str = "E2E") -> list[str]:
    """``n`` Bybit linear ids no other test uses (their watermarks share Redis' ``bybit`` hash)."""
    return [f"{prefix}{i:03d}USDT" for i in range(n)]


def unified(symbol_id: str) -> str:
    return f"{symbol_id.removesuffix('USDT')}/USDT:USDT"


def real_values(symbol_id: str, open_ms: int) -> tuple[float, ...]:
    """What the exchange has for a minute (REST and WS alike): open, high, low, close, volume."""
    row = formula_candle(symbol_id, open_ms)
    return tuple(float(x) for x in row[1:6])


class CountingFeed:
    """A ``CandleFeed`` around another that counts the updates it hands on; ``wait_for`` blocks a
    plain thread until ``n`` updates went through (an event, no polling)."""

    def __init__(self, inner: CandleFeed) -> None:
        self.inner = inner
        self.name = inner.name
        self.updates = 0
        self.confirmed = 0
        self._changed = threading.Condition()

    async def run(self, symbols: Sequence[str], sink: UpdateSink) -> None:
        def counting(updates: list[KlineUpdate]) -> None:
            sink(updates)
            with self._changed:
                self.updates += len(updates)
                self.confirmed += sum(u.confirmed for u in updates)
                self._changed.notify_all()

        await self.inner.run(symbols, counting)

    async def close(self) -> None:
        await self.inner.close()

    def wait_for(self, n: int, timeout: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.updates >= n, timeout)


@contextmanager
def redis_watermarks(url: str, symbols: Sequence[str]) -> Iterator[RedisWatermarks]:
    """``RedisWatermarks`` on ``url`` with these symbols' marks cleared before and after (only their
    fields: other tests may hold marks of other symbols in the same ``bybit`` hash)."""
    client = redis.Redis.from_url(url)
    key = f"candles:{EXCHANGE}:wm"
    client.hdel(key, *symbols)
    try:
        yield RedisWatermarks(client)
    finally:
        client.hdel(key, *symbols)
        client.close()


@dataclass
class StreamRig:
    clock: SimClock
    rest: FakeExchangeServer
    ws: FakeBybitWsServer
    settings: Settings
    store: CandleStore
    source: ExchangeCandleSource
    feed: CandleFeed
    watermarks: WatermarkStore
    service: CandleStreamService
    thread: StreamThread
    ids: list[str]
    history_start_ms: int  # the oldest minute the start-up sync stored

    @property
    def symbols(self) -> list[str]:
        return [unified(i) for i in self.ids]

    def marks(self, symbols: Sequence[str] | None = None) -> dict[str, int]:
        return self.watermarks.get(EXCHANGE, list(self.symbols if symbols is None else symbols))

    def wait_marks(
        self, open_ms: int, symbols: Sequence[str] | None = None, timeout: float = WAIT_S
    ) -> set[str]:
        """Block until the symbols' watermarks reach ``open_ms``; returns those that did."""
        self.check_alive()
        return self.watermarks.wait(
            EXCHANGE, list(self.symbols if symbols is None else symbols), open_ms, timeout
        )

    def push(
        self,
        open_ms: int,
        ids: Sequence[str] | None = None,
        *,
        confirm: bool = True,
        rng: random.Random | None = None,
    ) -> int:
        """Push each symbol's candle of ``open_ms`` once (shuffled by ``rng``); returns pushes sent."""
        chosen = list(self.ids if ids is None else ids)
        if rng is not None:
            rng.shuffle(chosen)
        return self.ws.push_minute(open_ms, chosen, confirm=confirm)

    def close_minute(self, open_ms: int, ids: Sequence[str] | None = None) -> int:
        """The minute ``open_ms`` closes: the clock moves to its end and its final candles are pushed."""
        self.clock.set(open_ms + MINUTE_MS)
        return self.push(open_ms, ids)

    def reconnected(self, connections: int, timeout: float = WAIT_S) -> None:
        """Wait for the ``connections``-th connection to be the only one, with every topic subscribed."""
        assert self.ws.wait_until(lambda s: s.connections >= connections and s.live == 1, timeout)
        assert self.ws.wait_subscribed(len(self.ids), timeout)
        self.check_alive()

    def kline_requests(self) -> list[str]:
        """Bybit ids of the REST kline requests since ``rest.clear_requests()``, in order."""
        return [r.params["symbol"] for r in self.rest.requests(KLINE_PATH)]

    def check_alive(self) -> None:
        if self.thread.error is not None:
            raise AssertionError(f"the stream thread died: {self.thread.error!r}") from self.thread.error

    # -- what the store holds --------------------------------------------------------------------

    def stored(self, start_ms: int, end_ms: int, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        """Per (symbol, open_time) in ``[start_ms, end_ms)``: how many rows, filled or not, values."""
        stmt = text(
            "SELECT symbol, open_time, count(*) AS n, bool_or(is_filled) AS is_filled, "
            "min(open) AS open, min(high) AS high, min(low) AS low, min(close) AS close, "
            "min(volume) AS volume FROM raw_market_data "
            "WHERE exchange = :exchange AND interval = '1m' AND symbol IN :symbols "
            "AND open_time >= :start AND open_time < :end GROUP BY symbol, open_time "
            "ORDER BY symbol, open_time"
        ).bindparams(bindparam("symbols", expanding=True))
        params = {
            "exchange": EXCHANGE,
            "symbols": list(self.symbols if symbols is None else symbols),
            "start": start_ms,
            "end": end_ms,
        }
        with self.store.engine.connect() as conn:
            return pd.DataFrame(conn.execute(stmt, params).mappings().all())

    def assert_exactly_once(
        self,
        start_ms: int,
        end_ms: int,
        *,
        filled: Callable[[str, int], bool] | None = None,
        symbols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Every minute of ``[start_ms, end_ms)`` stored exactly once per symbol; real and equal to the
        exchange's candle except where ``filled(symbol, minute)`` (then a flagged filler, flat at the
        previous close with no volume); with no ``filled``, none is. Returns the rows."""
        chosen = list(self.symbols if symbols is None else symbols)
        got = self.stored(start_ms, end_ms, chosen)
        minutes = list(range(start_ms, end_ms, MINUTE_MS))
        assert len(got) == len(chosen) * len(minutes), (
            f"{len(got)} (symbol, minute) rows stored, expected {len(chosen)} x {len(minutes)}"
        )
        assert (got["n"] == 1).all(), got[got["n"] != 1]
        by_symbol = {s: frame for s, frame in got.groupby("symbol", sort=False)}
        ids = {unified(i): i for i in self.ids}
        for symbol in chosen:
            rows = by_symbol[symbol]
            assert rows["open_time"].tolist() == minutes, symbol
            prev_close: float | None = None
            columns = [rows[c].tolist() for c in ("open_time", "is_filled", *CANDLE_VALUES)]
            for open_ms, is_filled, *raw in zip(*columns, strict=True):
                values = tuple(float(v) for v in raw)
                if filled is not None and filled(symbol, open_ms):
                    assert is_filled, (symbol, open_ms)
                    if prev_close is not None:
                        assert values == (prev_close,) * 4 + (0.0,), (symbol, open_ms, values)
                else:
                    assert not is_filled, (symbol, open_ms)
                    assert values == real_values(ids[symbol], open_ms), (symbol, open_ms)
                prev_close = values[3]
        return got


def stream_settings(
    rest: FakeExchangeServer,
    ws: FakeBybitWsServer,
    symbols: Sequence[str],
    *,
    sync_initial_minutes: int,
    stream: Mapping[str, float] | None = None,
) -> Settings:
    return Settings(
        exchange={"api_urls": {"all": rest.base_url}, "ws_urls": {"public.linear": ws.url}, **UNLIMITED_REST},
        stream={**FAST_STREAM, **(stream or {})},
        data={"symbols": list(symbols), "sync_initial_minutes": sync_initial_minutes, "source": "exchange"},
    )


@contextmanager
def stream_rig(
    db_url: str,
    ids: Sequence[str],
    *,
    start_ms: int,
    watermarks: WatermarkStore,
    sync_initial_minutes: int = 5,
    stream: Mapping[str, float] | None = None,
    prepare_rest: Callable[[FakeExchangeServer], None] | None = None,
    wrap_feed: Callable[[BybitKlineFeed], CandleFeed] | None = None,
) -> Iterator[StreamRig]:
    """Servers, feed, source, store and service on one ``SimClock(start_ms)``, streaming ``ids``.

    ``db_url`` must be migrated. Yields once the start-up sync stored every symbol's
    ``sync_initial_minutes`` closed minutes (the watermarks say so) and every topic is subscribed.
    """
    clock = SimClock(start_ms)
    symbols = [unified(i) for i in ids]
    with (
        running_exchange_server(symbols=list(ids), clock=clock) as rest,
        running_ws_server(clock=clock, max_args=10) as ws,
    ):
        if prepare_rest is not None:
            prepare_rest(rest)
        settings = stream_settings(
            rest, ws, symbols, sync_initial_minutes=sync_initial_minutes, stream=stream
        )
        store = CandleStore(db.get_engine(db_url))
        source = ExchangeCandleSource(settings.exchange, clock=clock)
        bybit = BybitKlineFeed.from_settings(settings.exchange, settings.stream, clock=clock)
        feed: CandleFeed = bybit if wrap_feed is None else wrap_feed(bybit)
        service = CandleStreamService(
            feed=feed,
            store=store,
            source=source,
            watermarks=watermarks,
            settings=settings,
            symbols=symbols,
            clock=clock,
        )
        thread = StreamThread(service)
        rig = StreamRig(
            clock=clock,
            rest=rest,
            ws=ws,
            settings=settings,
            store=store,
            source=source,
            feed=feed,
            watermarks=watermarks,
            service=service,
            thread=thread,
            ids=list(ids),
            history_start_ms=clock.minute - sync_initial_minutes * MINUTE_MS,
        )
        thread.start()
        try:
            # The service syncs over REST first, then subscribes: both done means ready to stream.
            assert ws.wait_subscribed(len(ids), WAIT_S), "the feed did not subscribe every topic"
            assert rig.wait_marks(clock.minute - MINUTE_MS) == set(symbols), "start-up sync incomplete"
            yield rig
        finally:
            thread.stop(timeout=WAIT_S)
            source.close()
        assert not thread._thread.is_alive(), "the stream thread did not stop"
        assert thread.error is None, repr(thread.error)
        assert rest.errors == []
        assert ws.errors == []
