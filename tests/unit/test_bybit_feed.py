"""The Bybit kline feed: the real ccxt pro client against local Bybit REST and WebSocket servers.

Every wait is on an event (the sink's condition, the server's condition variable, a task's end),
with a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

from core.errors import ConfigError, SourceUnavailableError
from core.settings import ExchangeSettings, StreamSettings
from core.timegrid import MINUTE_MS
from data.stream.bybit import BybitKlineFeed, resolve_ws_urls
from data.stream.feed import CandleFeed, KlineUpdate
from tests.fakes.bybit_ws import FakeBybitWsServer, kline_topic, running_ws_server
from tests.fakes.exchange_server import (
    INSTRUMENTS_PATH,
    FakeExchangeServer,
    formula_candle,
    running_exchange_server,
)

T0 = 1_700_000_040_000  # a minute boundary
RECEIVED_MS = 1_700_000_100_123
WAIT_S = 10.0
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def unified(symbol_id: str) -> str:
    return f"{symbol_id.removesuffix('USDT')}/USDT:USDT"


def many_ids(n: int) -> list[str]:
    return [f"C{i:03d}USDT" for i in range(n)]


class Collector:
    """The feed's sink; ``wait`` resolves when the updates so far satisfy a predicate."""

    def __init__(self) -> None:
        self.updates: list[KlineUpdate] = []
        self.calls = 0
        self._waiters: list[tuple[Callable[[list[KlineUpdate]], bool], asyncio.Event]] = []

    def __call__(self, updates: list[KlineUpdate]) -> None:
        self.calls += 1
        self.updates.extend(updates)
        for predicate, event in self._waiters:
            if predicate(self.updates):
                event.set()

    async def wait(self, predicate: Callable[[list[KlineUpdate]], bool], timeout: float = WAIT_S) -> None:
        event = asyncio.Event()
        if predicate(self.updates):
            return
        self._waiters.append((predicate, event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        finally:
            self._waiters.remove((predicate, event))

    async def wait_count(self, n: int, timeout: float = WAIT_S) -> None:
        await self.wait(lambda ups: len(ups) >= n, timeout)

    def of(self, symbol: str) -> list[KlineUpdate]:
        return [u for u in self.updates if u.symbol == symbol]


@contextmanager
def servers(
    symbols: Sequence[str] = SYMBOLS, **ws_options: Any
) -> Iterator[tuple[FakeExchangeServer, FakeBybitWsServer]]:
    with running_exchange_server(symbols=symbols) as rest, running_ws_server(**ws_options) as ws:
        yield rest, ws
        assert rest.errors == []
        assert ws.errors == []


def make_feed(
    rest: FakeExchangeServer,
    ws: FakeBybitWsServer,
    *,
    silence_timeout_s: float = 30.0,
    subscribe_chunk: int = 10,
    **options: Any,
) -> BybitKlineFeed:
    settings = ExchangeSettings(api_urls={"all": rest.base_url}, ws_urls={"all": ws.url})
    return BybitKlineFeed(
        settings,
        silence_timeout_s=silence_timeout_s,
        subscribe_chunk=subscribe_chunk,
        clock=lambda: RECEIVED_MS,
        **options,
    )


@asynccontextmanager
async def streaming(
    feed: BybitKlineFeed, symbols: Sequence[str], sink: Collector
) -> Any:  # AsyncIterator[asyncio.Task[None]]
    """Run the feed in a task for the block; cancel it and close the feed afterwards."""
    task = asyncio.create_task(feed.run(symbols, sink))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await feed.close()


async def server_event(future: concurrent.futures.Future[None], timeout: float = WAIT_S) -> None:
    """Await one of the fake server's state futures on the client's event loop."""
    await asyncio.wait_for(asyncio.wrap_future(future), timeout)


async def subscribed(ws: FakeBybitWsServer, n_topics: int, run: asyncio.Task[None]) -> None:
    """Wait for ``n_topics`` subscriptions, failing at once if the run ends first."""
    waiter = asyncio.ensure_future(server_event(ws.when_subscribed(n_topics)))
    done, _ = await asyncio.wait({waiter, run}, return_when=asyncio.FIRST_COMPLETED)
    if run in done:
        waiter.cancel()
        run.result()
        pytest.fail("run ended before subscribing")
    waiter.result()


async def ends_with(
    run: asyncio.Task[None], error: type[BaseException], timeout: float = WAIT_S
) -> BaseException:
    with pytest.raises(error) as info:
        await asyncio.wait_for(run, timeout)
    return info.value


def aio(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


# -- confirm flag, values, ordering --------------------------------------------------------------


def test_feed_implements_candle_feed_protocol() -> None:
    with servers() as (rest, ws):
        feed = make_feed(rest, ws)
        assert isinstance(feed, CandleFeed)
        assert feed.name == "bybit"
        asyncio.run(feed.close())


def test_confirm_flag_passes_through_unconfirmed_then_confirmed() -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        feed = make_feed(rest, ws)
        async with streaming(feed, [unified(s) for s in SYMBOLS], sink) as run:
            await subscribed(ws, 3, run)
            row = formula_candle("BTCUSDT", T0)
            assert ws.push("BTCUSDT", row, confirm=False) == 1
            assert ws.push("BTCUSDT", row, confirm=True) == 1
            await sink.wait_count(2)
        first, final = sink.updates
        assert (first.confirmed, final.confirmed) == (False, True)
        assert first.symbol == "BTC/USDT:USDT"
        assert final == KlineUpdate(
            symbol="BTC/USDT:USDT",
            open_ms=T0,
            open=float(row[1]),
            high=float(row[2]),
            low=float(row[3]),
            close=float(row[4]),
            volume=float(row[5]),
            turnover=float(row[6]),
            confirmed=True,
            received_ms=RECEIVED_MS,
        )
        assert sink.calls == 2  # one sink call per message

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_duplicates_and_out_of_order_pushes_are_delivered_as_they_arrive() -> None:
    pushes = [(T0 + MINUTE_MS, False), (T0, True), (T0, True), (T0 + MINUTE_MS, True), (T0 - MINUTE_MS, True)]

    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        async with streaming(make_feed(rest, ws), ["ETH/USDT:USDT"], sink) as run:
            await subscribed(ws, 1, run)
            for open_ms, confirm in pushes:
                ws.push("ETHUSDT", formula_candle("ETHUSDT", open_ms), confirm)
            await sink.wait_count(len(pushes))
        assert [(u.open_ms, u.confirmed) for u in sink.updates] == pushes
        assert {u.symbol for u in sink.updates} == {"ETH/USDT:USDT"}

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


# -- subscriptions -------------------------------------------------------------------------------


def test_subscriptions_are_split_into_requests_of_at_most_ten_topics() -> None:
    ids = many_ids(25)

    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        async with streaming(make_feed(rest, ws), [unified(s) for s in ids], sink) as run:
            await subscribed(ws, 25, run)
            assert ws.push_minute(T0) == 25
            await sink.wait_count(25)
        requests = ws.subscribe_requests()
        assert sorted(len(args) for args in requests) == [5, 10, 10]
        assert sorted(t for args in requests for t in args) == sorted(kline_topic(s) for s in ids)
        assert ws.stats().rejected_requests == 0
        assert ws.stats().connections == 1  # every chunk shares one connection
        assert {u.symbol for u in sink.updates} == {unified(s) for s in ids}

    with servers(ids, max_args=10) as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_a_chunk_above_the_servers_limit_is_refused_and_its_symbols_subscribed_one_by_one() -> None:
    ids = many_ids(12)

    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        feed = make_feed(rest, ws, subscribe_chunk=11)
        async with streaming(feed, [unified(s) for s in ids], sink) as run:
            await subscribed(ws, 12, run)
            ws.push_minute(T0)
            await sink.wait_count(12)
            assert feed.refused_symbols == frozenset()
        sizes = [len(args) for args in ws.subscribe_requests()]
        assert sorted(sizes) == [1] * 12 + [11]
        assert ws.stats().rejected_requests == 1

    with servers(ids, max_args=10) as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_a_refused_topic_costs_only_its_own_symbol() -> None:
    ids = many_ids(25)
    bad = ids[13]  # in the second chunk

    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        feed = make_feed(rest, ws)
        # An unlisted symbol is skipped with a warning, not an error.
        symbols = [unified(s) for s in ids] + ["NOPE/USDT:USDT"]
        async with streaming(feed, symbols, sink) as run:
            await subscribed(ws, 24, run)
            ws.push_minute(T0, symbols=ids)  # the server only sends what is subscribed
            await sink.wait_count(24)
            assert not run.done()
            assert feed.refused_symbols == {unified(bad)}
        assert {u.symbol for u in sink.updates} == {unified(s) for s in ids if s != bad}
        assert kline_topic(bad) not in {t for topics in ws.subscriptions().values() for t in topics}
        stats = ws.stats()
        assert stats.rejected_requests == 2  # the chunk of ten, then the bad symbol alone

    with servers(ids, rejected_topics=[kline_topic(bad)]) as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_a_run_whose_every_subscription_is_refused_raises() -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        feed = make_feed(rest, ws)
        async with streaming(feed, ["BTC/USDT:USDT"], Collector()) as run:
            error = await ends_with(run, SourceUnavailableError)
        assert "refused every subscription" in str(error)

    with servers(rejected_topics=[kline_topic("BTCUSDT")]) as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_a_symbol_the_server_stops_pushing_does_not_affect_the_others() -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        async with streaming(make_feed(rest, ws), [unified(s) for s in SYMBOLS], sink) as run:
            await subscribed(ws, 3, run)
            ws.stop_pushing(["ETHUSDT"])
            for minute in range(3):
                assert ws.push_minute(T0 + minute * MINUTE_MS) == 2
            await sink.wait_count(6)
            ws.resume_pushing(["ETHUSDT"])
            ws.push_minute(T0 + 3 * MINUTE_MS)
            await sink.wait_count(9)
            assert not run.done()
        assert len(sink.of("BTC/USDT:USDT")) == len(sink.of("SOL/USDT:USDT")) == 4
        assert [u.open_ms for u in sink.of("ETH/USDT:USDT")] == [T0 + 3 * MINUTE_MS]

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_500_symbols_subscribe_and_every_confirmed_update_arrives() -> None:
    ids = many_ids(500)

    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        started = time.perf_counter()
        async with streaming(make_feed(rest, ws), [unified(s) for s in ids], sink) as run:
            await subscribed(ws, 500, run)
            subscribed_s = time.perf_counter() - started
            pushed = time.perf_counter()
            assert ws.push_minute(T0) == 500
            await sink.wait(lambda ups: len({u.symbol for u in ups if u.confirmed}) >= 500)
            delivered_s = time.perf_counter() - pushed
        print(
            f"\n500 symbols: markets + {len(ws.subscribe_requests())} subscribe requests in "
            f"{subscribed_s:.2f} s; one pushed minute (500 messages) delivered in {delivered_s * 1000:.0f} ms"
        )
        assert all(len(args) <= 10 for args in ws.subscribe_requests())
        assert len(sink.updates) == 500
        assert all(u.confirmed and u.open_ms == T0 for u in sink.updates)

    with servers(ids) as (rest, ws):
        aio(lambda: scenario(rest, ws))


# -- connection loss, silence, keep-alive --------------------------------------------------------


def test_a_dropped_connection_ends_run_and_the_next_run_resubscribes_everything() -> None:
    ids = many_ids(15)

    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        symbols = [unified(s) for s in ids]
        feed = make_feed(rest, ws)
        first = Collector()
        run = asyncio.create_task(feed.run(symbols, first))
        try:
            await subscribed(ws, 15, run)
            assert ws.drop_connections() == 1
            error = await ends_with(run, SourceUnavailableError)
            assert "lost" in str(error)
            await server_event(ws.when(lambda s: s.live == 0))
            markets_requests = len(rest.requests(INSTRUMENTS_PATH))

            second = Collector()
            rerun = asyncio.create_task(feed.run(symbols, second))
            await subscribed(ws, 15, rerun)
            ws.push_minute(T0)
            await second.wait_count(15)
            assert ws.stats().connections == 2
            assert len(rest.requests(INSTRUMENTS_PATH)) == markets_requests  # markets kept
            rerun.cancel()
            await asyncio.gather(rerun, return_exceptions=True)
        finally:
            run.cancel()
            await feed.close()

    with servers(ids) as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_markets_passed_in_are_not_loaded_again() -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        loader = make_feed(rest, ws)
        markets = await loader.load_markets()
        await loader.close()
        before = len(rest.requests(INSTRUMENTS_PATH))
        sink = Collector()
        async with streaming(make_feed(rest, ws, markets=markets), ["SOL/USDT:USDT"], sink) as run:
            await subscribed(ws, 1, run)
            ws.push_minute(T0)
            await sink.wait_count(1)
        assert before > 0
        assert len(rest.requests(INSTRUMENTS_PATH)) == before

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_an_unreachable_server_ends_run_as_unavailable() -> None:
    async def scenario(rest: FakeExchangeServer, url: str) -> None:
        settings = ExchangeSettings(api_urls={"all": rest.base_url}, ws_urls={"all": url})
        feed = BybitKlineFeed(settings, silence_timeout_s=30)
        async with streaming(feed, ["BTC/USDT:USDT"], Collector()) as run:
            await ends_with(run, SourceUnavailableError)

    with servers() as (rest, ws):
        closed_url = ws.url
    # The WebSocket server is stopped: nothing listens on its port any more.
    with running_exchange_server(symbols=SYMBOLS) as rest:
        aio(lambda: scenario(rest, closed_url))


def test_silence_watchdog_ends_run_when_nothing_arrives() -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        sink = Collector()
        feed = make_feed(rest, ws, silence_timeout_s=0.4)
        async with streaming(feed, ["BTC/USDT:USDT"], sink) as run:
            await subscribed(ws, 1, run)
            ws.push_minute(T0)
            await sink.wait_count(1)
            ws.pause()
            started = time.perf_counter()
            error = await ends_with(run, SourceUnavailableError)
            waited = time.perf_counter() - started
        assert "silent for 0.4 s" in str(error)
        assert waited < 2.0

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


@pytest.mark.parametrize("pong_style", ["linear", "option"])
def test_pings_are_answered_and_keep_the_run_alive(pong_style: str) -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        # Pings every 100 ms; the watchdog (0.5 s) would fire long before 8 pings without the pongs.
        feed = make_feed(rest, ws, keepalive_ms=100, silence_timeout_s=0.5)
        async with streaming(feed, ["BTC/USDT:USDT"], Collector()) as run:
            await subscribed(ws, 1, run)
            alive = asyncio.ensure_future(server_event(ws.when(lambda s: s.pongs >= 8)))
            done, _ = await asyncio.wait({alive, run}, return_when=asyncio.FIRST_COMPLETED)
            assert alive in done, f"run ended: {run.exception() if run.done() else None}"
            alive.result()
            assert not run.done()
        stats = ws.stats()
        assert stats.pings >= 8
        assert stats.pongs >= 8

    with servers(pong_style=pong_style) as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_missing_pongs_end_run_as_unavailable() -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        feed = make_feed(rest, ws, keepalive_ms=100, silence_timeout_s=30)
        async with streaming(feed, ["BTC/USDT:USDT"], Collector()) as run:
            await subscribed(ws, 1, run)
            ws.pause()
            error = await ends_with(run, SourceUnavailableError)
        assert "ping-pong" in str(error)

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_closing_the_feed_ends_a_run_in_progress() -> None:
    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        feed = make_feed(rest, ws)
        async with streaming(feed, ["BTC/USDT:USDT"], Collector()) as run:
            await subscribed(ws, 1, run)
            with pytest.raises(RuntimeError, match="already running"):
                await feed.run(["ETH/USDT:USDT"], Collector())
            await feed.close()
            error = await ends_with(run, SourceUnavailableError)
        assert "closed" in str(error)

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


def test_a_failing_sink_ends_run_with_its_error() -> None:
    def sink(_updates: list[KlineUpdate]) -> None:
        raise RuntimeError("sink broke")

    async def scenario(rest: FakeExchangeServer, ws: FakeBybitWsServer) -> None:
        async with streaming(make_feed(rest, ws), ["BTC/USDT:USDT"], sink) as run:  # type: ignore[arg-type]
            await subscribed(ws, 1, run)
            ws.push_minute(T0)
            await ends_with(run, RuntimeError)

    with servers() as (rest, ws):
        aio(lambda: scenario(rest, ws))


# -- configuration -------------------------------------------------------------------------------


def test_ws_url_overrides_keep_ccxts_nested_layout() -> None:
    feed = BybitKlineFeed(
        ExchangeSettings(
            api_urls={"all": "http://127.0.0.1:1"},
            ws_urls={"all": "ws://127.0.0.1:2/x", "public.linear": "ws://127.0.0.1:3/linear"},
        )
    )
    api = feed._exchange.urls["api"]
    asyncio.run(feed.close())
    assert api["public"] == "http://127.0.0.1:1"
    assert api["private"] == "http://127.0.0.1:1"
    assert api["ws"]["public"]["linear"] == "ws://127.0.0.1:3/linear"
    assert api["ws"]["public"]["spot"] == "ws://127.0.0.1:2/x"
    assert api["ws"]["private"]["spot"]["unified"] == "ws://127.0.0.1:2/x"


def test_resolve_ws_urls_paths_and_errors() -> None:
    current = {"public": {"spot": "wss://a", "linear": "wss://b"}, "private": {"contract": "wss://c"}}
    assert resolve_ws_urls(current, {"public": "ws://x"}, "bybit") == {
        "public": {"spot": "ws://x", "linear": "ws://x"},
        "private": {"contract": "wss://c"},
    }
    assert current["public"]["spot"] == "wss://a"  # not modified in place
    with pytest.raises(ConfigError, match="not a path"):
        resolve_ws_urls(current, {"public.inverse": "ws://x"}, "bybit")
    with pytest.raises(ConfigError, match="not a ws"):
        resolve_ws_urls(current, {"all": "http://x"}, "bybit")


def test_from_settings_uses_the_stream_settings() -> None:
    feed = BybitKlineFeed.from_settings(
        ExchangeSettings(), StreamSettings(subscribe_chunk=5, silence_timeout_s=3.5)
    )
    assert (feed._chunk, feed._silence_timeout_s) == (5, 3.5)
    asyncio.run(feed.close())
    with pytest.raises(ConfigError):
        BybitKlineFeed(ExchangeSettings(id="binance"))
