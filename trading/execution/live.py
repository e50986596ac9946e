"""Live execution: decided orders go to the exchange after their commit, and the exchange is the truth.

Talking to the exchange is ``trading.live.LiveBroker``'s job; this module decides what to send
and how the answers change the local rows:

* ``submit``: one order at most once. Its attempt is counted and committed before the request
  leaves; an order that may have reached the exchange (an earlier attempt, an unknown outcome) is
  looked up by its client order id before anything is sent again.
* ``_apply_exchange_order``: the local order (and its position) brought to the exchange's state:
  filled (a position opens or closes), cancelled / expired / rejected, or resting (``submitted``).
* ``reconcile``, in steps: look up the orders that may be on the exchange (``_refresh_order``)
  and lapse those it never got once their signal expired (``_lapse``); then, under one lock,
  compare positions per symbol (``_match_position``: gone there -> closed here; ``_adopt``: there
  only -> recorded here) and take cash and equity from the exchange's wallet.
* ``flatten``: reconcile, then, under the lock, cancel the entries nobody sent and decide one
  reduce-only exit per open position (a deterministic client id: a rerun finds it); after the commit
  each is sent like any order (``submit``), and a last reconciliation takes the exchange's word.
  Rounds repeat while positions appear (an entry that was in flight when the flatten began).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from core.errors import BrokerUnavailableError, OrderRejectedError
from core.logging import get_logger
from core.settings import Settings
from core.timegrid import iso_minute
from trading.accounts import AccountLock, Txn
from trading.execution.broker import FlattenedPosition, FlattenReport, TickReport
from trading.intents import exit_client_id
from trading.ledger import INTENTS, ORDERS, POSITIONS, Account, Ledger, OrderRow, PositionRow
from trading.live import DuplicateOrderError, ExchangeOrder, ExchangePosition, LiveBroker, OutcomeUnknownError
from trading.paper import EXIT_REASONS, FLATTEN, gross_pnl
from trading.risk import Rejection, reason
from trading.sizing import MarketRules
from trading.states import (
    ACCEPTED,
    ACTIVE_ORDER,
    CANCELLED,
    CLOSED,
    CLOSING,
    ENTRY,
    EXIT,
    EXPIRED,
    FILLED,
    OPEN,
    REJECTED,
    SUBMITTED,
    TERMINAL_ORDER,
    UNKNOWN,
)

__all__ = ["CLOSED_ON_EXCHANGE", "LiveExecution"]

log = get_logger(__name__)

CLOSED_ON_EXCHANGE = "closed_on_exchange"
# An order in one of these has not been seen on the exchange: it may be sent (again, after a look-up).
SENDABLE = (ACCEPTED, UNKNOWN)
# ccxt's statuses of an order that ended without a fill.
ENDED_UNFILLED = ("canceled", "expired", "rejected")
FLATTENED = "cancelled by a flatten"
# A flatten's rounds at most: another starts only when a position appeared during the previous one.
FLATTEN_ROUNDS = 3


class LiveExecution:
    """The ``ExecutionBroker`` of the live account."""

    order_status = ACCEPTED
    intent_status = ACCEPTED
    # A live order's state also changes outside the account lock (attempts, unknown outcomes).
    keeps_book = False

    def __init__(self, settings: Settings, broker: LiveBroker, lock: AccountLock) -> None:
        self.settings = settings
        self.broker = broker
        self.lock = lock
        self.engine = lock.engine
        self.clock = lock.clock
        self._reconciled = False

    def market_rules(self, symbol: str) -> MarketRules:
        return self.broker.market_rules(symbol)

    def before_decisions(self) -> None:
        if not self._reconciled:
            # Once per process before the first live decision: cash, positions and open orders as
            # the exchange has them (a worker may have died mid-order).
            self.reconcile()

    def catch_up(self, txn: Txn, minute_ms: int) -> None:
        """Nothing to do: the exchange fills live orders; ``reconcile`` brings its fills here."""

    def after_commit(self, intent_id: int, status: str, why: str | None) -> tuple[str, str | None]:  # noqa: ARG002
        # Also on a redelivery: an order left accepted or unknown is looked up, then sent.
        self._submit_orders_of(intent_id)
        return self._intent_state(intent_id)

    def tick(self, minute_ms: int) -> TickReport:
        self.reconcile()
        return TickReport(iso_minute(minute_ms), self.lock.name)

    # -- sending -----------------------------------------------------------------------------------

    def _intent_state(self, intent_id: int) -> tuple[str, str | None]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(INTENTS.c.status, INTENTS.c.reason).where(INTENTS.c.id == intent_id)
            ).one()
            return str(row.status), row.reason

    def _submit_orders_of(self, intent_id: int) -> None:
        with self.engine.connect() as conn:
            ids = conn.execute(
                select(ORDERS.c.id)
                .where(ORDERS.c.intent_id == intent_id, ORDERS.c.status.in_(SENDABLE))
                .order_by(ORDERS.c.id)
            ).scalars()
            pending = [int(i) for i in ids]
        for order_id in pending:
            self.submit(order_id)

    def submit(self, order_id: int) -> str:
        """Send one live order at most once: an earlier attempt is looked up before any resend."""
        row, tried_before = self._claim(order_id)
        if row.status not in SENDABLE:
            return str(row.status)
        if tried_before:
            found = self.broker.find(row.symbol, row.client_order_id)
            if found is not None:
                return self._apply_exchange_order(order_id, found)
        try:
            placed = self.broker.create(
                symbol=row.symbol,
                side=row.side,
                qty=row.qty,
                client_order_id=row.client_order_id,
                stop_loss=row.stop_loss if row.purpose == ENTRY else None,
                take_profit=row.take_profit if row.purpose == ENTRY else None,
                reduce_only=row.purpose == EXIT,
            )
        except (OutcomeUnknownError, DuplicateOrderError) as exc:
            return self._in_doubt(order_id, row, exc)
        except OrderRejectedError as exc:
            return self._rejected(order_id, row, exc)
        # The create answer carries ids only; the order's state comes from the look-up.
        found = self.broker.find(row.symbol, row.client_order_id)
        return self._apply_exchange_order(order_id, found or placed)

    def _claim(self, order_id: int) -> tuple[Any, bool]:
        """The order's row, and whether an earlier attempt may have reached the exchange; a sendable
        order's attempt is counted (and committed) before the request leaves: a crash after this
        makes the next attempt look the order up first."""
        with self.engine.begin() as conn:
            row = conn.execute(select(ORDERS).where(ORDERS.c.id == order_id).with_for_update()).one()
            if row.status not in SENDABLE:
                return row, False
            conn.execute(
                update(ORDERS)
                .where(ORDERS.c.id == order_id)
                .values(attempts=row.attempts + 1, updated_at=self.clock())
            )
            return row, row.attempts > 0 or row.status == UNKNOWN

    def _in_doubt(self, order_id: int, row: Any, exc: BrokerUnavailableError) -> str:
        """The create call's outcome is unknown (or the id exists there): look it up, never resend."""
        log.warning(
            "order outcome unknown: reconciling by client order id",
            client_order_id=row.client_order_id,
            error=str(exc),
        )
        # An exit keeps its reason: it is the exit's kind (the position's exit reason when it fills).
        self._mark(order_id, UNKNOWN, row.reason if row.purpose == EXIT else str(exc))
        found = self.broker.find(row.symbol, row.client_order_id)
        if found is None:
            raise BrokerUnavailableError(
                f"order {row.client_order_id}: {exc}; not found on the exchange yet, "
                "the retry looks it up again before any resend"
            ) from None
        return self._apply_exchange_order(order_id, found)

    def _rejected(self, order_id: int, row: Any, exc: OrderRejectedError) -> str:
        why = reason(Rejection.EXCHANGE, str(exc))
        with self.lock.locked() as txn:
            orders = txn.ledger.load_orders(ORDERS.c.id == order_id)
            positions = _positions_of(txn.ledger, orders[0])
            txn.ledger.finish(orders[0], REJECTED, why, positions)
        log.warning("order rejected by the exchange", client_order_id=row.client_order_id, reason=why)
        return REJECTED

    def _mark(self, order_id: int, status: str, why: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(ORDERS)
                .where(ORDERS.c.id == order_id)
                .values(status=status, reason=why, updated_at=self.clock())
            )

    # -- the exchange's answer ---------------------------------------------------------------------

    def _apply_exchange_order(self, order_id: int, found: ExchangeOrder) -> str:
        """Bring the local order (and its position) to what the exchange says."""
        with self.lock.locked() as txn:
            ledger, acct = txn.ledger, txn.acct
            [order] = ledger.load_orders(ORDERS.c.id == order_id)
            if order.status in TERMINAL_ORDER and not _filled_after_local_end(order, found):
                return order.status
            order.exchange_order_id, order.dirty = found.id or order.exchange_order_id, True
            now = self.clock()
            if found.status == "closed" and found.filled > 0:
                _record_fill(ledger, order, found, now)
            elif found.status in ENDED_UNFILLED:
                status = REJECTED if found.status == "rejected" else CANCELLED
                ledger.finish(order, status, f"exchange: order {found.status}", _positions_of(ledger, order))
            else:
                order.status = SUBMITTED
                if order.purpose == ENTRY:  # an exit's reason is its kind (the position's exit reason)
                    order.reason = None
                    ledger.set_intent(order.intent_id, SUBMITTED, None)
            ledger.write()
            unrealised = txn.conn.execute(
                select(func.coalesce(func.sum(POSITIONS.c.unrealised_pnl), 0.0)).where(
                    POSITIONS.c.account == acct.name, POSITIONS.c.status.in_((OPEN, CLOSING))
                )
            ).scalar_one()
            acct.equity = acct.balance + float(unrealised)
            return order.status

    # -- reconciling -------------------------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Bring local orders, positions and cash to what the exchange holds.

        Run when an orders worker starts, before a process's first decision and at every
        per-minute step. Orders that may have reached the exchange are looked up by client order
        id; positions are compared per symbol (the exchange nets them): gone on the exchange (its
        stop-loss or take-profit, or a manual close) -> closed here; unknown here -> recorded as
        an external position, which counts towards the limits.
        """
        self.lock.ensure()
        report = {"orders_updated": 0, "orders_lapsed": 0, "positions_closed": 0, "positions_adopted": 0}
        in_doubt = self._orders_in_doubt()
        now = self.clock()
        for order in in_doubt:
            self._refresh_order(order, now, report)
        self._sync_positions_and_cash(now, report)
        self._reconciled = True
        if any(report.values()):
            log.info("reconciled with the exchange", **report)
        return report

    def _orders_in_doubt(self) -> list[Any]:
        """Orders sent at least once and not known to have ended: the exchange may have changed them."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(
                        ORDERS.c.id, ORDERS.c.symbol, ORDERS.c.client_order_id, ORDERS.c.valid_until
                    ).where(
                        ORDERS.c.account == self.lock.name,
                        ORDERS.c.status.in_((UNKNOWN, SUBMITTED, ACCEPTED)),
                        ORDERS.c.attempts > 0,
                    )
                ).all()
            )

    def _refresh_order(self, order: Any, now: datetime, report: dict[str, int]) -> None:
        found = self.broker.find(order.symbol, order.client_order_id)
        if found is not None:
            self._apply_exchange_order(order.id, found)
            report["orders_updated"] += 1
        elif order.valid_until is not None and order.valid_until < now and self._lapse(order.id):
            report["orders_lapsed"] += 1

    def _lapse(self, order_id: int) -> bool:
        """An order the exchange does not have and whose signal expired: it will never be sent."""
        with self.lock.locked() as txn:
            [row] = txn.ledger.load_orders(ORDERS.c.id == order_id)
            if row.status not in SENDABLE:
                return False
            why = "never reached the exchange before the signal expired"
            txn.ledger.finish(row, EXPIRED, why, _positions_of(txn.ledger, row))
            return True

    def _sync_positions_and_cash(self, now: datetime, report: dict[str, int]) -> None:
        fetched_at = self.clock()
        held = {p.symbol: p for p in self.broker.positions()}
        wallet, equity = self.broker.balance(self.settings.trading.currency)
        with self.lock.locked() as txn:
            acct, ledger = txn.acct, txn.ledger
            local = ledger.load_positions(
                POSITIONS.c.account == acct.name, POSITIONS.c.status.in_((OPEN, CLOSING))
            )
            for pos in local:
                if pos.opened_at >= fetched_at:
                    continue  # filled after the exchange was asked: its answer cannot know it
                if _match_position(pos, held.get(pos.symbol), now):
                    report["positions_closed"] += 1
            known = {p.symbol for p in local if p.status != CLOSED}
            for symbol, remote in held.items():
                if symbol not in known:
                    _adopt(ledger, acct.name, remote, now)
                    report["positions_adopted"] += 1
            acct.balance = wallet
            acct.equity = equity

    # -- flattening --------------------------------------------------------------------------------

    def flatten(self, symbols: Collection[str] | None, halt: Callable[[], None]) -> FlattenReport:
        """Close the open positions with reduce-only market orders (see the module docstring).

        The halt comes first. Raises ``BrokerUnavailableError`` when the exchange cannot be reached
        for the first reconciliation (nothing was sent). An exit whose outcome stays unknown leaves
        its position ``closing``, with the error in the report; running the flatten again looks that
        exit up by its client order id before anything is sent again.
        """
        halt()
        report = FlattenReport(self.lock.name)
        problems: dict[int, str] = {}
        targets: list[int] = []
        self.reconcile()
        for _ in range(FLATTEN_ROUNDS):
            exits, cancelled = self._decide_exits(symbols)
            report.cancelled_orders += cancelled
            fresh = [pid for pid, _ in exits if pid not in targets]
            if not fresh:
                break  # what is left was sent already: its problem is in ``problems``
            targets += fresh
            for position_id, order_id in exits:
                problem = self._send_exit(order_id)
                if problem is None:
                    problems.pop(position_id, None)
                else:
                    problems[position_id] = problem
            try:
                # The exchange's word on what the exits did; it may also adopt a position that was
                # opened meanwhile (an entry on the wire when the flatten began): the next round.
                self.reconcile()
            except BrokerUnavailableError as exc:
                log.warning("flatten: the reconciliation after the exits failed", error=str(exc))
                break
            if problems:
                break
        report.positions = self._flattened(targets, problems)
        log.info("live flatten", **report.to_json())
        return report

    def _send_exit(self, order_id: int) -> str | None:
        """Send one flatten exit; what went wrong, if anything (a rejection's reason, or why the
        outcome is unknown: the rerun looks the order up)."""
        try:
            status = self.submit(order_id)
        except BrokerUnavailableError as exc:
            return str(exc)
        if status != REJECTED:
            return None
        with self.engine.connect() as conn:
            why = conn.execute(select(ORDERS.c.reason).where(ORDERS.c.id == order_id)).scalar_one()
        return str(why or "rejected by the exchange")

    def _decide_exits(self, symbols: Collection[str] | None) -> tuple[list[tuple[int, int]], int]:
        """Under the lock: cancel the entries never sent, and one exit order per open position
        (an exit already on its way is kept). ``([(position id, exit order id)], cancelled)``."""
        now = self.clock()
        with self.lock.locked() as txn:
            acct, ledger = txn.acct, txn.ledger
            held = [
                p
                for p in ledger.load_positions(
                    POSITIONS.c.account == acct.name, POSITIONS.c.status.in_((OPEN, CLOSING))
                )
                if symbols is None or p.symbol in symbols
            ]
            active = ledger.load_orders(ORDERS.c.account == acct.name, ORDERS.c.status.in_(ACTIVE_ORDER))
            cancelled = 0
            for order in active:
                # Reconciled just now: an entry still sendable is not on the exchange; it never will be.
                sendable = order.purpose == ENTRY and order.status in SENDABLE
                if sendable and (symbols is None or order.symbol in symbols):
                    ledger.finish(order, CANCELLED, FLATTENED)
                    cancelled += 1
            on_way = {o.position_id: o for o in active if o.purpose == EXIT}
            decided: list[tuple[PositionRow, OrderRow]] = []
            for pos in held:
                exit_order = on_way.get(pos.id)
                if exit_order is None:
                    exit_order = self._new_flatten_exit(ledger, acct, pos, now)
                decided.append((pos, exit_order))
            ledger.write()
        return [(int(p.id or 0), int(o.id or 0)) for p, o in decided], cancelled

    def _new_flatten_exit(self, ledger: Ledger, acct: Account, pos: PositionRow, now: datetime) -> OrderRow:
        # Each try at closing a position (one before may have been rejected) has its own client id.
        tries = ledger.conn.execute(
            select(func.count()).where(ORDERS.c.position_id == pos.id, ORDERS.c.purpose == EXIT)
        ).scalar_one()
        client_id = exit_client_id(acct.name, pos.id, FLATTEN, tries)
        order = ledger.new_exit(pos, client_id, FLATTEN, pos.mark_price, now)
        order.status = ACCEPTED
        pos.status, pos.dirty = CLOSING, True
        return order

    def _flattened(self, position_ids: list[int], problems: dict[int, str]) -> list[FlattenedPosition]:
        if not position_ids:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(POSITIONS).where(POSITIONS.c.id.in_(position_ids)).order_by(POSITIONS.c.id)
            ).all()
        return [
            FlattenedPosition.of(r, problem=None if r.status == CLOSED else problems.get(r.id)) for r in rows
        ]


