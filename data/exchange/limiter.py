"""The gateway's request budget: ``requests_per_second`` sustained, ``burst`` at once.

The algorithm is ``limits``' sliding-window counter: at most ``burst`` requests per window of
``burst / requests_per_second`` seconds, the previous window's count weighted by how much of it is
still inside the sliding window. A quiet limiter lets ``burst`` through at once; under load the rate
is ``requests_per_second``, and when the window divides a second (the default: 20 per 250 ms) no
second holds more than ``requests_per_second + burst``. The same strategy runs on two
backends behind one interface (``RateLimiter``):

* in-process (``MemoryStorage``): one budget per process and exchange, shared by every limiter
  object of that process; thread-safe, and awaitable from asyncio without blocking the loop.
* host-wide (``RedisStorage``): every worker process on the host shares one budget per exchange id.
  Its Lua scripts run on the Redis server, so a hit is atomic across processes.

A caller that finds the window full sleeps until the window can free a slot (``get_window_stats``'
reset time), then tries again: never a busy spin.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any, ClassVar

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from core.errors import SourceUnavailableError
from core.settings import ExchangeSettings

REDIS_KEY_PREFIX = "mlsignals:ratelimit"
_NAMESPACE = "exchange"
# A hit lost to a concurrent caller while the stats still showed room: look again soon, not at once.
_MIN_WAIT_S = 0.001


def window_ms(requests_per_second: float, burst: int) -> int:
    """The window holding ``burst`` requests at ``requests_per_second``, in whole milliseconds.

    Rounded up (never faster than configured), and to a value whose seconds times 1000 is exact in
    floating point: limits' Redis script computes the window in ms that way and hands it to ``PX``,
    which refuses a fraction.
    """
    ms = max(1, math.ceil(burst / requests_per_second * 1000))
    while (ms / 1000) * 1000 != ms:
        ms += 1
    return ms


class _Window(RateLimitItemPerSecond):
    """``amount`` per ``window_ms`` milliseconds: limits' own items stop at whole seconds."""

    __slots__ = ["window_ms"]

    def __init__(self, amount: int, window_ms: int, namespace: str) -> None:
        super().__init__(amount, 1, namespace)
        self.window_ms = window_ms

    def get_expiry(self) -> float:  # type: ignore[override]  # limits' scripts accept fractions
        return self.window_ms / 1000


class RateLimiter(ABC):
    """A request budget keyed by exchange id; ``InProcessRateLimiter`` or ``RedisRateLimiter``."""

    backend: ClassVar[str]

    def __init__(self, exchange_id: str, requests_per_second: float, burst: int) -> None:
        self.exchange_id = exchange_id
        self.requests_per_second = requests_per_second
        self.burst = burst
        ms = window_ms(requests_per_second, burst)
        self.window_s = ms / 1000
        self._item = _Window(burst, ms, _NAMESPACE)
        self._key = (exchange_id, f"{ms}ms")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.exchange_id}, {self.requests_per_second:g}/s, burst {self.burst})"
        )

    @abstractmethod
    def _strategy(self) -> tuple[SlidingWindowCounterRateLimiter, threading.Lock | None]:
        """The strategy over this backend's storage, and a lock to hold around each use (or None)."""

    def try_acquire(self) -> float:
        """Take a slot: 0.0 when taken, otherwise the seconds until one may free (nothing taken)."""
        strategy, lock = self._strategy()
        try:
            with lock or nullcontext():
                if strategy.hit(self._item, *self._key):
                    return 0.0
                stats = strategy.get_window_stats(self._item, *self._key)
        except StorageError as exc:
            raise SourceUnavailableError(
                f"{self.exchange_id} request limiter ({self.backend}) is unreachable: {exc}"
            ) from exc
        if stats.remaining > 0:
            return _MIN_WAIT_S
        return min(max(stats.reset_time - time.time(), _MIN_WAIT_S), self.window_s)

    def acquire(self) -> float:
        """Block the calling thread until a slot is taken; returns the seconds waited."""
        waited = 0.0
        while (wait := self.try_acquire()) > 0:
            time.sleep(wait)
            waited += wait
        return waited

    async def acquire_async(self) -> float:
        """Await a slot without blocking the event loop; returns the seconds waited.

        The hit itself is synchronous: a lock held for microseconds, or one round trip to the local
        Redis, both shorter than handing it to a thread. (While Redis is unreachable the loop waits
        for the client's connect timeout, and the call fails as ``SourceUnavailableError``.)
        """
        waited = 0.0
        while (wait := self.try_acquire()) > 0:
            await asyncio.sleep(wait)
            waited += wait
        return waited


