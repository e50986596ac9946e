"""Build the executor for the configured mode (the live broker only when trading live)."""

from __future__ import annotations

from core.settings import Settings
from data.store import CandleStore
from trading.credentials import load_credentials
from trading.executor import LIVE, Trader
from trading.live import LiveBroker


def build_trader(settings: Settings, store: CandleStore, exchange_label: str) -> Trader:
    broker = None
    if settings.trading.mode == LIVE:
        broker = LiveBroker(settings, load_credentials(settings.trading))
    return Trader(settings, store.engine, store, exchange_label, broker=broker)