def _filled_after_local_end(order: OrderRow, found: ExchangeOrder) -> bool:
    """An order ended here (lapsed, or cancelled by a flatten) that the exchange filled all the same:
    a request in flight when it was ended. The exchange is the truth: its fill is recorded."""
    if order.status not in (CANCELLED, EXPIRED) or found.status != "closed" or found.filled <= 0:
        return False
    log.warning(
        "an order ended here was filled on the exchange: recording the fill",
        client_order_id=order.client_order_id,
        local_status=order.status,
    )
    return True


def _positions_of(ledger: Ledger, order: OrderRow) -> list[PositionRow]:
    if order.position_id is None:
        return []
    return ledger.load_positions(POSITIONS.c.id == order.position_id)


def _record_fill(ledger: Ledger, order: OrderRow, found: ExchangeOrder, now: datetime) -> None:
    """A filled order: an entry opens its position, an exit closes its own."""
    price = found.average or order.ref_price
    if order.purpose == ENTRY:
        ledger.fill_entry(order, found.filled, price, found.fee, now, None)
        return
    held = [p for p in _positions_of(ledger, order) if p.status != CLOSED]
    if held:
        kind = order.reason if order.reason in EXIT_REASONS else EXIT
        ledger.fill_exit(order, held[0], price, found.fee, kind, now, None)
    else:
        order.status, order.filled_qty, order.avg_price = FILLED, found.filled, price


