"""Closed 1-minute candles from a ccxt exchange (Bybit USDT perpetuals by default).

Every request goes through the process's exchange gateway (``data.exchange``): concurrent from any
number of threads, within the shared rate limit, under the one retry policy. Errors follow
``core.errors``: ccxt's ``NetworkError`` family (timeouts, rate limits, exchange unavailable, HTTP
5xx) is retried with backoff and jitter and ends as ``SourceUnavailableError``; ``BadSymbol``
becomes ``UnknownSymbolError`` and any other ccxt error ``SourceError``, neither retried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from core.errors import UnknownSymbolError
from core.logging import get_logger
from core.settings import ExchangeSettings, Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data.candles import candles_from_rows, empty_candles
from data.exchange.client import build_exchange, resolve_api_urls
from data.exchange.gateway import CANDLES, ExchangeGateway, make_gateway
from data.exchange.limiter import InProcessRateLimiter

# Re-exported: callers built clients from here before the gateway existed.
__all__ = ["ExchangeCandleSource", "build_exchange", "resolve_api_urls"]

TIMEFRAME = "1m"
_CONTRACT_SETTLE = "USDT"


def _is_wanted_market(market: Mapping[str, Any], market_type: str) -> bool:
    # ccxt reports ``active`` as None when the exchange does not say; only an explicit False excludes.
    if market.get("active") is False or market.get("type") != market_type:
        return False
    if market_type == "spot":
        return True
    return bool(market.get("linear")) and market.get("settle") == _CONTRACT_SETTLE


class ExchangeCandleSource:
    """``CandleSource`` over the exchange gateway; ``name`` is the ccxt exchange id (``bybit``).

    Thread-safe: ``data.ingest`` calls ``fetch`` from many threads at once, and the gateway runs
    their requests concurrently. Without a ``gateway`` one is built from ``settings`` (in-process
    limiter) and closed with the source; a given gateway belongs to its caller. ``sleep`` (the
    retry waits of that built gateway) and ``clock`` (ms since the epoch) are injectable so tests
    neither wait nor race the minute boundary.
    """

    def __init__(
        self,
        settings: ExchangeSettings,
        *,
        gateway: ExchangeGateway | None = None,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.name: str = settings.id
        self._settings = settings
        self._clock = clock
        self._owns_gateway = gateway is None
        self._gateway = (
            gateway
            if gateway is not None
            else ExchangeGateway(settings, InProcessRateLimiter.from_settings(settings), sleep=sleep)
        )
        # The gateway's markets, kept after the first load (the gateway loads them once): one
        # cross-thread round trip less per fetch. Threads racing here store the same object.
        self._markets: dict[str, Any] | None = None
        self._log = get_logger(__name__).bind(source=self.name)

    @classmethod
    def from_settings(cls, settings: Settings, redis_client: Any | None = None) -> ExchangeCandleSource:
        """A source with its own gateway (``make_gateway``: Redis-shared limiter given a client)."""
        source = cls(settings.exchange, gateway=make_gateway(settings, redis_client))
        source._owns_gateway = True
        return source

    @property
    def gateway(self) -> ExchangeGateway:
        return self._gateway

    def close(self) -> None:
        if self._owns_gateway:
            self._gateway.close()

    def __enter__(self) -> ExchangeCandleSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load_markets(self) -> dict[str, Any]:
        if self._markets is None:
            self._markets = self._gateway.load_markets()
        return self._markets

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
            page: list[list[Any]] = self._gateway.call(
                CANDLES, "fetch_ohlcv", symbol, TIMEFRAME, since=since, limit=self._settings.page_limit
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
