"""ccxt clients built from ``ExchangeSettings``: market type, timeout, URL overrides, request limiter.

A client built with a limiter waits for it before every REST request. The hook sits on ccxt's
``fetch2`` (``request`` -> ``fetch2`` -> ``sign`` -> ``fetch``): every request passes it once,
including the ones ccxt makes on its own (market pages, account look-ups before a private call), and
it runs before signing, so a wait never ages a signed timestamp. ccxt's own throttle is then off: it
knows neither the exchange's real budget nor the other processes on the host.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ccxt
import ccxt.async_support as ccxt_async

from core.errors import ConfigError
from core.settings import ExchangeSettings

if TYPE_CHECKING:
    from data.exchange.limiter import RateLimiter

ALL_API_GROUPS = "all"

# By default ccxt's bybit loads spot, linear, inverse and six option books (about 11 requests);
# only the category holding the configured market type is needed.
_BYBIT_CATEGORIES: dict[str, list[str]] = {"swap": ["linear"], "future": ["linear"], "spot": ["spot"]}


def resolve_api_urls(current: object, overrides: Mapping[str, str], exchange_id: str) -> object:
    """Return the replacement for ccxt's ``urls['api']`` given ``ExchangeSettings.api_urls``.

    The rule: every REST group of ``urls['api']`` (bybit: spot, futures, v2, public, private) is
    redirected, so that no call can reach the real exchange while others go to a test server.
    A group named in ``overrides`` takes that URL; any other group takes ``overrides['all']``, or,
    when ``all`` is absent and every given URL is the same, that URL. So ``{"public": base}`` and
    ``{"all": base}`` both send everything to ``base``. A key that is neither ``all`` nor a group,
    or a group left without a URL, is a ``ConfigError``.
    """
    distinct = set(overrides.values())
    fallback = overrides.get(ALL_API_GROUPS) or (next(iter(distinct)) if len(distinct) == 1 else None)
    if isinstance(current, str):
        if fallback is None:
            raise ConfigError(f"{exchange_id} has a single API URL; give exchange.api_urls one URL")
        return fallback
    if not isinstance(current, Mapping):
        raise ConfigError(f"{exchange_id}: ccxt urls['api'] has an unexpected shape {type(current)}")
    unknown = sorted(set(overrides) - set(current) - {ALL_API_GROUPS})
    if unknown:
        raise ConfigError(
            f"exchange.api_urls keys {unknown} are not {exchange_id} API groups {sorted(current)} or 'all'"
        )
    resolved: dict[str, object] = {}
    for group in current:
        url = overrides.get(group, fallback)
        if url is None:
            raise ConfigError(
                f"exchange.api_urls leaves {exchange_id} API group {group!r} on the real exchange; "
                "add an 'all' key"
            )
        resolved[group] = url.rstrip("/")
    return resolved


def check_exchange_id(exchange_id: str) -> None:
    if exchange_id not in ccxt.exchanges or not hasattr(ccxt_async, exchange_id):
        raise ConfigError(f"exchange.id {exchange_id!r} is not a ccxt exchange")


def _config(settings: ExchangeSettings, *, throttle: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"defaultType": settings.market_type}
    if settings.id == "bybit":
        options["fetchMarkets"] = {"types": _BYBIT_CATEGORIES[settings.market_type]}
    return {"enableRateLimit": throttle, "timeout": settings.timeout_ms, "options": options}


def _redirect(exchange: Any, settings: ExchangeSettings) -> Any:
    if settings.api_urls:
        exchange.urls["api"] = resolve_api_urls(exchange.urls.get("api"), settings.api_urls, settings.id)
    return exchange


def build_exchange(settings: ExchangeSettings, *, limiter: RateLimiter | None = None) -> Any:
    """A synchronous ccxt client; with ``limiter`` every request first waits for it (blocking)."""
    check_exchange_id(settings.id)
    throttle = settings.enable_rate_limit if limiter is None else False
    exchange = _redirect(getattr(ccxt, settings.id)(_config(settings, throttle=throttle)), settings)
    if limiter is not None:
        request = exchange.fetch2

        def limited_fetch2(*args: Any, **kwargs: Any) -> Any:
            limiter.acquire()
            return request(*args, **kwargs)

        exchange.fetch2 = limited_fetch2
    return exchange


def build_async_exchange(
    settings: ExchangeSettings,
    *,
    limiter: RateLimiter | None = None,
    in_flight: asyncio.Semaphore | None = None,
) -> Any:
    """An asyncio ccxt client (``ccxt.async_support``), to be used on one event loop only.

    With ``limiter`` every request first awaits a slot; ``in_flight`` bounds the requests under way
    at once. The semaphore is taken before the limiter: a slot taken by a request that then waits
    for the semaphore would be spent early, and the exchange would see a bunch later.
    """
    check_exchange_id(settings.id)
    throttle = settings.enable_rate_limit if limiter is None else False
    exchange = _redirect(getattr(ccxt_async, settings.id)(_config(settings, throttle=throttle)), settings)
    if limiter is not None or in_flight is not None:
        request = exchange.fetch2

        async def limited_fetch2(*args: Any, **kwargs: Any) -> Any:
            if in_flight is None:
                if limiter is not None:
                    await limiter.acquire_async()
                return await request(*args, **kwargs)
            async with in_flight:
                if limiter is not None:
                    await limiter.acquire_async()
                return await request(*args, **kwargs)

        exchange.fetch2 = limited_fetch2
    return exchange
