"""Build the live candle feed for the configured source, and the stream service around it."""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import ConfigError
from core.settings import Settings
from data.sources.base import CandleSource
from data.store import CandleStore
from data.stream.feed import CandleFeed
from data.stream.service import CandleStreamService
from data.stream.watermark import WatermarkStore


def check_streamable(settings: Settings) -> None:
    """Refuse, before anything connects anywhere, a source that has no live feed."""
    if settings.data.source == "exchange" and settings.exchange.id != "bybit":
        raise ConfigError(
            f"no WebSocket candle feed for exchange {settings.exchange.id!r} (only bybit): run without "
            "`mlsignals data stream`; feature tasks then fetch the newest candles over REST"
        )


def make_feed(settings: Settings, source: CandleSource) -> CandleFeed:
    """The simulator's own minute feed, or the exchange's WebSocket klines (Bybit)."""
    check_streamable(settings)
    if settings.data.source == "simulator":
        from data.stream.simulated import SimulatedFeed

        return SimulatedFeed(source)
    from data.stream.bybit import BybitKlineFeed

    return BybitKlineFeed.from_settings(settings.exchange, settings.stream)


def make_stream_service(
    settings: Settings,
    store: CandleStore,
    source: CandleSource,
    watermarks: WatermarkStore,
    symbols: Sequence[str],
) -> CandleStreamService:
    return CandleStreamService(
        feed=make_feed(settings, source),
        store=store,
        source=source,
        watermarks=watermarks,
        settings=settings,
        symbols=symbols,
    )
