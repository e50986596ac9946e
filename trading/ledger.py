"""The account, its orders, positions and fills as plain rows for one locked transaction.

A paper step fills hundreds of orders and checks hundreds of positions per minute; a live fill
changes one of each. Both work on these rows in memory and ``Ledger.write`` sends what changed in a
handful of bulk statements (one per table and kind of change) instead of one round trip per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update

from core.timegrid import MINUTE_MS, dt_to_ms
from data.models import OrderIntent, TradingAccount, TradingFill, TradingOrder, TradingPosition
from trading.paper import BUY, LONG, SHORT, gross_pnl
from trading.states import CLOSED, CLOSING, ENTRY, EXIT, FILLED, OPEN, PENDING

ACCOUNTS = cast(Table, TradingAccount.__table__)
ORDERS = cast(Table, TradingOrder.__table__)
POSITIONS = cast(Table, TradingPosition.__table__)
FILLS = cast(Table, TradingFill.__table__)
INTENTS = cast(Table, OrderIntent.__table__)


@dataclass(eq=False)
class Account:
    """The locked account row; written back whole at the end of the transaction."""

    name: str
    currency: str
    initial_balance: float
    balance: float
    equity: float
    day_start_at: datetime
    day_start_equity: float
    halted: bool
    halt_reason: str | None
    halted_at: datetime | None
    ticked_to_ms: int
    version: int

    @classmethod
    def from_row(cls, row: Any) -> Account:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


@dataclass(eq=False)
class OrderRow:
    client_order_id: str
    intent_id: int | None
    account: str
    symbol: str
    side: str
    purpose: str
    qty: float
    ref_price: float
    stop_loss: float | None
    take_profit: float | None
    status: str
    reason: str | None
    signal_minute: datetime
    valid_until: datetime | None
    position_id: int | None
    exchange_order_id: str | None = None
    attempts: int = 0
    filled_qty: float = 0.0
    avg_price: float | None = None
    fee: float = 0.0
    filled_at: datetime | None = None
    id: int | None = None
    # A position created in this transaction: its id (and so ``position_id``) comes with the write.
    position: PositionRow | None = field(default=None, repr=False)
    dirty: bool = False

    @classmethod
    def from_row(cls, row: Any) -> OrderRow:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if f.name in _ORDER_COLUMNS})

    def values(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _ORDER_COLUMNS if name != "id"}
        if self.position is not None:
            out["position_id"] = self.position.id
        return out


@dataclass(eq=False)
class PositionRow:
    account: str
    symbol: str
    side: str
    qty: float
    entry_price: float
    stop_loss: float | None
    take_profit: float | None
    status: str
    entry_order_id: int | None
    signal_minute: datetime
    opened_at: datetime
    mark_price: float
    unrealised_pnl: float
    realised_pnl: float
    fees: float
    checked_through_ms: int
    exit_order_id: int | None = None
    closed_at: datetime | None = None
    exit_price: float | None = None
    exit_reason: str | None = None
    id: int | None = None
    exit_order: OrderRow | None = field(default=None, repr=False)
    dirty: bool = False

    @classmethod
    def from_row(cls, row: Any) -> PositionRow:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if f.name in _POSITION_COLUMNS})

    def values(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _POSITION_COLUMNS if name != "id"}
        if self.exit_order is not None:
            out["exit_order_id"] = self.exit_order.id
        return out


_ORDER_COLUMNS = (
    "id",
    "client_order_id",
    "intent_id",
    "account",
    "symbol",
    "side",
    "purpose",
    "qty",
    "ref_price",
    "stop_loss",
    "take_profit",
    "status",
    "reason",
    "signal_minute",
    "valid_until",
    "position_id",
    "exchange_order_id",
    "attempts",
    "filled_qty",
    "avg_price",
    "fee",
    "filled_at",
)
_POSITION_COLUMNS = (
    "id",
    "account",
    "symbol",
    "side",
    "qty",
    "entry_price",
    "stop_loss",
    "take_profit",
    "status",
    "entry_order_id",
    "exit_order_id",
    "signal_minute",
    "opened_at",
    "closed_at",
    "exit_price",
    "exit_reason",
    "mark_price",
    "unrealised_pnl",
    "realised_pnl",
    "fees",
    "checked_through_ms",
)


@dataclass
class _Fill:
    order: OrderRow
    qty: float
    price: float
    fee: float
    gross: float
    kind: str
    candle_ms: int | None
    at: datetime


class Ledger:
    """Reads and changes of one locked transaction; ``write`` sends them."""

    def __init__(self, conn: Connection, account: Account, clock: Callable[[], datetime]) -> None:
        self.conn = conn
        self.account = account
        self.clock = clock
        self.orders: list[OrderRow] = []  # loaded rows (written when dirty)
        self.positions: list[PositionRow] = []
        self.new_orders: list[OrderRow] = []
        self.new_positions: list[PositionRow] = []
        self.fills: list[_Fill] = []
        self.intents: dict[int, tuple[str, str | None]] = {}

    # -- reading -----------------------------------------------------------------------------------

    def load_orders(self, *where: Any) -> list[OrderRow]:
        cols = [ORDERS.c[name] for name in _ORDER_COLUMNS]
        rows = [
            OrderRow.from_row(r) for r in self.conn.execute(select(*cols).where(*where).order_by(ORDERS.c.id))
        ]
        self.orders.extend(rows)
        return rows

    def load_positions(self, *where: Any) -> list[PositionRow]:
        cols = [POSITIONS.c[name] for name in _POSITION_COLUMNS]
        rows = [
            PositionRow.from_row(r)
            for r in self.conn.execute(select(*cols).where(*where).order_by(POSITIONS.c.id))
        ]
        self.positions.extend(rows)
        return rows

    # -- changing ----------------------------------------------------------------------------------

    def touch(self, row: OrderRow | PositionRow) -> None:
        row.dirty = True

    def add_order(self, order: OrderRow) -> OrderRow:
        self.new_orders.append(order)
        return order

    def add_position(self, pos: PositionRow) -> PositionRow:
        self.new_positions.append(pos)
        return pos

    def set_intent(self, intent_id: int | None, status: str, why: str | None) -> None:
        if intent_id is not None:
            self.intents[intent_id] = (status, why)

    def finish(
        self, order: OrderRow, status: str, why: str | None, positions: Sequence[PositionRow] = ()
    ) -> None:
        """End an order without a fill; an entry's intent ends with it, a closing position reopens."""
        order.status, order.reason, order.dirty = status, why, True
        if order.purpose == ENTRY:
            self.set_intent(order.intent_id, status, why)
        if order.purpose == EXIT:
            for pos in positions:
                if pos.id == order.position_id and pos.status == CLOSING:
                    pos.status, pos.dirty = OPEN, True

    def fill_entry(
        self, order: OrderRow, qty: float, price: float, fee: float, at: datetime, candle_ms: int | None
    ) -> PositionRow:
        pos = self.add_position(
            PositionRow(
                account=self.account.name,
                symbol=order.symbol,
                side=LONG if order.side == BUY else SHORT,
                qty=qty,
                entry_price=price,
                stop_loss=order.stop_loss,
                take_profit=order.take_profit,
                status=OPEN,
                entry_order_id=order.id,
                signal_minute=order.signal_minute,
                opened_at=at,
                mark_price=price,
                unrealised_pnl=0.0,
                realised_pnl=-fee,
                fees=fee,
                # The fill candle itself is checked for the stop and the target: it moved after the open.
                checked_through_ms=(candle_ms if candle_ms is not None else dt_to_ms(at)) - MINUTE_MS,
            )
        )
        order.position = pos
        self._filled(order, qty, price, fee, 0.0, ENTRY, at, candle_ms)
        self.account.balance -= fee
        return pos

    def fill_exit(
        self,
        order: OrderRow,
        pos: PositionRow,
        price: float,
        fee: float,
        kind: str,
        at: datetime,
        candle_ms: int | None,
    ) -> None:
        gross = gross_pnl(pos.side, pos.qty, pos.entry_price, price)
        pos.status, pos.closed_at, pos.exit_price, pos.exit_reason = CLOSED, at, price, kind
        pos.mark_price, pos.unrealised_pnl, pos.dirty = price, 0.0, True
        pos.realised_pnl += gross - fee
        pos.fees += fee
        pos.exit_order = order
        if pos.id is not None:
            order.position_id = pos.id
        else:
            order.position = pos
        self._filled(order, pos.qty, price, fee, gross, kind, at, candle_ms)
        self.account.balance += gross - fee

    def new_exit(
        self, pos: PositionRow, client_order_id: str, kind: str, ref_price: float, at: datetime
    ) -> OrderRow:
        return self.add_order(
            OrderRow(
                client_order_id=client_order_id,
                intent_id=None,
                account=self.account.name,
                symbol=pos.symbol,
                side="sell" if pos.side == LONG else "buy",
                purpose=EXIT,
                qty=pos.qty,
                ref_price=ref_price,
                stop_loss=None,
                take_profit=None,
                status=PENDING,
                reason=kind,
                signal_minute=at,
                valid_until=None,
                position_id=pos.id,
                position=pos if pos.id is None else None,
            )
        )

    def _filled(
        self,
        order: OrderRow,
        qty: float,
        price: float,
        fee: float,
        gross: float,
        kind: str,
        at: datetime,
        candle_ms: int | None,
    ) -> None:
        order.status, order.filled_qty, order.avg_price, order.fee = FILLED, qty, price, fee
        order.filled_at, order.dirty = at, True
        self.fills.append(_Fill(order, qty, price, fee, gross, kind, candle_ms, at))
        if order.purpose == ENTRY:
            self.set_intent(order.intent_id, FILLED, None)

    def unrealised(self) -> float:
        return sum(p.unrealised_pnl for p in (*self.positions, *self.new_positions) if p.status != CLOSED)

    # -- writing -----------------------------------------------------------------------------------

    def write(self) -> None:
        now = self.clock()
        conn = self.conn
        if self.new_positions:
            stmt = insert(POSITIONS).returning(POSITIONS.c.id, sort_by_parameter_order=True)
            params = [p.values() | {"updated_at": now} for p in self.new_positions]
            for pos, row in zip(self.new_positions, conn.execute(stmt, params), strict=True):
                pos.id = int(row.id)
        if self.new_orders:
            stmt = insert(ORDERS).returning(ORDERS.c.id, sort_by_parameter_order=True)
            params = [o.values() | {"updated_at": now} for o in self.new_orders]
            for order, row in zip(self.new_orders, conn.execute(stmt, params), strict=True):
                order.id = int(row.id)
        # Rows whose links to new rows are known only now, and every loaded row that changed.
        positions = [p for p in self.positions if p.dirty]
        positions += [p for p in self.new_positions if p.exit_order is not None]
        if positions:
            conn.execute(
                _update_by_id(POSITIONS, _POSITION_COLUMNS),
                [_bound(p.values()) | {"row_id": p.id, "b_updated_at": now} for p in positions],
            )
        orders = [o for o in self.orders if o.dirty]
        if orders:
            conn.execute(
                _update_by_id(ORDERS, _ORDER_COLUMNS),
                [_bound(o.values()) | {"row_id": o.id, "b_updated_at": now} for o in orders],
            )
        if self.fills:
            conn.execute(
                insert(FILLS),
                [
                    {
                        "order_id": f.order.id,
                        "account": self.account.name,
                        "symbol": f.order.symbol,
                        "side": f.order.side,
                        "qty": f.qty,
                        "price": f.price,
                        "fee": f.fee,
                        "realised_pnl": f.gross,
                        "kind": f.kind,
                        "candle_open_ms": f.candle_ms,
                        "filled_at": f.at,
                    }
                    for f in self.fills
                ],
            )
        if self.intents:
            conn.execute(
                update(INTENTS)
                .where(INTENTS.c.id == bindparam("iid"))
                .values(status=bindparam("st"), reason=bindparam("why"), updated_at=now),
                [{"iid": iid, "st": st, "why": why} for iid, (st, why) in self.intents.items()],
            )
        # Written: a later step of the same transaction loads what it needs afresh.
        self.orders, self.positions, self.new_orders, self.new_positions = [], [], [], []
        self.fills, self.intents = [], {}


def _update_by_id(table: Table, columns: Sequence[str]) -> Any:
    """``UPDATE table SET every column WHERE id = :row_id``, for executemany.

    The bind names must differ from the column names (SQLAlchemy reserves those for ``SET``).
    """
    names = [c for c in columns if c != "id"] + ["updated_at"]
    return (
        update(table).where(table.c.id == bindparam("row_id")).values({n: bindparam("b_" + n) for n in names})
    )


def _bound(values: dict[str, Any]) -> dict[str, Any]:
    return {"b_" + k: v for k, v in values.items()}
