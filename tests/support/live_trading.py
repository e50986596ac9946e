"""A live ``Trader`` against the local Bybit look-alike (tests/fakes/exchange_server.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from core.settings import Settings
from data.sources.exchange import build_exchange
from tests.fakes.exchange_server import ORDER_CREATE_PATH, FakeExchangeServer
from tests.support.trading import TRADING, Clock, intent, make_trader, minute
from trading.credentials import load_credentials
from trading.executor import Trader
from trading.intents import OrderIntentMessage
from trading.live import LiveBroker

# Reads are retried inside a call (data.exchange.retry); a look-up that fails this often is an outage.
READ_RETRIES = 2
UNREACHABLE = READ_RETRIES + 1
API_KEY = "LIVEKEY-5f1c9a77e3"
API_SECRET = "LIVESECRET-0b6e2d4418"


def live_settings(
    server: FakeExchangeServer, url: str, *, timeout_ms: int = 400, **trading: object
) -> Settings:
    """Live trading on ``url`` against ``server``; a request unanswered after ``timeout_ms`` is a
    ``RequestTimeout`` (short by default: the fault tests wait for it)."""
    return Settings(
        database_url=url,
        # No client-side throttling against the local server: the tests would mostly sleep.
        exchange={
            "api_urls": {"all": server.base_url},
            "timeout_ms": timeout_ms,
            "enable_rate_limit": False,
            "max_retries": READ_RETRIES,
            "retry_base_delay_s": 0.02,
        },
        trading={
            **TRADING,
            "mode": "live",
            "api_key": API_KEY,
            "api_secret": API_SECRET,
            **trading,
        },
    )


def live_trader(
    server: FakeExchangeServer, url: str, clock: Clock | None = None, *, timeout_ms: int = 400
) -> Trader:
    """A live trader on ``url`` whose broker talks to ``server``; close its ``broker`` after use."""
    settings = live_settings(server, url, timeout_ms=timeout_ms)
    broker = LiveBroker(settings, load_credentials(settings.trading))
    return make_trader(url, clock or Clock(minute(0) + timedelta(seconds=5)), broker, settings)


def by_hand(trader: Trader) -> Any:
    """A ccxt client on the same exchange account, for what someone does behind the service's back."""
    exchange = build_exchange(trader.settings.exchange)
    exchange.apiKey, exchange.secret = API_KEY, API_SECRET
    return exchange


def at_market(
    server: FakeExchangeServer, symbol: str, at: int, direction: str = "LONG"
) -> OrderIntentMessage:
    """An intent priced like the fake market: stop 2 % away, target 4 %."""
    price = server.last_price(symbol.split("/")[0] + "USDT")
    sign = 1 if direction == "LONG" else -1
    return intent(
        symbol, at, direction, entry=price, stop=price * (1 - 0.02 * sign), target=price * (1 + 0.04 * sign)
    )


def creates(server: FakeExchangeServer) -> list[dict[str, object]]:
    return [r.json() for r in server.requests(ORDER_CREATE_PATH)]
