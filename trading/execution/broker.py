"""The interface between the trader's decisions and a market: ``ExecutionBroker``.

``trading.executor.Trader`` decides (risk, sizing, the ledger, the account lock, batches) the same
way for both modes and asks its execution broker for the steps that differ:

=====================  =========================================  ======================================
step                   ``PaperExecution`` (``paper.py``)          ``LiveExecution`` (``live.py``)
=====================  =========================================  ======================================
before the decisions   nothing                                    reconcile once per process
in the lock, before    bring the account up to the intent's       nothing
an intent's decision   minute (fills, stops on closed candles)
a decided entry        order ``pending``, intent ``submitted``    order and intent ``accepted``
after the commit       nothing                                    send each new order (look it up first)
per-minute step        fills and stops up to the minute           reconcile
market rules           ``trading.paper_market(s)``                the exchange's markets
=====================  =========================================  ======================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from trading.accounts import Txn
from trading.sizing import MarketRules

__all__ = ["ExecutionBroker", "TickReport"]


@dataclass
class TickReport:
    """What one per-minute step did (paper; a live step reconciles and reports nothing here)."""

    minute: str
    account: str
    skipped: bool = False
    fills: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    expired: int = 0
    cancelled: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "minute": self.minute,
            "account": self.account,
            "skipped": self.skipped,
            "fills": self.fills,
            "exits": dict(self.exits),
            "expired": self.expired,
            "cancelled": self.cancelled,
        }


class ExecutionBroker(Protocol):
    """How the decided orders of one account reach a market (paper or live)."""

    @property
    def order_status(self) -> str:
        """The status of a new order: decided, sent nowhere yet (a later opposite signal may drop it)."""
        ...

    @property
    def intent_status(self) -> str:
        """The status of an intent whose entry order was just decided."""
        ...

    @property
    def keeps_book(self) -> bool:
        """Whether a batch's positions and entries stay valid after its commit while the account's
        version is unchanged (live: no, an order's state also changes outside the lock)."""
        ...

    def market_rules(self, symbol: str) -> MarketRules:
        """Lot size and minimums of ``symbol`` (raises ``OrderRejectedError`` for an unknown one)."""
        ...

    def before_decisions(self) -> None:
        """Called before each intent's decision, outside the lock."""
        ...

    def catch_up(self, txn: Txn, minute_ms: int) -> None:
        """Inside the lock, before an intent of ``minute_ms`` is decided; sets ``txn.book`` to ``None``
        when the account changed (the batch reads it again)."""
        ...

    def after_commit(self, intent_id: int, status: str, why: str | None) -> tuple[str, str | None]:
        """After the decision's commit (also for a redelivery): the intent's status and reason now."""
        ...

    def tick(self, minute_ms: int) -> TickReport:
        """The per-minute step."""
        ...

    def reconcile(self) -> dict[str, int]:
        """Bring local orders, positions and cash to what the exchange holds (live only)."""
        ...

    def submit(self, order_id: int) -> str:
        """Send one decided order at most once (live only); returns its status."""
        ...