class _MemoryBudget:
    """A ``MemoryStorage`` and the lock around its use; a forked child starts its own.

    The lock: MemoryStorage updates its counters under per-key locks that it drops and recreates
    while another thread may hold the old one, so one lock around each hit keeps the count exact.
    A child must neither inherit the parent's counts nor a lock some parent thread held at the fork.
    """

    def __init__(self) -> None:
        self._pid = -1
        self._strategy: SlidingWindowCounterRateLimiter | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[SlidingWindowCounterRateLimiter, threading.Lock]:
        if self._strategy is None or self._pid != os.getpid():
            self._lock = threading.Lock()
            # Created on first use: MemoryStorage starts a timer thread.
            self._strategy = SlidingWindowCounterRateLimiter(MemoryStorage())
            self._pid = os.getpid()
        return self._strategy, self._lock


_SHARED_BUDGET = _MemoryBudget()
_SHARED_BUDGET_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    global _SHARED_BUDGET_LOCK
    _SHARED_BUDGET_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


class InProcessRateLimiter(RateLimiter):
    """One budget per process and exchange, shared by every such limiter of the process (the
    gateway's source and the live broker alike); ``private`` gives this object its own (tests)."""

    backend = "memory"

    def __init__(
        self, exchange_id: str, requests_per_second: float, burst: int, *, private: bool = False
    ) -> None:
        super().__init__(exchange_id, requests_per_second, burst)
        self._own = _MemoryBudget() if private else None
        if self._own is not None:
            self._own.current()  # created now, so that two first callers cannot each make one

    @classmethod
    def from_settings(cls, settings: ExchangeSettings, *, private: bool = False) -> InProcessRateLimiter:
        return cls(settings.id, settings.requests_per_second, settings.request_burst, private=private)

    def _strategy(self) -> tuple[SlidingWindowCounterRateLimiter, threading.Lock | None]:
        if self._own is not None:
            return self._own.current()
        with _SHARED_BUDGET_LOCK:
            return _SHARED_BUDGET.current()


class RedisRateLimiter(RateLimiter):
    """The host's budget for an exchange id in the Redis that ``redis_client`` talks to.

    Every limiter with the same key prefix, exchange id and budget counts against the same keys, in
    any process; limits' Lua scripts make each hit atomic on the server. The client's connection
    pool is reused (redis-py renews it in a forked child).
    """

    backend = "redis"

    def __init__(
        self,
        exchange_id: str,
        requests_per_second: float,
        burst: int,
        redis_client: Any,
        *,
        key_prefix: str = REDIS_KEY_PREFIX,
    ) -> None:
        super().__init__(exchange_id, requests_per_second, burst)
        storage = RedisStorage(
            "redis://",
            connection_pool=redis_client.connection_pool,
            key_prefix=key_prefix,
            wrap_exceptions=True,
        )
        self._limiter = SlidingWindowCounterRateLimiter(storage)

    @classmethod
    def from_settings(
        cls, settings: ExchangeSettings, redis_client: Any, *, key_prefix: str = REDIS_KEY_PREFIX
    ) -> RedisRateLimiter:
        return cls(
            settings.id,
            settings.requests_per_second,
            settings.request_burst,
            redis_client,
            key_prefix=key_prefix,
        )

    def _strategy(self) -> tuple[SlidingWindowCounterRateLimiter, threading.Lock | None]:
        return self._limiter, None


def make_limiter(settings: ExchangeSettings, redis_client: Any | None = None) -> RateLimiter:
    """Host-wide through Redis when a client is given, in-process otherwise (the embedded run)."""
    if redis_client is not None:
        return RedisRateLimiter.from_settings(settings, redis_client)
    return InProcessRateLimiter.from_settings(settings)
