"""The exchange gateway: every REST call of a process on one asyncio loop, bounded and limited.

Sync callers (the candle source under ``data.ingest``'s thread pool, feature tasks) call
``gateway.call(...)`` from any thread: the call becomes a coroutine on the gateway's loop thread and
the caller blocks for its result. Many threads calling at once are so many concurrent coroutines,
bounded by ``max_parallel`` requests in flight and by the rate limiter, instead of requests queued
one after another behind ccxt's per-client throttle (whose unlocked "last request" time lets threads
sharing a sync client fire together anyway).

One loop thread per process, started on first use (never at import); a forked child gets its own
on first use. Each use (``candles``, ``orders``) has its own asyncio ccxt client; markets are
loaded once per gateway and shared between them. Every call runs under the one retry policy
(``data.exchange.retry``) and fails with ``core.errors``' errors.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from core.logging import get_logger
from core.settings import ExchangeSettings, Settings
from data.exchange.client import build_async_exchange, check_exchange_id
from data.exchange.limiter import RateLimiter, make_limiter
from data.exchange.retry import AsyncSleep, RetryPolicy, acall_with_retry

T = TypeVar("T")

CANDLES = "candles"
ORDERS = "orders"
# ml_integration.max_parallel's default.
DEFAULT_MAX_PARALLEL = 10
_CLOSE_TIMEOUT_S = 10.0

OhlcvRows = list[list[Any]]


@dataclass(frozen=True)
class OhlcvRequest:
    """One ``fetch_ohlcv`` page: ccxt's arguments."""

    symbol: str
    since: int | None = None
    limit: int | None = None
    timeframe: str = "1m"


class GatewayClosedError(RuntimeError):
    """The gateway was closed; build a new one."""


def _as_async_sleep(sleep: Callable[[float], object] | None) -> AsyncSleep:
    if sleep is None:
        return asyncio.sleep
    if inspect.iscoroutinefunction(sleep):
        return sleep
    plain = sleep

    # Runs on the loop thread: meant for tests' recorders. A blocking sleep here stalls every call.
    async def call_plain(seconds: float) -> None:
        plain(seconds)

    return call_plain


_GATEWAYS: weakref.WeakSet[ExchangeGateway] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for gateway in list(_GATEWAYS):
        gateway._forget_parent_loop()


def _close_open_gateways() -> None:
    # Callers that drop a source without closing it (one-shot CLI commands) would otherwise leave
    # ccxt's and aiohttp's "unclosed session" complaints on stderr at exit. Daemon threads, the loop
    # threads among them, still run while atexit handlers do.
    for gateway in list(_GATEWAYS):
        gateway.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_open_gateways)