def _match_position(pos: PositionRow, remote: ExchangePosition | None, now: datetime) -> bool:
    """A local position against the exchange's for its symbol; ``True`` when it was closed there."""
    pos.dirty = True
    if remote is None or remote.side != pos.side:
        gross = gross_pnl(pos.side, pos.qty, pos.entry_price, pos.mark_price)
        pos.status, pos.closed_at, pos.exit_price = CLOSED, now, pos.mark_price
        pos.exit_reason, pos.unrealised_pnl = CLOSED_ON_EXCHANGE, 0.0
        pos.realised_pnl += gross
        return True
    pos.mark_price = remote.mark_price
    pos.unrealised_pnl = gross_pnl(pos.side, pos.qty, pos.entry_price, remote.mark_price)
    return False


def _adopt(ledger: Ledger, account: str, remote: ExchangePosition, now: datetime) -> None:
    """A position on the exchange only: recorded, so that it counts towards the limits."""
    ledger.add_position(
        PositionRow(
            account=account,
            symbol=remote.symbol,
            side=remote.side,
            qty=remote.qty,
            entry_price=remote.entry_price,
            stop_loss=remote.stop_loss,
            take_profit=remote.take_profit,
            status=OPEN,
            entry_order_id=None,
            signal_minute=now,
            opened_at=now,
            mark_price=remote.mark_price,
            unrealised_pnl=remote.unrealised_pnl,
            realised_pnl=0.0,
            fees=0.0,
            checked_through_ms=0,
        )
    )
    log.warning("position found on the exchange only: adopted", symbol=remote.symbol, side=remote.side)
