"""Build the configured candle source and resolve the symbol universe."""

from __future__ import annotations

from typing import Any

from core.settings import Settings
from data.sources.base import CandleSource


def make_source(settings: Settings, redis_client: Any | None = None) -> CandleSource:
    """The configured source. An exchange source gets its own gateway, whose request limiter is
    shared by every process on the host through ``redis_client`` when one is given."""
    if settings.data.source == "exchange":
        from data.sources.exchange import ExchangeCandleSource

        return ExchangeCandleSource.from_settings(settings, redis_client)
    from data.sources.simulator import SimulatedMarket

    return SimulatedMarket.from_settings(settings.simulator)


def source_name(settings: Settings) -> str:
    """The configured source's ``name`` (the exchange label candles are stored under), without
    building the source."""
    if settings.data.source == "exchange":
        return settings.exchange.id
    from data.sources.simulator import SimulatedMarket

    return SimulatedMarket.name


def resolve_symbols(settings: Settings, source: CandleSource, override: list[str] | None = None) -> list[str]:
    """Explicit symbols win; otherwise the first ``data.universe_size`` symbols the source lists."""
    if override:
        return override
    if settings.data.symbols:
        return list(settings.data.symbols)
    return source.list_symbols()[: settings.data.universe_size]
