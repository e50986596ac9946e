"""The one retry policy for exchange calls (tenacity): exponential backoff with jitter, and only for
failures that a later attempt can fix.

ccxt's ``NetworkError`` family is retried: ``RequestTimeout``, ``ExchangeNotAvailable`` (HTTP 5xx),
``RateLimitExceeded`` and ``DDoSProtection`` (HTTP 429/403, Bybit retCode 10006), ``InvalidNonce``.
Everything else is final at once. For a candle source (``source_error``): ``BadSymbol`` becomes
``UnknownSymbolError``, any other ccxt error ``SourceError``, and a retryable failure that outlived
its retries ``SourceUnavailableError`` (a ``TemporaryError``: the caller may come back later).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import ccxt
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from core.errors import SourceError, SourceUnavailableError, UnknownSymbolError
from core.logging import get_logger
from core.settings import ExchangeSettings

T = TypeVar("T")

log = get_logger(__name__)

# ccxt error bodies can be whole HTML pages.
_MAX_ERROR_CHARS = 300

SyncSleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]


def short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


def is_retryable(exc: BaseException) -> bool:
    """A failure that may go away by itself: the request may not even have reached the exchange."""
    return isinstance(exc, ccxt.NetworkError)


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``max_retries`` retries; the n-th waits between half and all of
    ``base_delay_s * 2**(n-1)``, never more than ``max_delay_s``."""

    max_retries: int
    base_delay_s: float
    max_delay_s: float

    @classmethod
    def from_settings(cls, settings: ExchangeSettings) -> RetryPolicy:
        return cls(settings.max_retries, settings.retry_base_delay_s, settings.retry_max_delay_s)

    def wait(self) -> wait_base:
        # "Equal jitter": half of each delay is fixed, half random. The fixed half keeps the backoff
        # that a rate-limited caller owes the exchange; the random half spreads the callers that
        # failed together (one rate-limit answer often hits every thread at once).
        half_base, half_cap = self.base_delay_s / 2, self.max_delay_s / 2
        return wait_exponential(multiplier=half_base, max=half_cap) + wait_random_exponential(
            multiplier=half_base, max=half_cap
        )

    def retrying(self, *, sleep: SyncSleep = time.sleep, **context: object) -> Retrying:
        """A fresh tenacity ``Retrying`` (one per call: they keep per-call state) that re-raises the
        last error; ``context`` (op, symbol, …) goes into each retry's log line."""
        return Retrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self.wait(),
            retry=retry_if_exception(is_retryable),
            sleep=sleep,
            before_sleep=_log_retry(context),
            reraise=True,
        )

    def async_retrying(self, *, sleep: AsyncSleep = asyncio.sleep, **context: object) -> AsyncRetrying:
        """``retrying`` for coroutines: the waits are awaited, the event loop keeps running."""
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self.wait(),
            retry=retry_if_exception(is_retryable),
            sleep=sleep,
            before_sleep=_log_retry(context),
            reraise=True,
        )


def _log_retry(context: dict[str, object]) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else None
        log.warning(
            "exchange_retry",
            **context,
            attempt=state.attempt_number,
            delay_s=None if delay is None else round(delay, 3),
            error=None if error is None else short(error),
        )

    return before_sleep


def source_error(
    exc: Exception, *, source: str, op: str, symbol: str | None, retries: int, attempts: int
) -> Exception:
    """The ``core.errors`` error that a failed candle-source call stands for (see the module doc)."""
    if isinstance(exc, ccxt.BadSymbol) and symbol is not None:
        return UnknownSymbolError(symbol, source, short(exc))
    if is_retryable(exc):
        target = f" {symbol}" if symbol else ""
        return SourceUnavailableError(
            f"{source} {op}{target} still failing after {retries} retries ({attempts} attempts): {short(exc)}"
        )
    if isinstance(exc, ccxt.BaseError):
        return SourceError(f"{source} {op} refused: {short(exc)}")
    return exc


def _raise_as_source_error(
    exc: Exception, policy: RetryPolicy, attempts: int, *, source: str, op: str, symbol: str | None
) -> NoReturn:
    mapped = source_error(
        exc, source=source, op=op, symbol=symbol, retries=policy.max_retries, attempts=attempts
    )
    if mapped is exc:
        raise exc
    if isinstance(mapped, SourceUnavailableError):
        log.error("exchange_unavailable", source=source, op=op, symbol=symbol, attempts=attempts)
    raise mapped from exc


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    source: str,
    op: str,
    symbol: str | None = None,
    sleep: SyncSleep = time.sleep,
) -> T:
    """``fn()`` under ``policy``, its failure translated by ``source_error``."""
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return fn()

    try:
        return policy.retrying(sleep=sleep, source=source, op=op, symbol=symbol)(attempt)
    except ccxt.BaseError as exc:  # only ccxt's errors are translated; anything else propagates as is
        _raise_as_source_error(exc, policy, attempts, source=source, op=op, symbol=symbol)


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    source: str,
    op: str,
    symbol: str | None = None,
    sleep: AsyncSleep = asyncio.sleep,
) -> T:
    """The coroutine that ``fn()`` makes, awaited under ``policy``; failures as in ``call_with_retry``."""
    attempts = 0

    async def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return await fn()

    try:
        result: T = await policy.async_retrying(sleep=sleep, source=source, op=op, symbol=symbol)(attempt)
        return result
    except ccxt.BaseError as exc:  # as in call_with_retry
        _raise_as_source_error(exc, policy, attempts, source=source, op=op, symbol=symbol)
