"""Build the executor for the configured mode (the live broker only when trading live)."""

from __future__ import annotations

from typing import Any

from core.settings import Settings
from data.exchange.limiter import make_limiter
from data.store import CandleStore
from trading.credentials import load_credentials
from trading.executor import LIVE, Trader
from trading.live import LiveBroker


def build_trader(
    settings: Settings, store: CandleStore, exchange_label: str, redis_client: Any | None = None
) -> Trader:
    broker = None
    if settings.trading.mode == LIVE:
        # The exchange's request budget is the host's: with Redis, shared with every candle fetch of
        # every process; without (the embedded run), this process's own.
        limiter = make_limiter(settings.exchange, redis_client)
        broker = LiveBroker(settings, load_credentials(settings.trading), limiter=limiter)
    return Trader(settings, store.engine, store, exchange_label, broker=broker)
