"""Closed 1-minute candles from a ccxt exchange (Bybit USDT perpetuals by default).

Errors follow ``core.errors``: ccxt's ``NetworkError`` family (timeouts, rate limits, exchange
unavailable, HTTP 5xx) is retried with exponential backoff and ends as ``SourceUnavailableError``;
``BadSymbol`` becomes ``UnknownSymbolError`` and any other ccxt error ``SourceError``, neither retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import ccxt
import pandas as pd

from core.errors import ConfigError, SourceError, SourceUnavailableError, UnknownSymbolError
from core.logging import get_logger
from core.settings import ExchangeSettings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data.candles import candles_from_rows, empty_candles

T = TypeVar("T")

TIMEFRAME = "1m"
ALL_API_GROUPS = "all"
# Keeps a long outage from turning one retry into minutes of silence.
MAX_RETRY_DELAY_S = 30.0
# ccxt error bodies can be whole HTML pages.
_MAX_ERROR_CHARS = 300

# By default ccxt's bybit loads spot, linear, inverse and six option books (about 11 requests);
# only the category holding the configured market type is needed.
_BYBIT_CATEGORIES: dict[str, list[str]] = {"swap": ["linear"], "future": ["linear"], "spot": ["spot"]}
_CONTRACT_SETTLE = "USDT"


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


def build_exchange(settings: ExchangeSettings) -> Any:
    """A configured ccxt exchange instance (rate limiter, timeout, market type, URL overrides)."""
    if settings.id not in ccxt.exchanges:
        raise ConfigError(f"exchange.id {settings.id!r} is not a ccxt exchange")
    options: dict[str, Any] = {"defaultType": settings.market_type}
    if settings.id == "bybit":
        options["fetchMarkets"] = {"types": _BYBIT_CATEGORIES[settings.market_type]}
    exchange = getattr(ccxt, settings.id)(
        {
            "enableRateLimit": settings.enable_rate_limit,
            "timeout": settings.timeout_ms,
            "options": options,
        }
    )
    if settings.api_urls:
        exchange.urls["api"] = resolve_api_urls(exchange.urls.get("api"), settings.api_urls, settings.id)
    return exchange


def _is_wanted_market(market: Mapping[str, Any], market_type: str) -> bool:
    # ccxt reports ``active`` as None when the exchange does not say; only an explicit False excludes.
    if market.get("active") is False or market.get("type") != market_type:
        return False
    if market_type == "spot":
        return True
    return bool(market.get("linear")) and market.get("settle") == _CONTRACT_SETTLE


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "…"


class ExchangeCandleSource:
    """``CandleSource`` over ccxt; ``name`` is the ccxt exchange id (``bybit``).

    ``sleep`` and ``clock`` (ms since the epoch) are injectable so tests neither wait nor race the
    minute boundary. The source is not thread-safe: use one per worker process.
    """

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.name: str = settings.id
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        self._exchange = build_exchange(settings)
        self._markets: dict[str, dict[str, Any]] | None = None
        self._log = get_logger(__name__).bind(source=self.name)

    def close(self) -> None:
        self._exchange.close()

    def __enter__(self) -> ExchangeCandleSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def list_symbols(self) -> list[str]:
        markets = self._load_markets()
        market_type = self._settings.market_type
        return sorted(s for s, m in markets.items() if _is_wanted_market(m, market_type))

    def fetch(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        # The forming candle opens at the current minute; it and anything later are never closed.
        end = min(end_ms, floor_minute(self._clock()))
        if start_ms >= end:
            return empty_candles()
        if symbol not in self._load_markets():
            raise UnknownSymbolError(symbol, self.name, "not among the exchange's markets")
        rows: dict[int, list[Any]] = {}
        since = start_ms
        pages = 0
        while since < end:
            page: list[list[Any]] = self._call(
                "fetch_ohlcv",
                partial(
                    self._exchange.fetch_ohlcv,
                    symbol,
                    TIMEFRAME,
                    since=since,
                    limit=self._settings.page_limit,
                ),
                symbol=symbol,
            )
            pages += 1
            if not page:
                break
            newest = max(int(row[0]) for row in page)
            for row in page:
                self._keep(rows, row, start_ms, end, symbol)
            if newest < since:
                # The exchange ignored ``since``; asking again would return the same page forever.
                self._log.warning("exchange_page_no_progress", symbol=symbol, since=since, newest=newest)
                break
            since = newest + MINUTE_MS
        self._log.debug(
            "exchange_fetch", symbol=symbol, start_ms=start_ms, end_ms=end, pages=pages, candles=len(rows)
        )
        return candles_from_rows([rows[ts] for ts in sorted(rows)])

    def _keep(self, rows: dict[int, list[Any]], row: list[Any], start_ms: int, end: int, symbol: str) -> None:
        ts = int(row[0])
        if ts < start_ms or ts >= end:
            return
        previous = rows.get(ts)
        if previous is not None and previous != row:
            # Pages overlap only if the exchange moved under us; the later answer is the fresher one.
            self._log.warning("exchange_candle_changed", symbol=symbol, open_time=ts, old=previous, new=row)
        rows[ts] = [ts, *row[1:]]

    def _load_markets(self) -> dict[str, dict[str, Any]]:
        if self._markets is None:
            markets: dict[str, dict[str, Any]] = self._call("load_markets", self._exchange.load_markets)
            self._markets = markets
            self._log.info("exchange_markets_loaded", markets=len(markets))
        return self._markets

    def _call(self, op: str, fn: Callable[[], T], symbol: str | None = None) -> T:
        """Run one ccxt call, retrying only temporary failures."""
        retries = self._settings.max_retries
        attempt = 0
        while True:
            try:
                return fn()
            except ccxt.BadSymbol as exc:
                if symbol is None:
                    raise SourceError(f"{self.name} {op} refused: {_short(exc)}") from exc
                raise UnknownSymbolError(symbol, self.name, _short(exc)) from exc
            except ccxt.NetworkError as exc:
                if attempt >= retries:
                    self._log.error(
                        "exchange_unavailable", op=op, symbol=symbol, attempts=attempt + 1, error=_short(exc)
                    )
                    target = f" {symbol}" if symbol else ""
                    raise SourceUnavailableError(
                        f"{self.name} {op}{target} still failing after {retries} retries "
                        f"({attempt + 1} attempts): {_short(exc)}"
                    ) from exc
                delay = min(self._settings.retry_base_delay_s * 2**attempt, MAX_RETRY_DELAY_S)
                self._log.warning(
                    "exchange_retry",
                    op=op,
                    symbol=symbol,
                    attempt=attempt + 1,
                    delay_s=delay,
                    error=_short(exc),
                )
                self._sleep(delay)
                attempt += 1
            except ccxt.BaseError as exc:
                raise SourceError(f"{self.name} {op} refused: {_short(exc)}") from exc
