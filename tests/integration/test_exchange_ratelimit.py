"""The host-wide request budget: threads in two processes, limited through the real Redis, against a
local Bybit look-alike that enforces its own budget (HTTP 429, retCode 10006) and counts arrivals."""

from __future__ import annotations

import multiprocessing as mp
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from core.settings import ExchangeSettings
from core.timegrid import MINUTE_MS, parse_minute
from data.exchange.gateway import ExchangeGateway
from data.exchange.limiter import RedisRateLimiter
from tests.fakes.exchange_server import KLINE_PATH, FakeExchangeServer, running_exchange_server

# The spawned workers import this module: what only the parent needs (tests.conftest with its
# database modules) is imported inside the fixtures, so that the workers start quickly.

pytestmark = pytest.mark.integration

FORMING = parse_minute("2026-11-24T10:31:00Z")
NOW_MS = FORMING + 25_000
SYMBOL_IDS = [f"R{i:02d}USDT" for i in range(24)]
SYMBOLS = [f"R{i:02d}/USDT:USDT" for i in range(24)]
PROCESSES = 2
THREADS = 4
CANDLES = 3


@dataclass(frozen=True)
class Job:
    base_url: str
    redis_url: str
    key_prefix: str
    requests_per_second: float
    burst: int
    retry_base_delay_s: float


def fetch_in_threads(job: Job, barrier: Any) -> tuple[str, Any]:
    """One worker process's part: its own gateway and Redis limiter, THREADS threads fetching every
    symbol the way the candle source does (one ``fetch_ohlcv`` page each)."""
    settings = ExchangeSettings(
        api_urls={"all": job.base_url},
        timeout_ms=5_000,
        requests_per_second=job.requests_per_second,
        request_burst=job.burst,
        max_retries=20,
        retry_base_delay_s=job.retry_base_delay_s,
        retry_max_delay_s=1.0,
    )
    client = redis.Redis.from_url(job.redis_url)
    limiter = RedisRateLimiter.from_settings(settings, client, key_prefix=job.key_prefix)
    gateway = ExchangeGateway(settings, limiter, max_parallel=THREADS)

    def fetch(symbol: str) -> int:
        since = FORMING - CANDLES * MINUTE_MS
        return len(gateway.call("candles", "fetch_ohlcv", symbol, "1m", since=since, limit=CANDLES))

    try:
        barrier.wait(timeout=60)  # both processes start together: their requests compete
        with ThreadPoolExecutor(THREADS) as pool:
            return ("ok", list(pool.map(fetch, SYMBOLS)))
    except Exception as exc:  # noqa: BLE001 - the job's process boundary: any failure goes back to
        # the test as its outcome (raised here it would only end the job server)
        return ("error", repr(exc))
    finally:
        gateway.close()
        client.close()


def serve_jobs(jobs: Any, results: Any, barrier: Any) -> None:
    """A worker process (spawned once per module): one ``fetch_in_threads`` per job, until None."""
    while (job := jobs.get()) is not None:
        results.put(fetch_in_threads(job, barrier))


@dataclass
class Workers:
    jobs: list[Any]
    results: Any

    def run(self, job: Job) -> None:
        for queue in self.jobs:
            queue.put(job)
        outcomes = [self.results.get(timeout=120) for _ in self.jobs]
        assert outcomes == [("ok", [CANDLES] * len(SYMBOLS))] * PROCESSES


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    jobs = [ctx.Queue() for _ in range(PROCESSES)]
    processes = [ctx.Process(target=serve_jobs, args=(q, results, barrier), daemon=True) for q in jobs]
    for process in processes:
        process.start()
    yield Workers(jobs, results)
    for queue in jobs:
        queue.put(None)
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()


@pytest.fixture
def job_for() -> Iterator[Any]:
    from tests.conftest import REDIS_URL

    prefix = f"test:ratelimit:{uuid.uuid4().hex[:10]}"

    def make(server: FakeExchangeServer, budget: tuple[float, int], retry_s: float) -> Job:
        return Job(server.base_url, REDIS_URL, prefix, budget[0], budget[1], retry_s)

    yield make
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def test_a_shared_budget_below_the_servers_is_never_refused(workers: Workers, job_for: Any) -> None:
    rps, burst = 20, 5  # any second: at most 25 across both processes; the server allows 30
    with running_exchange_server(
        symbols=SYMBOL_IDS, clock=lambda: NOW_MS, latency_s=0.05, rate_limit=(30, 1.0)
    ) as server:
        workers.run(job_for(server, (rps, burst), retry_s=0.1))
        per_second = server.per_second()
        print(f"\nrequests per second at the server (shared {rps}/s + {burst}): {per_second}")
        assert server.throttled() == []
        # Every symbol once per process, plus each process's two market pages: nothing retried.
        assert len(server.requests(KLINE_PATH)) == PROCESSES * len(SYMBOLS)
        assert len(server.requests()) == PROCESSES * (len(SYMBOLS) + 2)
        # Two separate budgets of 20/s would put about 40 into a second.
        assert server.max_in_window(1.0) <= rps + burst
        assert max(per_second) <= rps + burst
        assert server.errors == []


def test_a_budget_above_the_servers_is_refused_and_retried_to_success(workers: Workers, job_for: Any) -> None:
    with running_exchange_server(
        symbols=SYMBOL_IDS, clock=lambda: NOW_MS, latency_s=0.05, rate_limit=(20, 1.0)
    ) as server:
        workers.run(job_for(server, (100, 40), retry_s=0.2))
        throttled = server.throttled(KLINE_PATH)
        print(f"\n429 answers: {len(server.throttled())}; requests per second: {server.per_second()}")
        assert throttled  # the bursts went beyond the server's budget...
        # ...and every refused request came back until it was served.
        assert len(server.requests(KLINE_PATH)) == PROCESSES * len(SYMBOLS) + len(throttled)
        assert server.errors == []
