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
flatten                the step, the halt, then every close at    the halt, reconcile, reduce-only
                       its mark in one transaction                market orders, reconcile
market rules           ``trading.paper_market(s)``                the exchange's markets
=====================  =========================================  ======================================
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from trading.accounts import Txn
from trading.sizing import MarketRules
from trading.states import CLOSED

__all__ = ["ExecutionBroker", "FlattenReport", "FlattenedPosition", "TickReport"]


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


@dataclass(frozen=True)
class FlattenedPosition:
    """One position a flatten went for, as it stands afterwards."""

    symbol: str
    side: str
    qty: float
    status: str  # closed, or still closing / open when its exit could not be completed
    exit_price: float | None
    exit_reason: str | None
    realised_pnl: float  # net of the entry's and the exit's fees
    # Paper: the close of the candle the position was marked at (the exit's reference price).
    marked_at: datetime | None = None
    problem: str | None = None  # why it is not closed (the exchange's error, for a rerun)

    @classmethod
    def of(
        cls, position: Any, *, marked_at: datetime | None = None, problem: str | None = None
    ) -> FlattenedPosition:
        """From a position (a ledger row or a database row): its state after the flatten."""
        return cls(
            symbol=position.symbol,
            side=position.side,
            qty=position.qty,
            status=position.status,
            exit_price=position.exit_price,
            exit_reason=position.exit_reason,
            realised_pnl=position.realised_pnl,
            marked_at=marked_at,
            problem=problem,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "side": self.side,
            "qty": self.qty,
            "status": self.status,
            "exit_price": self.exit_price,
            "exit_reason": self.exit_reason,
            "realised_pnl": self.realised_pnl,
            "marked_at": None if self.marked_at is None else self.marked_at.isoformat(),
            "problem": self.problem,
        }


@dataclass
class FlattenReport:
    """What ``flatten`` did: every position it went for, and the orders it cancelled."""

    account: str
    positions: list[FlattenedPosition] = field(default_factory=list)
    cancelled_orders: int = 0

    @property
    def not_closed(self) -> int:
        return sum(1 for p in self.positions if p.status != CLOSED)

    @property
    def complete(self) -> bool:
        return self.not_closed == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "complete": self.complete,
            "cancelled_orders": self.cancelled_orders,
            "positions": [p.to_json() for p in self.positions],
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

    def flatten(self, symbols: Collection[str] | None, halt: Callable[[], None]) -> FlattenReport:
        """Close the open positions (of ``symbols``; all when ``None``) at market now and cancel the
        entries not sent yet; ``halt`` turns the kill switch on, also when the flatten then fails.
        Safe to run again after a failure: it never closes anything twice."""
        ...
