"""Build the configured candle source and resolve the symbol universe."""

from __future__ import annotations

from core.settings import Settings
from data.sources.base import CandleSource


def make_source(settings: Settings) -> CandleSource:
    if settings.data.source == "exchange":
        from data.sources.exchange import ExchangeCandleSource

        return ExchangeCandleSource(settings.exchange)
    from data.sources.simulator import SimulatedMarket

    return SimulatedMarket.from_settings(settings.simulator)


def resolve_symbols(settings: Settings, source: CandleSource, override: list[str] | None = None) -> list[str]:
    """Explicit symbols win; otherwise the first ``data.universe_size`` symbols the source lists."""
    if override:
        return override
    if settings.data.symbols:
        return list(settings.data.symbols)
    return source.list_symbols()[: settings.data.universe_size]
