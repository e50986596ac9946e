"""Paper execution: orders fill on the stored 1-minute candles (the fill model: ``trading.paper``).

A decided order waits as ``pending`` (its intent ``submitted``) until a step replays the candle it
fills on. The step (``advance``) runs at every per-minute tick and, inside the decision's lock,
before an intent of a later minute is decided (``catch_up``): pending entries and exits fill at
their candle's open, pending orders lapse at their signal's expiry (cancelled while the kill switch
is on), and every open position is checked for its stop-loss and take-profit on each new candle.

``flatten`` runs that step up to the current minute, then closes what is still open at its mark (the
close of the newest candle it was checked on), with slippage and the fee, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from core.errors import ConfigError
from core.logging import get_logger
from core.settings import Settings
from core.timegrid import MINUTE_MS, dt_to_ms, floor_minute, iso_minute, ms_to_dt
from data.store import CandleStore
from trading.accounts import AccountLock, Txn
from trading.execution.broker import FlattenedPosition, FlattenReport, TickReport
from trading.intents import exit_client_id
from trading.ledger import ACCOUNTS, ORDERS, POSITIONS, Account, Ledger, OrderRow, PositionRow
from trading.live import LiveBroker
from trading.paper import (
    FLATTEN,
    OPPOSITE_SIGNAL,
    Candle,
    FillModel,
    exit_fill_price,
    exit_on_candle,
    exit_side,
    gross_pnl,
)
from trading.sizing import MarketRules
from trading.states import CANCELLED, CLOSED, CLOSING, EXIT, EXPIRED, OPEN, PENDING, SUBMITTED

__all__ = ["PaperExecution"]

log = get_logger(__name__)

LAPSED = "no candle to fill on before the signal expired"
FLATTENED = "cancelled by a flatten"


class PaperExecution:
    """The ``ExecutionBroker`` of the paper account."""

    order_status = PENDING
    intent_status = SUBMITTED
    # Only this process's batches change the book between ticks: reusable while the version holds.
    keeps_book = True

    def __init__(
        self,
        settings: Settings,
        store: CandleStore,
        exchange_label: str,
        lock: AccountLock,
        *,
        markets: LiveBroker | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.exchange_label = exchange_label
        self.lock = lock
        # A live broker at hand (not the factory's paper setup): its exchange's lot sizes apply.
        self.markets = markets
        t = settings.trading
        self.fills = FillModel(t.fee_bps, t.slippage_bps)

    def market_rules(self, symbol: str) -> MarketRules:
        if self.markets is not None:
            return self.markets.market_rules(symbol)
        t = self.settings.trading
        rule = t.paper_markets.get(symbol, t.paper_market)
        return MarketRules(rule.qty_step, rule.min_qty, rule.min_notional)

    def before_decisions(self) -> None:
        """Nothing to do: the paper account has nothing outside this database."""

    def catch_up(self, txn: Txn, minute_ms: int) -> None:
        """Fills and exits on the candles before the intent's minute, so it sees current positions."""
        if txn.acct.ticked_to_ms >= minute_ms:
            return
        if txn.book is not None:
            txn.book.write(txn.conn, self.lock.clock())
        self.advance(txn, minute_ms)
        txn.ledger.write()
        txn.book = None  # fills and exits changed the account: read it again

    def after_commit(self, intent_id: int, status: str, why: str | None) -> tuple[str, str | None]:  # noqa: ARG002
        return status, why  # the order waits for its candle

    def tick(self, minute_ms: int) -> TickReport:
        with self.lock.engine.connect() as conn:
            done = conn.execute(
                select(ACCOUNTS.c.ticked_to_ms).where(ACCOUNTS.c.name == self.lock.name)
            ).scalar_one()
        if done >= minute_ms:  # idempotent per minute, without taking the lock
            return TickReport(iso_minute(minute_ms), self.lock.name, skipped=True)
        with self.lock.locked() as txn:
            return self.advance(txn, minute_ms)

    def reconcile(self) -> dict[str, int]:
        raise ConfigError("no live broker")

    def submit(self, order_id: int) -> str:  # noqa: ARG002
        raise ConfigError("no live broker")

    def flatten(self, symbols: Collection[str] | None, halt: Callable[[], None]) -> FlattenReport:
        """Close the open positions at their marks now (see the module docstring).

        First the step up to now (fills, stops and targets on the candles closed by now: an entry
        whose candle closed before the flatten fills as it would have), then the halt, then, in one
        transaction, pending orders of those symbols are cancelled (an entry must not open a
        position after the flatten, and a pending exit's position is closed here instead) and the
        positions closed. Running it again finds nothing open: a position is closed once.
        """
        now = self.lock.clock()
        report = FlattenReport(self.lock.name)
        try:
            step = self.tick(floor_minute(dt_to_ms(now)))
        finally:
            halt()
        with self.lock.locked() as txn:
            acct, ledger = txn.acct, txn.ledger
            held = ledger.load_positions(
                POSITIONS.c.account == acct.name, POSITIONS.c.status.in_((OPEN, CLOSING))
            )
            report.cancelled_orders = step.cancelled
            for order in ledger.load_orders(ORDERS.c.account == acct.name, ORDERS.c.status == PENDING):
                if symbols is None or order.symbol in symbols:
                    ledger.finish(order, CANCELLED, FLATTENED, held)  # a closing position reopens
                    report.cancelled_orders += 1
            for pos in held:
                if symbols is None or pos.symbol in symbols:
                    self._close_at_mark(ledger, acct, pos, now)
                    report.positions.append(_flattened(pos))
            acct.equity = acct.balance + ledger.unrealised()
        if report.positions or report.cancelled_orders:
            log.info("paper flatten", **report.to_json())
        return report

    def _close_at_mark(self, ledger: Ledger, acct: Account, pos: PositionRow, at: datetime) -> None:
        price = self.fills.market_price(pos.mark_price, exit_side(pos.side))
        order = ledger.new_exit(pos, exit_client_id(acct.name, pos.id, FLATTEN), FLATTEN, pos.mark_price, at)
        candle = pos.checked_through_ms if pos.checked_through_ms > 0 else None
        ledger.fill_exit(order, pos, price, self.fills.fee(price, pos.qty), FLATTEN, at, candle)

    # -- the step ----------------------------------------------------------------------------------

    def advance(self, txn: Txn, to_ms: int) -> TickReport:
        """Replay the candles that opened before ``to_ms`` over pending orders and open positions."""
        acct, ledger = txn.acct, txn.ledger
        report = TickReport(iso_minute(to_ms), acct.name)
        if acct.ticked_to_ms >= to_ms:
            report.skipped = True
            return report
        pending = ledger.load_orders(ORDERS.c.account == acct.name, ORDERS.c.status == PENDING)
        positions = ledger.load_positions(
            POSITIONS.c.account == acct.name, POSITIONS.c.status.in_((OPEN, CLOSING))
        )
        starts = _replay_starts(pending, positions)
        candles = self.store.candles_since(self.exchange_label, starts, to_ms)
        held: dict[str, list[PositionRow]] = {symbol: [] for symbol in starts}
        for pos in positions:
            held[pos.symbol].append(pos)
        for symbol in sorted(starts):
            replay = _Replay(ledger, acct, self.fills, report, held[symbol])  # appends positions opened
            replay.run(
                [o for o in pending if o.symbol == symbol],
                [Candle(*row) for row in candles.get(symbol, [])],
            )
        for order in pending:
            # No candle can come before the signal expires any more: the order lapses.
            lapsed = order.valid_until is not None and dt_to_ms(order.valid_until) < to_ms
            if order.status == PENDING and lapsed:
                ledger.finish(order, EXPIRED, LAPSED)
                report.expired += 1
        acct.ticked_to_ms = max(acct.ticked_to_ms, to_ms)
        unrealised = sum(p.unrealised_pnl for group in held.values() for p in group if p.status != CLOSED)
        acct.equity = acct.balance + unrealised
        if report.fills or report.exits or report.expired or report.cancelled:
            log.info("paper step", **report.to_json())
        return report


