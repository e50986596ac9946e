"""The exchange gateway's parts: the rate limiter (in-process and Redis), the retry policy, and the
gateway itself against the local Bybit look-alike with per-request latency (no network)."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ccxt
import pytest
import redis
import structlog
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import SourceError, SourceUnavailableError, TemporaryError, UnknownSymbolError
from core.settings import ExchangeSettings, Settings
from core.timegrid import MINUTE_MS, parse_minute
from data.exchange.gateway import (
    CANDLES,
    ORDERS,
    ExchangeGateway,
    GatewayClosedError,
    OhlcvRequest,
    make_gateway,
)
from data.exchange.limiter import (
    InProcessRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    make_limiter,
    window_ms,
)
from data.exchange.retry import RetryPolicy, acall_with_retry, call_with_retry
from data.sources.exchange import ExchangeCandleSource
from tests.conftest import REDIS_URL
from tests.fakes.exchange_server import (
    INSTRUMENTS_PATH,
    KLINE_PATH,
    FakeExchangeServer,
    max_in_window,
    running_exchange_server,
)
from trading.credentials import Credentials
from trading.live import LiveBroker

FORMING = parse_minute("2026-11-24T10:31:00Z")
NOW_MS = FORMING + 25_000
SYMBOL_IDS = [f"C{i:02d}USDT" for i in range(50)]
LATENCY_S = 0.15
MAX_PARALLEL = 10


def private_limiter(rps: float, burst: int, exchange_id: str = "bybit") -> InProcessRateLimiter:
    return InProcessRateLimiter(exchange_id, rps, burst, private=True)


# -- limiter -----------------------------------------------------------------------------------------


def test_the_window_holds_the_burst_at_the_configured_rate() -> None:
    assert window_ms(80, 20) == 250
    assert window_ms(1000, 1) == 1
    assert window_ms(30, 20) >= 667  # rounded up: never faster than configured
    for rps, burst in [(30, 20), (7, 3), (80, 20), (123.4, 17)]:
        ms = window_ms(rps, burst)
        assert (ms / 1000) * 1000 == ms  # exact, as limits' Redis script needs for PX


def test_a_burst_passes_at_once_then_the_window_must_free() -> None:
    limiter = private_limiter(rps=100, burst=10)
    assert [limiter.try_acquire() for _ in range(10)] == [0.0] * 10
    wait = limiter.try_acquire()
    assert 0 < wait <= limiter.window_s


def test_threads_share_the_budget_exactly() -> None:
    limiter = private_limiter(rps=1, burst=20)  # a 20 s window: nothing frees during the test
    barrier = threading.Barrier(8)

    def grab() -> int:
        barrier.wait()
        return sum(limiter.try_acquire() == 0.0 for _ in range(10))

    with ThreadPoolExecutor(8) as pool:
        taken = sum(pool.map(lambda _: grab(), range(8)))
    assert taken == 20


def test_blocking_acquire_paces_threads_without_spinning() -> None:
    limiter = private_limiter(rps=100, burst=10)  # 10 per 100 ms
    tries = 0
    try_acquire = limiter.try_acquire

    def counted() -> float:
        nonlocal tries
        tries += 1
        return try_acquire()

    limiter.try_acquire = counted  # type: ignore[method-assign]
    stamps: list[float] = []
    lock = threading.Lock()

    def take(_: int) -> None:
        limiter.acquire()
        with lock:
            stamps.append(time.monotonic())

    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(take, range(50)))
    elapsed = time.monotonic() - began
    # 50 slots of 10 per window need at least 5 windows: 4 window lengths between first and last.
    assert max(stamps) - min(stamps) >= 4 * limiter.window_s * 0.95
    assert elapsed < 2.0
    assert max_in_window(stamps, limiter.window_s) <= 2 * limiter.burst
    # Each waiter sleeps until the window can free a slot: a handful of looks per slot, not a spin.
    assert tries < 50 * 6


def test_awaiting_a_slot_does_not_block_the_event_loop() -> None:
    limiter = private_limiter(rps=200, burst=5)  # 5 per 25 ms

    async def main() -> tuple[int, list[float]]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.002)

        async def take() -> float:
            await limiter.acquire_async()
            return time.monotonic()

        ticking = asyncio.create_task(ticker())
        stamps = await asyncio.gather(*(take() for _ in range(30)))
        done.set()
        await ticking
        return ticks, list(stamps)

    ticks, stamps = asyncio.run(main())
    assert max(stamps) - min(stamps) >= 4 * limiter.window_s * 0.95  # 30 slots: >= 6 windows
    assert ticks >= 10  # the loop kept running while the takers waited


def test_in_process_limiters_of_one_process_share_one_budget_per_exchange() -> None:
    exchange = f"test-{uuid.uuid4().hex[:8]}"
    first = InProcessRateLimiter(exchange, 1, 3)
    second = InProcessRateLimiter(exchange, 1, 3)
    other = InProcessRateLimiter(f"{exchange}-other", 1, 3)
    assert [first.try_acquire() for _ in range(3)] == [0.0] * 3
    assert second.try_acquire() > 0
    assert other.try_acquire() == 0.0


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"test:ratelimit:{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.mark.integration
def test_redis_limiters_on_the_same_key_are_one_budget(redis_prefix: str) -> None:
    settings = ExchangeSettings(requests_per_second=1, request_burst=5)
    first_client, second_client = redis.Redis.from_url(REDIS_URL), redis.Redis.from_url(REDIS_URL)
    first = RedisRateLimiter.from_settings(settings, first_client, key_prefix=redis_prefix)
    second = RedisRateLimiter.from_settings(settings, second_client, key_prefix=redis_prefix)
    okx = RedisRateLimiter.from_settings(
        settings.model_copy(update={"id": "okx"}), first_client, key_prefix=redis_prefix
    )
    assert [first.try_acquire() for _ in range(3)] == [0.0] * 3
    assert [second.try_acquire() for _ in range(2)] == [0.0] * 2
    assert 0 < first.try_acquire() <= first.window_s
    assert second.try_acquire() > 0
    assert okx.try_acquire() == 0.0  # another exchange, another budget
    assert isinstance(make_limiter(settings, first_client), RedisRateLimiter)
    assert isinstance(make_limiter(settings), InProcessRateLimiter)
    first_client.close()
    second_client.close()


@pytest.mark.integration
def test_redis_limiter_paces_blocking_callers(redis_prefix: str) -> None:
    settings = ExchangeSettings(requests_per_second=100, request_burst=10)
    client = redis.Redis.from_url(REDIS_URL)
    limiters = [RedisRateLimiter.from_settings(settings, client, key_prefix=redis_prefix) for _ in range(2)]
    stamps: list[float] = []
    lock = threading.Lock()

    def take(i: int) -> None:
        limiters[i % 2].acquire()
        with lock:
            stamps.append(time.monotonic())

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(take, range(50)))
    assert max(stamps) - min(stamps) >= 4 * limiters[0].window_s * 0.95
    assert max_in_window(stamps, 1.0) <= settings.requests_per_second + settings.request_burst
    client.close()


def test_an_unreachable_redis_is_a_temporary_error() -> None:
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    limiter = RedisRateLimiter.from_settings(ExchangeSettings(), client)
    with pytest.raises(SourceUnavailableError, match="limiter"):
        limiter.try_acquire()


# -- retry policy ------------------------------------------------------------------------------------

POLICY = RetryPolicy(max_retries=3, base_delay_s=0.4, max_delay_s=30.0)


def failing(errors: list[Exception], result: object = "ok") -> tuple[Callable[[], object], list[int]]:
    calls: list[int] = []

    def fn() -> object:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return fn, calls


def assert_jittered_backoff(sleeps: list[float], policy: RetryPolicy) -> None:
    for n, delay in enumerate(sleeps):
        full = min(policy.base_delay_s * 2**n, policy.max_delay_s)
        assert full / 2 <= delay <= full


def test_network_errors_are_retried_with_backoff_then_succeed() -> None:
    sleeps: list[float] = []
    fn, calls = failing([ccxt.RequestTimeout("slow"), ccxt.RateLimitExceeded("10006")])
    with structlog.testing.capture_logs() as logs:
        assert call_with_retry(fn, POLICY, source="bybit", op="fetch_ohlcv", sleep=sleeps.append) == "ok"
    assert len(calls) == 3
    assert len(sleeps) == 2
    assert_jittered_backoff(sleeps, POLICY)
    retries = [e for e in logs if e["event"] == "exchange_retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert retries[0]["op"] == "fetch_ohlcv"
    assert "RequestTimeout" in retries[0]["error"]


def test_exhausted_retries_end_as_source_unavailable() -> None:
    first_delays = set()
    for _ in range(10):
        sleeps: list[float] = []
        fn, calls = failing([ccxt.ExchangeNotAvailable("502")] * 10)
        with pytest.raises(SourceUnavailableError, match=r"after 3 retries \(4 attempts\)") as info:
            call_with_retry(
                fn, POLICY, source="bybit", op="fetch_ohlcv", symbol="BTC/USDT:USDT", sleep=sleeps.append
            )
        assert isinstance(info.value, TemporaryError)
        assert isinstance(info.value.__cause__, ccxt.ExchangeNotAvailable)
        assert len(calls) == 4
        assert_jittered_backoff(sleeps, POLICY)
        first_delays.add(sleeps[0])
    assert len(first_delays) > 1  # jitter: the callers that failed together do not retry together


def test_delays_are_capped() -> None:
    policy = RetryPolicy(max_retries=6, base_delay_s=1.0, max_delay_s=2.0)
    sleeps: list[float] = []
    fn, _ = failing([ccxt.NetworkError("down")] * 10)
    with pytest.raises(SourceUnavailableError):
        call_with_retry(fn, policy, source="bybit", op="load_markets", sleep=sleeps.append)
    assert len(sleeps) == 6
    assert all(delay <= 2.0 for delay in sleeps)
    assert all(delay >= 1.0 for delay in sleeps[1:])


@pytest.mark.parametrize(
    ("error", "symbol", "expected"),
    [
        (ccxt.BadSymbol("Not supported symbols"), "XRP/USDT:USDT", UnknownSymbolError),
        (ccxt.BadSymbol("Not supported symbols"), None, SourceError),
        (ccxt.AuthenticationError("bad key"), "BTC/USDT:USDT", SourceError),
        (ccxt.ExchangeError("params error"), None, SourceError),
    ],
)
def test_refusals_are_final_at_once(error: Exception, symbol: str | None, expected: type[Exception]) -> None:
    sleeps: list[float] = []
    fn, calls = failing([error])
    with pytest.raises(expected) as info:
        call_with_retry(fn, POLICY, source="bybit", op="fetch_ohlcv", symbol=symbol, sleep=sleeps.append)
    assert (len(calls), sleeps) == (1, [])
    if isinstance(info.value, UnknownSymbolError):
        assert (info.value.symbol, info.value.source) == (symbol, "bybit")


def test_other_exceptions_pass_through_untouched() -> None:
    fn, calls = failing([ValueError("a bug")])
    with pytest.raises(ValueError, match="a bug"):
        call_with_retry(fn, POLICY, source="bybit", op="fetch_ohlcv", sleep=lambda _: None)
    assert len(calls) == 1


def test_the_async_variant_awaits_its_waits() -> None:
    sleeps: list[float] = []

    async def record(seconds: float) -> None:
        sleeps.append(seconds)

    errors: list[Exception] = [ccxt.RequestTimeout("slow")] * 2

    async def fn() -> str:
        if errors:
            raise errors.pop()
        return "ok"

    assert asyncio.run(acall_with_retry(fn, POLICY, source="bybit", op="x", sleep=record)) == "ok"
    assert_jittered_backoff(sleeps, POLICY)
    assert len(sleeps) == 2

    async def bad() -> str:
        raise ccxt.BadSymbol("nope")

    with pytest.raises(UnknownSymbolError):
        asyncio.run(acall_with_retry(bad, POLICY, source="bybit", op="x", symbol="X/USDT:USDT", sleep=record))
    assert len(sleeps) == 2


# -- gateway -----------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeExchangeServer]:
    with running_exchange_server(
        symbols=(*SYMBOL_IDS, "XRPUSDT"),
        kline_unsupported=("XRPUSDT",),
        clock=lambda: NOW_MS,
        latency_s=LATENCY_S,
    ) as srv:
        yield srv
        assert srv.errors == []


def exchange_settings(server: FakeExchangeServer, **overrides: Any) -> ExchangeSettings:
    fields: dict[str, Any] = {
        "api_urls": {"all": server.base_url},
        "timeout_ms": 5_000,
        "retry_base_delay_s": 0.01,
    }
    fields.update(overrides)
    return ExchangeSettings(**fields)


@pytest.fixture
def gateway_for(server: FakeExchangeServer) -> Iterator[Callable[..., ExchangeGateway]]:
    made: list[ExchangeGateway] = []

    def make(limiter: RateLimiter | None = None, **overrides: Any) -> ExchangeGateway:
        settings = exchange_settings(server, **overrides)
        limiter = limiter or private_limiter(settings.requests_per_second, settings.request_burst)
        gateway = ExchangeGateway(settings, limiter, max_parallel=MAX_PARALLEL)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        gateway.close()


def test_fifty_symbols_from_ten_threads_overlap_within_the_rate(
    server: FakeExchangeServer, gateway_for: Callable[..., ExchangeGateway]
) -> None:
    rps, burst = 40, 10  # below what 10 requests in flight at 150 ms would reach (~66/s)
    gateway = gateway_for(requests_per_second=rps, request_burst=burst)
    source = ExchangeCandleSource(gateway.settings, gateway=gateway, clock=lambda: NOW_MS)
    symbols = [s for s in source.list_symbols() if not s.startswith("XRP")]
    assert len(symbols) == 50
    start = FORMING - 5 * MINUTE_MS

    began = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        frames = list(pool.map(lambda s: source.fetch(s, start, FORMING), symbols))
    elapsed = time.perf_counter() - began

    print(f"\n50 symbols from 10 threads at {LATENCY_S * 1000:.0f} ms latency: {elapsed:.2f} s")
    assert elapsed < 2.5  # one after another: 50 x 0.15 = 7.5 s
    assert [len(f) for f in frames] == [5] * 50
    assert len(server.requests(KLINE_PATH)) == 50
    assert len(server.requests(INSTRUMENTS_PATH)) == 2  # markets loaded once
    assert 1 < server.peak_in_flight <= MAX_PARALLEL
    assert server.max_in_window(1.0) <= rps + burst


def test_many_fetches_at_once_return_rows_or_errors_in_order(
    server: FakeExchangeServer, gateway_for: Callable[..., ExchangeGateway]
) -> None:
    gateway = gateway_for()
    gateway.load_markets()
    requests = [
        OhlcvRequest(f"C{i:02d}/USDT:USDT", since=FORMING - 3 * MINUTE_MS, limit=3) for i in range(20)
    ]
    requests.insert(7, OhlcvRequest("XRP/USDT:USDT", since=FORMING - 3 * MINUTE_MS, limit=3))

    began = time.perf_counter()
    results = gateway.fetch_ohlcv_many(requests)
    elapsed = time.perf_counter() - began

    assert elapsed < len(requests) * LATENCY_S / 2  # one after another: 21 x 0.15 s
    assert isinstance(results[7], UnknownSymbolError)
    rows = [r for i, r in enumerate(results) if i != 7]
    assert all(
        isinstance(r, list) and [int(c[0]) for c in r] == [FORMING - k * MINUTE_MS for k in (3, 2, 1)]
        for r in rows
    )
    assert len(server.requests(KLINE_PATH)) == 21  # the bad symbol was not retried


def test_requests_in_flight_are_bounded_by_max_parallel(server: FakeExchangeServer) -> None:
    settings = exchange_settings(server)
    with ExchangeGateway(settings, private_limiter(1000, 100), max_parallel=3) as gateway:
        gateway.load_markets()
        server.clear_requests()
        since = FORMING - MINUTE_MS
        gateway.fetch_ohlcv_many([OhlcvRequest(f"C{i:02d}/USDT:USDT", since, 1) for i in range(12)])
    assert server.peak_in_flight == 3
    times = sorted(r.at for r in server.requests(KLINE_PATH))
    assert times[-1] - times[0] >= 3 * LATENCY_S * 0.9  # four rounds of three


def test_clients_per_use_share_the_markets_and_skip_ccxts_throttle(
    server: FakeExchangeServer, gateway_for: Callable[..., ExchangeGateway]
) -> None:
    gateway = gateway_for()
    candles, orders = gateway.client(CANDLES), gateway.client(ORDERS)
    assert candles is not orders
    assert candles.enableRateLimit is False
    assert orders.enableRateLimit is False
    gateway.call(ORDERS, "fetch_ohlcv", "C01/USDT:USDT", "1m", since=FORMING - MINUTE_MS, limit=1)
    gateway.call(CANDLES, "fetch_ohlcv", "C02/USDT:USDT", "1m", since=FORMING - MINUTE_MS, limit=1)
    assert len(server.requests(INSTRUMENTS_PATH)) == 2
    assert orders.markets is candles.markets


def test_a_closed_gateway_refuses_calls_and_stops_its_thread(
    gateway_for: Callable[..., ExchangeGateway],
) -> None:
    gateway = gateway_for()
    gateway.load_markets()
    thread = gateway._thread
    assert thread is not None
    assert thread.is_alive()
    gateway.close()
    assert not thread.is_alive()
    with pytest.raises(GatewayClosedError):
        gateway.load_markets()
    gateway.close()  # idempotent


def test_a_forked_child_gets_its_own_loop(
    server: FakeExchangeServer, gateway_for: Callable[..., ExchangeGateway]
) -> None:
    gateway = gateway_for()
    gateway.load_markets()  # the parent's loop thread runs
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the number of candles, or -1
        code = 1
        try:
            rows = gateway.call(
                CANDLES, "fetch_ohlcv", "C03/USDT:USDT", "1m", since=FORMING - 2 * MINUTE_MS, limit=2
            )
            os.write(write_end, str(len(rows)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 30)
    answer = os.read(read_end, 16).decode() if ready else "timeout"
    os.close(read_end)
    if not ready:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    assert answer == "2"
    assert os.waitstatus_to_exitcode(status) == 0
    # The child loaded no markets (they came with the fork) and the parent's gateway still works.
    assert len(server.requests(INSTRUMENTS_PATH)) == 2
    assert (
        len(gateway.call(CANDLES, "fetch_ohlcv", "C04/USDT:USDT", "1m", since=FORMING - MINUTE_MS, limit=1))
        == 1
    )


def test_make_gateway_takes_max_parallel_and_the_limiter_backend(server: FakeExchangeServer) -> None:
    settings = Settings(exchange={"api_urls": {"all": server.base_url}}, ml_integration={"max_parallel": 7})
    with make_gateway(settings) as gateway:
        assert gateway.max_parallel == 7
        assert isinstance(gateway.limiter, InProcessRateLimiter)


class CountingLimiter(InProcessRateLimiter):
    def __init__(self) -> None:
        super().__init__("bybit", 1000, 100, private=True)
        self.acquired = 0

    def acquire(self) -> float:
        self.acquired += 1
        return super().acquire()


def test_the_live_broker_waits_for_the_limiter_before_every_request(server: FakeExchangeServer) -> None:
    settings = Settings(exchange={"api_urls": {"all": server.base_url}, "timeout_ms": 2_000})
    limiter = CountingLimiter()
    broker = LiveBroker(settings, Credentials(SecretStr("k"), SecretStr("s")), limiter=limiter)
    try:
        broker.balance("USDT")
        assert broker._exchange.enableRateLimit is False  # ccxt's own throttle is off
        assert limiter.acquired == len(server.requests()) > 1
    finally:
        broker.close()
