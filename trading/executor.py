"""The executor: order intents become orders, positions and PnL (docs/TRADING.md).

``Trader`` decides the same way for both modes (risk checks, sizing, the ledger, the account lock,
batches); what differs between paper and live is its execution broker's
(``trading.execution``: ``PaperExecution``, ``LiveExecution``). Every intent goes through the same
steps:

1. the broker's ``before_decisions``: live only, once per process, reconcile with the exchange
   (a worker may have died mid-order);
2. the account row is locked (``trading.accounts.AccountLock``: ``SELECT … FOR UPDATE`` on
   PostgreSQL; SQLite has no row locks, so a first write takes its database-wide write lock), so
   concurrent order workers decide one after another on the state the previous decision left;
3. the intent is stored under its unique client order id; an id already stored was decided
   before (a duplicate or a redelivery) and is not decided again;
4. the broker's ``catch_up``: paper only, the account is first brought up to the intent's minute
   (``PaperExecution.advance``: pending fills, stop-loss and take-profit on the candles that closed
   meanwhile);
5. signal checks, the opposite signal's closes, entry checks, sizing (the broker's market rules),
   exposure checks, then the entry order in the broker's first status (paper ``pending``, live
   ``accepted``); steps 3 to 5 commit together, and nothing leaves the process before that commit;
6. the broker's ``after_commit``: live only, each order the intent created is sent to the exchange,
   looked up by its client order id first whenever an earlier attempt may have reached it.

The threads of one worker process decide in batches (``_combined``): one lock and one commit for
every intent waiting at that moment, decided strictly one after another. The per-minute step
(``tick``) is the broker's: paper fills and stops, live reconciliation.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from core.errors import OrderRejectedError
from core.logging import get_logger
from core.settings import Settings
from core.timegrid import dt_to_ms
from data.store import CandleStore
from trading.accounts import (
    LIVE,
    PAPER,
    AccountLock,
    Txn,
    ensure_account,
    halt_state,
    lock_account,
    midnight,
    set_halted,
    utcnow,
)
from trading.book import Book
from trading.execution import ExecutionBroker, FlattenReport, TickReport, make_execution
from trading.execution.live import CLOSED_ON_EXCHANGE
from trading.intake import record_intent, record_intents
from trading.intents import OrderIntentMessage, exit_client_id
from trading.ledger import INTENTS, Account
from trading.live import LiveBroker
from trading.paper import LONG, OPPOSITE_SIGNAL, SHORT, entry_side, exit_side
from trading.risk import Rejection, RiskLimits, check_entry, check_exposure, check_signal, reason
from trading.sizing import MarketRules, SizingRules, size_position
from trading.states import ENTRY, EXIT, RECEIVED, REJECTED

__all__ = [
    "CLOSED_ON_EXCHANGE",
    "LIVE",
    "MAX_BATCH",
    "PAPER",
    "ExecutionResult",
    "FlattenReport",
    "TickReport",
    "Trader",
    "ensure_account",
    "exit_client_id",
    "lock_account",
    "midnight",
    "set_halted",
    "utcnow",
]

log = get_logger(__name__)

# Intents decided in one transaction at most: bounds how long one commit keeps the others waiting.
MAX_BATCH = 64

# (created, intent id, intent status, reason)
Decision = tuple[bool, int, str, str | None]


@dataclass
class _IntentState:
    id: int
    status: str
    reason: str | None


@dataclass
class _Waiting:
    intent: OrderIntentMessage
    finished: bool = False
    result: Decision | None = None
    error: BaseException | None = None

    def outcome(self) -> Decision:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass(frozen=True)
class ExecutionResult:
    client_order_id: str
    created: bool  # False: this client order id was recorded before (a duplicate or a redelivery)
    status: str
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "client_order_id": self.client_order_id,
            "created": self.created,
            "status": self.status,
            "reason": self.reason,
            "finished_at": utcnow().timestamp(),
        }


class Trader:
    """Executes intents and runs the per-minute step for the account of ``trading.mode``."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        store: CandleStore,
        exchange_label: str,
        *,
        broker: LiveBroker | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.store = store
        self.exchange_label = exchange_label
        self.account = settings.trading.mode
        self.broker = broker
        self.clock = clock
        self.lock = AccountLock(settings, engine, self.account, clock)
        # What differs between paper and live (raises ConfigError: live without a broker).
        self.execution: ExecutionBroker = make_execution(store, exchange_label, self.lock, broker)
        self.limits = RiskLimits.from_settings(settings)
        t = settings.trading
        self.sizing = SizingRules(
            risk_per_trade=t.risk_per_trade,
            confidence_threshold=self.limits.min_confidence,
            min_scale=t.confidence_min_scale,
            max_leverage=t.max_leverage,
        )
        # The book the last batch of this process left, valid while the account's version is the
        # one that batch committed (when the broker keeps books: a live order's state also changes
        # outside the lock).
        self._cached: tuple[int, Book] | None = None
        self._combine = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leading = False

    # -- entry points ------------------------------------------------------------------------------

    def execute(self, intent: OrderIntentMessage) -> ExecutionResult:
        self.execution.before_decisions()
        created, intent_id, status, why = self._combined(intent)
        status, why = self.execution.after_commit(intent_id, status, why)
        log.info(
            "intent executed",
            client_order_id=intent.client_order_id,
            symbol=intent.symbol,
            created=created,
            status=status,
            reason=why,
        )
        return ExecutionResult(intent.client_order_id, created, status, why)

    def tick(self, minute_ms: int) -> TickReport:
        """Paper: fills, stop-loss and take-profit up to ``minute_ms``; live: reconcile."""
        self.ensure_account()
        return self.execution.tick(minute_ms)

    def reconcile(self) -> dict[str, int]:
        """Live: bring local orders, positions and cash to what the exchange holds (``LiveExecution``);
        paper: ``ConfigError``."""
        return self.execution.reconcile()

    def submit(self, order_id: int) -> str:
        """Live: send one decided order at most once; paper: ``ConfigError``."""
        return self.execution.submit(order_id)

    def flatten(self, symbols: Collection[str] | None = None, *, halt_reason: str | None) -> FlattenReport:
        """Close the open positions (of ``symbols``; all when ``None``) at market now.

        With a ``halt_reason`` the kill switch goes on, unless it is on already (its reason, the
        quality breaker's say, is kept): no entry is decided after the flatten. When is the broker's
        call: paper after its step up to now (an entry whose candle closed before the flatten fills
        as it would have), live before anything is asked of the exchange. Paper: closed at the marks;
        live: reduce-only market orders (``LiveExecution.flatten``).
        """
        self.ensure_account()

        def halt() -> None:
            if halt_reason is not None and not halt_state(self.engine, self.settings)[0]:
                set_halted(self.engine, self.settings, True, halt_reason)

        return self.execution.flatten(None if symbols is None else frozenset(symbols), halt)

    def ensure_account(self) -> None:
        self.lock.ensure()

    # -- decisions, in batches ---------------------------------------------------------------------

    def _combined(self, intent: OrderIntentMessage) -> Decision:
        """Decide ``intent`` in a batch with whatever other threads of this process have waiting.

        Decisions are serialised by the account lock, and each transaction ends with a commit (a
        WAL flush) while holding it: one at a time, that flush bounds the throughput. The first
        thread to arrive leads: it takes the waiting intents, decides them one after another in
        one transaction under one lock, commits once, and hands each thread its outcome; the
        others wait meanwhile. Decisions stay strictly sequential, in arrival order.
        """
        item = _Waiting(intent)
        with self._combine:
            self._queue.append(item)
            while not item.finished and self._leading:
                self._combine.wait()
            if item.finished:
                return item.outcome()
            self._leading = True
        try:
            while not item.finished:
                with self._combine:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                if not batch:  # taken by a leader that was stopped mid-batch
                    self._finish_waiting(item, error=RuntimeError("the deciding thread stopped"))
                    break
                try:
                    self._decide_batch(batch)
                except BaseException as exc:
                    for waiting in batch:
                        if not waiting.finished:
                            self._finish_waiting(waiting, error=exc)
                    raise
                with self._combine:
                    self._combine.notify_all()
        finally:
            with self._combine:
                self._leading = False
                self._combine.notify_all()  # a waiting thread leads the intents left over
        return item.outcome()

    def _decide_batch(self, batch: list[_Waiting]) -> None:
        cached, self._cached = self._cached, None
        try:
            with self.lock.locked() as txn:
                if cached is not None and cached[0] == txn.version_seen:
                    txn.book = cached[1]  # nobody else has written since this process's last batch
                outcomes = self._decide_all(txn, [w.intent for w in batch])
            if txn.book is not None and self.execution.keeps_book:
                self._cached = (txn.acct.version, txn.book)
        except Exception:  # noqa: BLE001 (handed to the waiting threads, which raise it)
            if len(batch) == 1:
                self._finish_waiting(batch[0], error=self._keep_trace(batch[0].intent))
                return
            # One intent's failure must not fail the others: decide each on its own.
            for waiting in batch:
                self._decide_batch([waiting])
            return
        for waiting, outcome in zip(batch, outcomes, strict=True):
            self._finish_waiting(waiting, outcome=outcome)

    def _finish_waiting(
        self, waiting: _Waiting, outcome: Decision | None = None, error: BaseException | None = None
    ) -> None:
        with self._combine:
            waiting.result, waiting.error, waiting.finished = outcome, error, True

    def _keep_trace(self, intent: OrderIntentMessage) -> BaseException:
        """The decision failed: store the intent alone (left ``received``) so a retry finds it."""
        error = sys.exc_info()[1] or RuntimeError("decision failed")
        try:
            record_intent(self.engine, intent)
        except Exception:  # the database itself is the problem; the task's retry will tell
            log.exception("intent not recorded", client_order_id=intent.client_order_id)
        return error

    def _decide_all(self, txn: Txn, intents: Sequence[OrderIntentMessage]) -> list[Decision]:
        conn, acct = txn.conn, txn.acct
        new = record_intents(conn, intents)
        rows = {cid: _IntentState(iid, RECEIVED, None) for cid, iid in new.items()}
        known = list({i.client_order_id for i in intents} - set(new))
        if known:  # duplicates and redeliveries: what was decided before
            stmt = select(INTENTS.c.id, INTENTS.c.client_order_id, INTENTS.c.status, INTENTS.c.reason)
            for r in conn.execute(stmt.where(INTENTS.c.client_order_id.in_(known))):
                rows[r.client_order_id] = _IntentState(int(r.id), r.status, r.reason)
        symbols = sorted({i.symbol for i in intents})
        if txn.book is not None:
            txn.book.know(conn, acct.name, symbols)
        out: list[Decision] = []
        seen: set[str] = set()
        for intent in intents:
            row = rows[intent.client_order_id]
            if row.status == RECEIVED:
                self.execution.catch_up(txn, dt_to_ms(intent.minute))  # paper: fills up to its minute
                if txn.book is None:
                    txn.book = Book.load(conn, acct.name, symbols)
                row.status, row.reason = self._decide(acct, row.id, intent, txn.book)
                txn.book.set_intent(row.id, row.status, row.reason)
            created = intent.client_order_id in new and intent.client_order_id not in seen
            seen.add(intent.client_order_id)
            out.append((created, row.id, row.status, row.reason))
        if txn.book is not None:
            txn.book.write(conn, self.clock())
        return out

    def _decide(
        self, acct: Account, intent_id: int, intent: OrderIntentMessage, book: Book
    ) -> tuple[str, str | None]:
        """The intent's new status and reason; its orders and closes go into ``book``."""
        rejection = check_signal(
            confidence=intent.confidence,
            valid_until=intent.expires_at,
            now=self.clock(),
            halted=acct.halted,
            halt_reason=acct.halt_reason,
            limits=self.limits,
        )
        if rejection is not None:
            return REJECTED, rejection
        side = LONG if intent.direction == "LONG" else SHORT
        closed = self._close_opposite(acct, intent_id, intent, side, book)
        snapshot = book.snapshot(
            equity=acct.equity,
            day_start_equity=acct.day_start_equity,
            halted=acct.halted,
            halt_reason=acct.halt_reason,
            symbol=intent.symbol,
        )
        rejection = check_entry(minute=intent.minute, snapshot=snapshot, limits=self.limits)
        qty = 0.0
        if rejection is None:
            try:
                market = self._market_rules(intent.symbol)
            except OrderRejectedError as exc:
                market, rejection = None, reason(Rejection.EXCHANGE, str(exc))
            if market is not None:
                size = size_position(
                    equity=acct.equity,
                    entry=intent.entry_price,
                    stop_loss=intent.stop_loss,
                    confidence=intent.confidence,
                    rules=self.sizing,
                    market=market,
                )
                qty = size.qty
                rejection = size.reason or check_exposure(
                    notional=size.notional, snapshot=snapshot, limits=self.limits
                )
        if rejection is not None:
            note = f" (closed {closed} opposite position{'s' if closed > 1 else ''})" if closed else ""
            return REJECTED, rejection + note
        book.add_entry(
            self._order_values(
                acct,
                client_order_id=intent.client_order_id,
                intent_id=intent_id,
                intent=intent,
                side=entry_side(side),
                purpose=ENTRY,
                qty=qty,
                stop_loss=intent.stop_loss,
                take_profit=intent.take_profit,
                valid_until=intent.expires_at,
            )
        )
        return self.execution.intent_status, None

    def _order_values(
        self,
        acct: Account,
        *,
        client_order_id: str,
        intent_id: int,
        intent: OrderIntentMessage,
        side: str,
        purpose: str,
        qty: float,
        stop_loss: float | None = None,
        take_profit: float | None = None,
        valid_until: datetime | None = None,
        position_id: int | None = None,
        why: str | None = None,
    ) -> dict[str, Any]:
        """A new order's column values (every new order has the same keys: one bulk insert)."""
        return {
            "client_order_id": client_order_id,
            "intent_id": intent_id,
            "account": acct.name,
            "symbol": intent.symbol,
            "side": side,
            "purpose": purpose,
            "qty": qty,
            "ref_price": intent.entry_price,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
            "status": self.execution.order_status,
            "reason": why,
            "signal_minute": intent.minute,
            "valid_until": valid_until,
            "position_id": position_id,
            "attempts": 0,
            "filled_qty": 0.0,
            "fee": 0.0,
            "updated_at": self.clock(),
        }

    def _close_opposite(
        self, acct: Account, intent_id: int, intent: OrderIntentMessage, side: str, book: Book
    ) -> int:
        """Exit orders for the symbol's positions on the other side; drop its unsent opposite entries."""
        other = SHORT if side == LONG else LONG
        positions = book.open_positions(intent.symbol, other)
        for pos in positions:
            book.close(
                pos,
                self._order_values(
                    acct,
                    client_order_id=exit_client_id(intent.client_order_id, pos.id),
                    intent_id=intent_id,
                    intent=intent,
                    side=exit_side(pos.side),
                    purpose=EXIT,
                    qty=pos.qty,
                    position_id=pos.id,
                    why=OPPOSITE_SIGNAL,
                ),
            )
        # A live entry already sent cannot simply be dropped; one nobody has sent can.
        for entry in book.unsent_entries(intent.symbol, entry_side(other), self.execution.order_status):
            book.cancel(entry, "superseded by an opposite signal")
        return len(positions)

    def _market_rules(self, symbol: str) -> MarketRules:
        return self.execution.market_rules(symbol)
