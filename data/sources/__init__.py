"""Candle sources behind one interface: the ccxt exchange, the market simulator, file import."""

from data.sources.base import CandleSource

__all__ = ["CandleSource"]