def _flattened(pos: PositionRow) -> FlattenedPosition:
    marked = pos.checked_through_ms + MINUTE_MS if pos.checked_through_ms > 0 else None
    return FlattenedPosition.of(pos, marked_at=None if marked is None else ms_to_dt(marked))


def _replay_starts(pending: Sequence[OrderRow], positions: Sequence[PositionRow]) -> dict[str, int]:
    """Per symbol, the first candle a pending order or an open position has not seen yet."""
    starts: dict[str, int] = {}
    for order in pending:
        start = dt_to_ms(order.signal_minute)
        starts[order.symbol] = min(starts.get(order.symbol, start), start)
    for pos in positions:
        start = pos.checked_through_ms + MINUTE_MS
        starts[pos.symbol] = min(starts.get(pos.symbol, start), start)
    return starts


@dataclass
class _Replay:
    """One symbol's candles, in order, over its pending orders and open positions."""

    ledger: Ledger
    acct: Account
    fills: FillModel
    report: TickReport
    positions: list[PositionRow]  # the symbol's open positions; those opened on the way are appended

    def run(self, orders: Sequence[OrderRow], candles: Sequence[Candle]) -> None:
        # Within a candle: exits before entries (an opposite signal closes first), then the stops.
        queue = sorted(orders, key=lambda o: (o.purpose != EXIT, o.id or 0))
        by_id = {p.id: p for p in self.positions}  # what exit orders refer to (all opened before)
        for candle in candles:
            at = ms_to_dt(candle.open_time)
            for order in queue:
                self._fill(order, candle, at, by_id)
            for pos in self.positions:
                self._check_exits(pos, candle, at)

    def _fill(
        self, order: OrderRow, candle: Candle, at: datetime, by_id: dict[int | None, PositionRow]
    ) -> None:
        """A pending order on its candle: filled at the open, expired, or cancelled."""
        if order.status != PENDING or candle.open_time < dt_to_ms(order.signal_minute):
            return
        if order.valid_until is not None and candle.open_time > dt_to_ms(order.valid_until):
            self.ledger.finish(order, EXPIRED, LAPSED)
            self.report.expired += 1
            return
        price = self.fills.market_price(candle.open, order.side)
        fee = self.fills.fee(price, order.qty)
        if order.purpose == EXIT:
            pos = by_id.get(order.position_id)
            if pos is None or pos.status == CLOSED:
                self._cancel(order, "the position was already closed")
                return
            self.ledger.fill_exit(order, pos, price, fee, OPPOSITE_SIGNAL, at, candle.open_time)
            self._count_exit(OPPOSITE_SIGNAL)
        elif self.acct.halted:
            self._cancel(order, f"kill_switch: trading halted ({self.acct.halt_reason})")
        else:
            self.positions.append(self.ledger.fill_entry(order, order.qty, price, fee, at, candle.open_time))
            self.report.fills += 1

    def _check_exits(self, pos: PositionRow, candle: Candle, at: datetime) -> None:
        """Stop-loss and take-profit of an open position on a candle it has not seen; else its mark."""
        if pos.status == CLOSED or pos.checked_through_ms >= candle.open_time:
            return
        pos.dirty = True
        pos.checked_through_ms = candle.open_time
        hit = exit_on_candle(pos.side, pos.stop_loss, pos.take_profit, candle)
        if hit is None:
            pos.mark_price = candle.close
            pos.unrealised_pnl = gross_pnl(pos.side, pos.qty, pos.entry_price, candle.close)
            return
        kind, trigger = hit
        price = exit_fill_price(self.fills, pos.side, kind, trigger)
        # A position opened in this step has no id yet; its entry order has one.
        client_id = exit_client_id(self.acct.name, pos.entry_order_id or pos.id, kind)
        order = self.ledger.new_exit(pos, client_id, kind, trigger, at)
        self.ledger.fill_exit(order, pos, price, self.fills.fee(price, pos.qty), kind, at, candle.open_time)
        self._count_exit(kind)

    def _cancel(self, order: OrderRow, why: str) -> None:
        self.ledger.finish(order, CANCELLED, why)
        self.report.cancelled += 1

    def _count_exit(self, kind: str) -> None:
        self.report.exits[kind] = self.report.exits.get(kind, 0) + 1
