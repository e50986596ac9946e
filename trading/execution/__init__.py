"""Execution brokers: how the trader's decided orders reach a market, paper or live.

``broker.py`` holds the interface (``ExecutionBroker``) and the table of what differs between the
modes; ``paper.py`` fills orders on stored candles; ``live.py`` sends them to the exchange through
``trading.live.LiveBroker`` and reconciles with it. ``make_execution`` picks one for the account.
"""

from __future__ import annotations

from core.errors import ConfigError
from data.store import CandleStore
from trading.accounts import LIVE, AccountLock
from trading.execution.broker import ExecutionBroker, FlattenedPosition, FlattenReport, TickReport
from trading.execution.live import LiveExecution
from trading.execution.paper import PaperExecution
from trading.live import LiveBroker

__all__ = [
    "ExecutionBroker",
    "FlattenReport",
    "FlattenedPosition",
    "LiveExecution",
    "PaperExecution",
    "TickReport",
    "make_execution",
]


def make_execution(
    store: CandleStore, exchange_label: str, lock: AccountLock, broker: LiveBroker | None
) -> ExecutionBroker:
    """The execution broker of ``lock``'s account (``trading.mode``): the one place the mode decides."""
    if lock.name == LIVE:
        if broker is None:
            raise ConfigError("trading.mode is live but no live broker was configured")
        return LiveExecution(lock.settings, broker, lock)
    return PaperExecution(lock.settings, store, exchange_label, lock, markets=broker)
