"""The executor: order intents become orders, positions and PnL (docs/TRADING.md).

Every intent goes through the same steps, whichever broker runs:

1. the account row is locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite has no row locks, so
   a first write takes its database-wide write lock), so concurrent order workers decide one after
   another on the state the previous decision left;
2. the intent is stored under its unique client order id; an id already stored was decided
   before (a duplicate or a redelivery) and is not decided again;
3. paper only: the account is first brought up to the intent's minute (``_advance``: pending
   fills, stop-loss and take-profit on the candles that closed meanwhile);
4. signal checks, the opposite signal's closes, entry checks, sizing, exposure checks, then the
   entry order; steps 2 to 4 commit together, and nothing leaves the process before that commit;
5. live only: after the commit, each order the intent created is sent to the exchange, looked up
   by its client order id first whenever an earlier attempt may have reached it.

The threads of one worker process decide in batches (``_combined``): one lock and one commit for
every intent waiting at that moment, decided strictly one after another.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.errors import BrokerUnavailableError, ConfigError, OrderRejectedError
from core.logging import get_logger
from core.settings import Settings
from core.timegrid import MINUTE_MS, as_utc, dt_to_ms, iso_minute, ms_to_dt
from data.store import CandleStore
from trading.book import Book
from trading.intake import record_intent, record_intents
from trading.intents import OrderIntentMessage
from trading.ledger import (
    ACCOUNTS,
    INTENTS,
    ORDERS,
    POSITIONS,
    Account,
    Ledger,
    OrderRow,
    PositionRow,
)
from trading.live import DuplicateOrderError, ExchangeOrder, LiveBroker, OutcomeUnknownError
from trading.paper import (
    LONG,
    OPPOSITE_SIGNAL,
    SHORT,
    Candle,
    FillModel,
    entry_side,
    exit_fill_price,
    exit_on_candle,
    exit_side,
    gross_pnl,
)
from trading.risk import Rejection, RiskLimits, check_entry, check_exposure, check_signal, reason
from trading.sizing import MarketRules, SizingRules, size_position
from trading.states import (
    ACCEPTED,
    CANCELLED,
    CLOSED,
    CLOSING,
    ENTRY,
    EXIT,
    EXPIRED,
    FILLED,
    OPEN,
    PENDING,
    RECEIVED,
    REJECTED,
    SUBMITTED,
    TERMINAL_ORDER,
    UNKNOWN,
)

__all__ = [
    "LIVE",
    "PAPER",
    "ExecutionResult",
    "TickReport",
    "Trader",
    "ensure_account",
    "set_halted",
]

log = get_logger(__name__)

PAPER, LIVE = "paper", "live"
CLOSED_ON_EXCHANGE = "closed_on_exchange"
# Intents decided in one transaction at most: bounds how long one commit keeps the others waiting.
MAX_BATCH = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


def midnight(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def exit_client_id(*parts: object) -> str:
    """Deterministic client id of an exit order (36 characters, Bybit's orderLinkId limit)."""
    key = "|".join(str(p) for p in parts).encode()
    return "mlx-" + hashlib.sha256(key).hexdigest()[:32]


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


@dataclass
class _Txn:
    """One transaction holding the account lock."""

    conn: Connection
    acct: Account
    ledger: Ledger
    version_seen: int
    book: Book | None = None


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


@dataclass
class TickReport:
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


def ensure_account(engine: Engine, settings: Settings, name: str, now: datetime | None = None) -> None:
    """Create the account row of ``name`` once (a live account's cash comes from the exchange)."""
    when = now or utcnow()
    balance = settings.trading.paper_balance if name == PAPER else 0.0
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        insert(ACCOUNTS)
        .values(
            name=name,
            currency=settings.trading.currency,
            initial_balance=balance,
            balance=balance,
            equity=balance,
            day_start_at=midnight(when),
            day_start_equity=balance,
            halted=False,
            ticked_to_ms=0,
            version=0,
            updated_at=when,
        )
        .on_conflict_do_nothing(index_elements=["name"])
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def lock_account(conn: Connection, name: str) -> Account:
    """The account row, locked until the transaction ends."""
    if conn.dialect.name == "sqlite":
        # No row locks: a first write takes the database's write lock (waiting on busy_timeout)
        # before anything is read, so no decision reads a state another is changing.
        conn.execute(update(ACCOUNTS).where(ACCOUNTS.c.name == name).values(updated_at=utcnow()))
    row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.name == name).with_for_update()).one()
    return Account.from_row(row)


