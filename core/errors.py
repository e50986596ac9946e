"""Exception hierarchy (after freqtrade): temporary errors may be retried, permanent ones never."""

from __future__ import annotations


class MLSignalsError(Exception):
    """Base of every error this project raises on purpose; the CLI prints it without a traceback."""


class TemporaryError(MLSignalsError):
    """The same call may succeed later (network, rate limit, exchange busy)."""


class PermanentError(MLSignalsError):
    """Retrying the same call cannot help (bad symbol, bad data, bad configuration)."""


class ConfigError(PermanentError):
    """The settings are inconsistent or incomplete."""


class UnknownSymbolError(PermanentError):
    """The source does not list this symbol (typo, delisted, wrong market type)."""

    def __init__(self, symbol: str, source: str, detail: str = "") -> None:
        self.symbol = symbol
        self.source = source
        msg = f"unknown symbol {symbol!r} on source {source!r}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class SourceError(PermanentError):
    """The candle source refused a request for a reason other than the symbol."""


class SourceUnavailableError(TemporaryError):
    """The candle source stayed unreachable after the configured retries."""


class DataValidationError(PermanentError):
    """Candles broke a validation rule; ``rule`` is the machine-readable reason."""

    def __init__(self, rule: str, message: str, symbol: str | None = None) -> None:
        self.rule = rule
        self.symbol = symbol
        prefix = f"{symbol}: " if symbol else ""
        super().__init__(f"{prefix}[{rule}] {message}")


class FileFormatError(PermanentError):
    """An imported file lacks the documented columns or cannot be parsed."""


class BrokerUnavailableError(TemporaryError):
    """The broker could not be reached, or an order's outcome is not known yet: retry (reconciling)."""


class OrderRejectedError(PermanentError):
    """The exchange refused an order (insufficient funds, invalid order, unknown symbol)."""