class ExchangeGateway:
    """See the module docstring. Thread-safe; ``close()`` when done."""

    def __init__(
        self,
        settings: ExchangeSettings,
        limiter: RateLimiter,
        *,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        check_exchange_id(settings.id)
        self.name: str = settings.id
        self.settings = settings
        self.limiter = limiter
        self.policy = policy or RetryPolicy.from_settings(settings)
        self.max_parallel = max(1, max_parallel)
        self._sleep = _as_async_sleep(sleep)
        self._log = get_logger(__name__).bind(exchange=self.name)
        self._lock = threading.Lock()
        self._closed = False
        # Market data outlives the loop (a forked child keeps it): only plain dicts are read from it.
        self._markets_client: Any | None = None
        self._orphans: list[object] = []
        self._new_loop_state()
        _GATEWAYS.add(self)

    def _new_loop_state(self) -> None:
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: dict[str, Any] = {}
        self._in_flight = asyncio.Semaphore(self.max_parallel)
        self._markets_lock = asyncio.Lock()

    def _forget_parent_loop(self) -> None:
        """In a forked child: the loop thread did not survive the fork and the clients' connections
        belong to the parent. They stay referenced, never closed from here (closing would touch the
        parent's sockets), and the child starts its own loop on first use."""
        if self._loop is not None:
            self._orphans.append((self._loop, self._clients))
        self._lock = threading.Lock()
        self._new_loop_state()

    # -- the loop thread ----------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._pid != os.getpid():  # forked behind the at-fork hook's back
            self._forget_parent_loop()
        with self._lock:
            if self._closed:
                raise GatewayClosedError(f"the {self.name} exchange gateway is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                # The thread runs a bound method: a started gateway lives until closed (or the process
                # exits), never collected with its clients in mid-flight.
                thread = threading.Thread(
                    target=self._run_forever, args=(loop,), name=f"exchange-gateway-{self.name}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def _run_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def _on_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the gateway's loop and block the calling thread for its result."""
        try:
            loop = self._running_loop()
            if self._on_loop_thread():
                raise RuntimeError("a blocking gateway call from the gateway's own loop: await it instead")
        except BaseException:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        finally:
            # The caller gave up (a task's time limit, Ctrl-C): the request must not go on alone.
            if not future.done():
                future.cancel()

    # -- clients and markets ------------------------------------------------------------------------

    def _client_on_loop(self, use: str) -> Any:
        client = self._clients.get(use)
        if client is None:
            client = build_async_exchange(self.settings, limiter=self.limiter, in_flight=self._in_flight)
            if self._markets_client is not None:
                client.set_markets_from_exchange(self._markets_client)
            self._clients[use] = client
        return client

    def client(self, use: str) -> Any:
        """The asyncio ccxt client for ``use``; await it only on this gateway's loop (``run``)."""
        if self._on_loop_thread():
            return self._client_on_loop(use)
        return self.run(self._aclient(use))

    async def _aclient(self, use: str) -> Any:
        return self._client_on_loop(use)

    async def aload_markets(self, use: str = CANDLES) -> dict[str, Any]:
        """The exchange's markets, loaded once per gateway (with retries) and shared by its clients."""
        if self._markets_client is None:
            async with self._markets_lock:
                if self._markets_client is None:
                    client = self._client_on_loop(use)
                    loaded = await acall_with_retry(
                        client.load_markets,
                        self.policy,
                        source=self.name,
                        op="load_markets",
                        sleep=self._sleep,
                    )
                    self._markets_client = client
                    self._log.info("exchange_markets_loaded", markets=len(loaded))
        markets: dict[str, Any] = self._markets_client.markets
        return markets

    def load_markets(self) -> dict[str, Any]:
        return self.run(self.aload_markets())

    # -- calls --------------------------------------------------------------------------------------

    async def acall(self, use: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client(use).<method>(*args, **kwargs)`` with markets loaded, under the retry policy.

        A ``BadSymbol`` becomes ``UnknownSymbolError`` for the first positional argument when that
        is a string (ccxt's symbol argument), ``SourceError`` otherwise.
        """
        if method == "load_markets":
            return await self.aload_markets(use)
        await self.aload_markets(use)
        client = self._client_on_loop(use)
        if not client.markets:
            client.set_markets_from_exchange(self._markets_client)
        bound = getattr(client, method)
        symbol = args[0] if args and isinstance(args[0], str) else None
        return await acall_with_retry(
            lambda: bound(*args, **kwargs),
            self.policy,
            source=self.name,
            op=method,
            symbol=symbol,
            sleep=self._sleep,
        )

    def call(self, use: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``acall`` from any thread, blocking until it is done; thread-safe."""
        return self.run(self.acall(use, method, *args, **kwargs))

    async def afetch_ohlcv_many(
        self, requests: Sequence[OhlcvRequest], *, use: str = CANDLES
    ) -> list[OhlcvRows | Exception]:
        """Every request at once (bounded by ``max_parallel`` and the limiter); per request its rows
        or its error, in order."""
        pages = [
            self.acall(use, "fetch_ohlcv", r.symbol, r.timeframe, since=r.since, limit=r.limit)
            for r in requests
        ]
        results = await asyncio.gather(*pages, return_exceptions=True)
        out: list[OhlcvRows | Exception] = []
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation and exits are the caller's, not one request's outcome
            out.append(result)
        return out

    def fetch_ohlcv_many(
        self, requests: Sequence[OhlcvRequest], *, use: str = CANDLES
    ) -> list[OhlcvRows | Exception]:
        return self.run(self.afetch_ohlcv_many(requests, use=use))

    # -- shutdown -----------------------------------------------------------------------------------

    async def _aclose(self) -> None:
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)

    def close(self) -> None:
        """Cancel what is still running, close the clients and stop the loop thread; idempotent."""
        if self._on_loop_thread():
            raise RuntimeError("close the gateway from another thread than its loop")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._pid != os.getpid():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._aclose(), loop).result(timeout=_CLOSE_TIMEOUT_S)
        except (TimeoutError, concurrent.futures.CancelledError, RuntimeError) as exc:
            # Closing must not fail the caller's shutdown: ``_aclose`` collects the clients' own
            # errors, so what is left is a close that outlived its timeout, was cancelled, or found
            # the loop already stopped (RuntimeError).
            self._log.warning("exchange_gateway_close_failed", error=repr(exc))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_CLOSE_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()

    def __enter__(self) -> ExchangeGateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def make_gateway(settings: Settings, redis_client: Any | None = None) -> ExchangeGateway:
    """The process's gateway: its limiter shared host-wide through Redis when a client is given
    (the Celery workers), in-process otherwise (the embedded run, the CLI)."""
    return ExchangeGateway(
        settings.exchange,
        make_limiter(settings.exchange, redis_client),
        max_parallel=settings.ml_integration.max_parallel,
    )