def set_halted(engine: Engine, settings: Settings, halted: bool, why: str | None = None) -> None:
    """The kill switch, on every account: no new order is placed while it is on."""
    now = utcnow()
    ensure_account(engine, settings, settings.trading.mode, now)
    with engine.begin() as conn:
        conn.execute(
            update(ACCOUNTS).values(
                halted=halted,
                halt_reason=(why or "halted by the operator") if halted else None,
                halted_at=now if halted else None,
                updated_at=now,
            )
        )


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
        self.live = self.account == LIVE
        if self.live and broker is None:
            raise ConfigError("trading.mode is live but no live broker was configured")
        self.broker = broker
        self.limits = RiskLimits.from_settings(settings)
        t = settings.trading
        self.sizing = SizingRules(
            risk_per_trade=t.risk_per_trade,
            confidence_threshold=self.limits.min_confidence,
            min_scale=t.confidence_min_scale,
            max_leverage=t.max_leverage,
        )
        self.fills = FillModel(t.fee_bps, t.slippage_bps)
        self.clock = clock
        self._account_ready = False
        self._reconciled = False
        # The book the last batch of this process left, valid while the account's version is the
        # one that batch committed (paper only: a live order's state also changes outside the lock).
        self._cached: tuple[int, Book] | None = None
        self._combine = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leading = False

    # -- entry points ------------------------------------------------------------------------------

    def execute(self, intent: OrderIntentMessage) -> ExecutionResult:
        if self.live and not self._reconciled:
            # Once per process before the first live decision: cash, positions and open orders as
            # the exchange has them (a worker may have died mid-order).
            self.reconcile()
        created, intent_id, status, why = self._combined(intent)
        if self.live:
            # Also on a redelivery: an order left accepted or unknown is looked up, then sent.
            self._submit_orders_of(intent_id)
            status, why = self._intent_state(intent_id)
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
        if self.live:
            self.reconcile()
            return TickReport(iso_minute(minute_ms), self.account)
        with self.engine.connect() as conn:
            done = conn.execute(
                select(ACCOUNTS.c.ticked_to_ms).where(ACCOUNTS.c.name == self.account)
            ).scalar_one()
        if done >= minute_ms:  # idempotent per minute, without taking the lock
            return TickReport(iso_minute(minute_ms), self.account, skipped=True)
        with self._locked() as txn:
            return self._advance(txn, minute_ms)

    def ensure_account(self) -> None:
        if not self._account_ready:
            ensure_account(self.engine, self.settings, self.account, self.clock())
            self._account_ready = True

    @contextmanager
    def _locked(self) -> Iterator[_Txn]:
        self.ensure_account()
        with self.engine.begin() as conn:
            acct = lock_account(conn, self.account)
            txn = _Txn(conn, acct, Ledger(conn, acct, self.clock), acct.version)
            acct.version += 1
            now = self.clock()
            if acct.day_start_at < midnight(now):
                # The daily loss limit counts from the equity at the first decision of the UTC day.
                acct.day_start_at = midnight(now)
                acct.day_start_equity = acct.equity
            yield txn
            txn.ledger.write()
            conn.execute(
                update(ACCOUNTS).where(ACCOUNTS.c.name == acct.name).values(**acct.values(), updated_at=now)
            )

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
            with self._locked() as txn:
                if cached is not None and cached[0] == txn.version_seen:
                    txn.book = cached[1]  # nobody else has written since this process's last batch
                outcomes = self._decide_all(txn, [w.intent for w in batch])
            if txn.book is not None and not self.live:
                self._cached = (txn.acct.version, txn.book)
        except Exception:
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

    def _decide_all(self, txn: _Txn, intents: Sequence[OrderIntentMessage]) -> list[Decision]:
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
                minute_ms = dt_to_ms(intent.minute)
                if not self.live and acct.ticked_to_ms < minute_ms:
                    if txn.book is not None:
                        txn.book.write(conn, self.clock())
                    self._advance(txn, minute_ms)
                    txn.ledger.write()
                    txn.book = None  # fills and exits changed the account: read it again
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
        return (ACCEPTED if self.live else SUBMITTED), None

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
            "status": ACCEPTED if self.live else PENDING,
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
        unsent = ACCEPTED if self.live else PENDING
        for entry in book.unsent_entries(intent.symbol, entry_side(other), unsent):
            book.cancel(entry, "superseded by an opposite signal")
        return len(positions)

    def _market_rules(self, symbol: str) -> MarketRules:
        if self.broker is not None:
            return self.broker.market_rules(symbol)
        t = self.settings.trading
        rule = t.paper_markets.get(symbol, t.paper_market)
        return MarketRules(rule.qty_step, rule.min_qty, rule.min_notional)

    # -- paper: the per-minute step ----------------------------------------------------------------

    def _advance(self, txn: _Txn, to_ms: int) -> TickReport:
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
        starts: dict[str, int] = {}
        for order in pending:
            start = dt_to_ms(order.signal_minute)
            starts[order.symbol] = min(starts.get(order.symbol, start), start)
        for pos in positions:
            start = pos.checked_through_ms + MINUTE_MS
            starts[pos.symbol] = min(starts.get(pos.symbol, start), start)
        candles = self.store.candles_since(self.exchange_label, starts, to_ms)
        held: dict[str, list[PositionRow]] = {symbol: [] for symbol in starts}
        for pos in positions:
            held[pos.symbol].append(pos)
        for symbol in sorted(starts):
            self._replay_symbol(
                ledger,
                acct,
                [o for o in pending if o.symbol == symbol],
                held[symbol],  # positions opened on the way are appended
                [Candle(*row) for row in candles.get(symbol, [])],
                report,
            )
        for order in pending:
            # No candle can come before the signal expires any more: the order lapses.
            lapsed = order.valid_until is not None and dt_to_ms(order.valid_until) < to_ms
            if order.status == PENDING and lapsed:
                ledger.finish(order, EXPIRED, "no candle to fill on before the signal expired")
                report.expired += 1
        acct.ticked_to_ms = max(acct.ticked_to_ms, to_ms)
        unrealised = sum(p.unrealised_pnl for group in held.values() for p in group if p.status != CLOSED)
        acct.equity = acct.balance + unrealised
        if report.fills or report.exits or report.expired or report.cancelled:
            log.info("paper step", **report.to_json())
        return report

    def _replay_symbol(
        self,
        ledger: Ledger,
        acct: Account,
        orders: Sequence[OrderRow],
        positions: list[PositionRow],
        candles: Sequence[Candle],
        report: TickReport,
    ) -> None:
        # Within a candle: exits before entries (an opposite signal closes first), then the stops.
        queue = sorted(orders, key=lambda o: (o.purpose != EXIT, o.id or 0))
        by_id = {p.id: p for p in positions}  # what exit orders refer to (all opened before)
        for candle in candles:
            at = ms_to_dt(candle.open_time)
            for order in queue:
                if order.status != PENDING or candle.open_time < dt_to_ms(order.signal_minute):
                    continue
                if order.valid_until is not None and candle.open_time > dt_to_ms(order.valid_until):
                    ledger.finish(order, EXPIRED, "no candle to fill on before the signal expired")
                    report.expired += 1
                    continue
                price = self.fills.market_price(candle.open, order.side)
                fee = self.fills.fee(price, order.qty)
                if order.purpose == EXIT:
                    pos = by_id.get(order.position_id)
                    if pos is None or pos.status == CLOSED:
                        ledger.finish(order, CANCELLED, "the position was already closed")
                        report.cancelled += 1
                        continue
                    ledger.fill_exit(order, pos, price, fee, OPPOSITE_SIGNAL, at, candle.open_time)
                    report.exits[OPPOSITE_SIGNAL] = report.exits.get(OPPOSITE_SIGNAL, 0) + 1
                elif acct.halted:
                    ledger.finish(order, CANCELLED, f"kill_switch: trading halted ({acct.halt_reason})")
                    report.cancelled += 1
                else:
                    positions.append(ledger.fill_entry(order, order.qty, price, fee, at, candle.open_time))
                    report.fills += 1
            for pos in positions:
                if pos.status == CLOSED or pos.checked_through_ms >= candle.open_time:
                    continue
                pos.dirty = True
                pos.checked_through_ms = candle.open_time
                hit = exit_on_candle(pos.side, pos.stop_loss, pos.take_profit, candle)
                if hit is None:
                    pos.mark_price = candle.close
                    pos.unrealised_pnl = gross_pnl(pos.side, pos.qty, pos.entry_price, candle.close)
                    continue
                kind, trigger = hit
                price = exit_fill_price(self.fills, pos.side, kind, trigger)
                # A position opened in this step has no id yet; its entry order has one.
                client_id = exit_client_id(acct.name, pos.entry_order_id or pos.id, kind)
                order = ledger.new_exit(pos, client_id, kind, trigger, at)
                ledger.fill_exit(
                    order, pos, price, self.fills.fee(price, pos.qty), kind, at, candle.open_time
                )
                report.exits[kind] = report.exits.get(kind, 0) + 1

    # -- live: sending and reconciling -------------------------------------------------------------

    def _live(self) -> LiveBroker:
        if self.broker is None:
            raise ConfigError("no live broker")
        return self.broker

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
                .where(ORDERS.c.intent_id == intent_id, ORDERS.c.status.in_((ACCEPTED, UNKNOWN)))
                .order_by(ORDERS.c.id)
            ).scalars()
            pending = [int(i) for i in ids]
        for order_id in pending:
            self.submit(order_id)

    def submit(self, order_id: int) -> str:
        """Send one live order at most once: an earlier attempt is looked up before any resend."""
        broker = self._live()
        with self.engine.begin() as conn:
            row = conn.execute(select(ORDERS).where(ORDERS.c.id == order_id).with_for_update()).one()
            if row.status not in (ACCEPTED, UNKNOWN):
                return str(row.status)
            tried_before = row.attempts > 0 or row.status == UNKNOWN
            # Counted (and committed) before the request leaves: a crash after this line makes the
            # next attempt look the order up first.
            conn.execute(
                update(ORDERS)
                .where(ORDERS.c.id == order_id)
                .values(attempts=row.attempts + 1, updated_at=self.clock())
            )
        if tried_before:
            found = broker.find(row.symbol, row.client_order_id)
            if found is not None:
                return self._apply_exchange_order(order_id, found)
        try:
            placed = broker.create(
                symbol=row.symbol,
                side=row.side,
                qty=row.qty,
                client_order_id=row.client_order_id,
                stop_loss=row.stop_loss if row.purpose == ENTRY else None,
                take_profit=row.take_profit if row.purpose == ENTRY else None,
                reduce_only=row.purpose == EXIT,
            )
        except (OutcomeUnknownError, DuplicateOrderError) as exc:
            log.warning(
                "order outcome unknown: reconciling by client order id",
                client_order_id=row.client_order_id,
                error=str(exc),
            )
            self._mark(order_id, UNKNOWN, str(exc))
            found = broker.find(row.symbol, row.client_order_id)
            if found is None:
                raise BrokerUnavailableError(
                    f"order {row.client_order_id}: {exc}; not found on the exchange yet, "
                    "the retry looks it up again before any resend"
                ) from None
            return self._apply_exchange_order(order_id, found)
        except OrderRejectedError as exc:
            why = reason(Rejection.EXCHANGE, str(exc))
            with self._locked() as txn:
                orders = txn.ledger.load_orders(ORDERS.c.id == order_id)
                positions = self._positions_of(txn, orders[0])
                txn.ledger.finish(orders[0], REJECTED, why, positions)
            log.warning("order rejected by the exchange", client_order_id=row.client_order_id, reason=why)
            return REJECTED
        # The create answer carries ids only; the order's state comes from the look-up.
        found = broker.find(row.symbol, row.client_order_id)
        return self._apply_exchange_order(order_id, found or placed)

    def _mark(self, order_id: int, status: str, why: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(ORDERS)
                .where(ORDERS.c.id == order_id)
                .values(status=status, reason=why, updated_at=self.clock())
            )

    @staticmethod
    def _positions_of(txn: _Txn, order: OrderRow) -> list[PositionRow]:
        if order.position_id is None:
            return []
        return txn.ledger.load_positions(POSITIONS.c.id == order.position_id)

    def _apply_exchange_order(self, order_id: int, found: ExchangeOrder) -> str:
        """Bring the local order (and its position) to what the exchange says."""
        with self._locked() as txn:
            ledger, acct = txn.ledger, txn.acct
            [order] = ledger.load_orders(ORDERS.c.id == order_id)
            if order.status in TERMINAL_ORDER:
                return order.status
            order.exchange_order_id, order.dirty = found.id or order.exchange_order_id, True
            now = self.clock()
            if found.status == "closed" and found.filled > 0:
                price = found.average or order.ref_price
                if order.purpose == ENTRY:
                    ledger.fill_entry(order, found.filled, price, found.fee, now, None)
                else:
                    held = [p for p in self._positions_of(txn, order) if p.status != CLOSED]
                    if held:
                        ledger.fill_exit(order, held[0], price, found.fee, order.reason or EXIT, now, None)
                    else:
                        order.status, order.filled_qty, order.avg_price = FILLED, found.filled, price
            elif found.status in ("canceled", "expired", "rejected"):
                status = REJECTED if found.status == "rejected" else CANCELLED
                ledger.finish(
                    order, status, f"exchange: order {found.status}", self._positions_of(txn, order)
                )
            else:
                order.status, order.reason = SUBMITTED, None
                if order.purpose == ENTRY:
                    ledger.set_intent(order.intent_id, SUBMITTED, None)
            ledger.write()
            unrealised = txn.conn.execute(
                select(func.coalesce(func.sum(POSITIONS.c.unrealised_pnl), 0.0)).where(
                    POSITIONS.c.account == acct.name, POSITIONS.c.status.in_((OPEN, CLOSING))
                )
            ).scalar_one()
            acct.equity = acct.balance + float(unrealised)
            return order.status

    def reconcile(self) -> dict[str, int]:
        """Live: bring local orders, positions and cash to what the exchange holds.

        Run when an orders worker starts and at every per-minute step. Orders that may have reached
        the exchange are looked up by client order id; positions are compared per symbol (the
        exchange nets them): gone on the exchange (its stop-loss or take-profit, or a manual
        close) -> closed here; unknown here -> recorded as an external position, which counts
        towards the limits.
        """
        broker = self._live()
        self.ensure_account()
        report = {"orders_updated": 0, "orders_lapsed": 0, "positions_closed": 0, "positions_adopted": 0}
        with self.engine.connect() as conn:
            open_orders = conn.execute(
                select(ORDERS.c.id, ORDERS.c.symbol, ORDERS.c.client_order_id, ORDERS.c.valid_until).where(
                    ORDERS.c.account == self.account,
                    ORDERS.c.status.in_((UNKNOWN, SUBMITTED, ACCEPTED)),
                    ORDERS.c.attempts > 0,
                )
            ).all()
        now = self.clock()
        for order in open_orders:
            found = broker.find(order.symbol, order.client_order_id)
            if found is not None:
                self._apply_exchange_order(order.id, found)
                report["orders_updated"] += 1
            elif order.valid_until is not None and as_utc(order.valid_until) < now:
                with self._locked() as txn:
                    [row] = txn.ledger.load_orders(ORDERS.c.id == order.id)
                    if row.status in (UNKNOWN, ACCEPTED):
                        why = "never reached the exchange before the signal expired"
                        txn.ledger.finish(row, EXPIRED, why, self._positions_of(txn, row))
                        report["orders_lapsed"] += 1
        fetched_at = self.clock()
        held = {p.symbol: p for p in broker.positions()}
        wallet, equity = broker.balance(self.settings.trading.currency)
        with self._locked() as txn:
            acct, ledger = txn.acct, txn.ledger
            local = ledger.load_positions(
                POSITIONS.c.account == acct.name, POSITIONS.c.status.in_((OPEN, CLOSING))
            )
            for pos in local:
                remote = held.get(pos.symbol)
                if pos.opened_at >= fetched_at:
                    continue  # filled after the exchange was asked: its answer cannot know it
                pos.dirty = True
                if remote is None or remote.side != pos.side:
                    gross = gross_pnl(pos.side, pos.qty, pos.entry_price, pos.mark_price)
                    pos.status, pos.closed_at, pos.exit_price = CLOSED, now, pos.mark_price
                    pos.exit_reason, pos.unrealised_pnl = CLOSED_ON_EXCHANGE, 0.0
                    pos.realised_pnl += gross
                    report["positions_closed"] += 1
                else:
                    pos.mark_price = remote.mark_price
                    pos.unrealised_pnl = gross_pnl(pos.side, pos.qty, pos.entry_price, remote.mark_price)
            known = {p.symbol for p in local if p.status != CLOSED}
            for symbol, remote in held.items():
                if symbol in known:
                    continue
                ledger.add_position(
                    PositionRow(
                        account=acct.name,
                        symbol=symbol,
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
                report["positions_adopted"] += 1
                log.warning("position found on the exchange only: adopted", symbol=symbol, side=remote.side)
            acct.balance = wallet
            acct.equity = equity
        self._reconciled = True
        if any(report.values()):
            log.info("reconciled with the exchange", **report)
        return report
