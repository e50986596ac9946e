"""The account as a batch of decisions sees it (``trading.executor``).

Open positions and live entry orders are read once per batch, under the account lock, kept current
in memory while the batch decides, and written back in a few bulk statements at the end: a decision
then costs no database round trip of its own. Plain rows, not ORM objects: a minute's burst of
intents decides hundreds of times against a few hundred positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update

from data.models import OrderIntent, TradingOrder, TradingPosition
from trading.risk import AccountSnapshot
from trading.states import ACTIVE_ORDER, CANCELLED, CLOSING, ENTERED, ENTRY, OPEN

_ORDERS = cast(Table, TradingOrder.__table__)
_POSITIONS = cast(Table, TradingPosition.__table__)
_INTENTS = cast(Table, OrderIntent.__table__)


@dataclass
class HeldPosition:
    id: int
    symbol: str
    side: str
    qty: float
    mark_price: float
    status: str

    @property
    def value(self) -> float:
        return self.qty * self.mark_price


@dataclass
class LiveEntry:
    """An entry order that may still fill; ``row`` holds a new one's values until it is written."""

    id: int | None
    intent_id: int | None
    symbol: str
    side: str
    qty: float
    ref_price: float
    status: str
    attempts: int
    row: dict[str, Any] | None = None

    @property
    def value(self) -> float:
        return self.qty * self.ref_price


@dataclass
class Book:
    positions: dict[str, list[HeldPosition]]
    entries: dict[str, list[LiveEntry]]
    last_entry: dict[str, datetime]
    new_orders: list[dict[str, Any]] = field(default_factory=list)
    closing: list[tuple[int, str]] = field(default_factory=list)  # (position id, exit client id)
    cancelled: list[tuple[int, str]] = field(default_factory=list)  # (order id, reason)
    intents: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    symbols_known: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, conn: Connection, account: str, symbols: Sequence[str]) -> Book:
        P, O = _POSITIONS.c, _ORDERS.c  # noqa: E741 (table column namespaces)
        positions: dict[str, list[HeldPosition]] = {}
        for r in conn.execute(
            select(P.id, P.symbol, P.side, P.qty, P.mark_price, P.status)
            .where(P.account == account, P.status.in_((OPEN, CLOSING)))
            .order_by(P.id)
        ):
            positions.setdefault(r.symbol, []).append(
                HeldPosition(int(r.id), r.symbol, r.side, float(r.qty), float(r.mark_price), r.status)
            )
        entries: dict[str, list[LiveEntry]] = {}
        for e in conn.execute(
            select(O.id, O.intent_id, O.symbol, O.side, O.qty, O.ref_price, O.status, O.attempts)
            .where(O.account == account, O.purpose == ENTRY, O.status.in_(ACTIVE_ORDER))
            .order_by(O.id)
        ):
            entries.setdefault(e.symbol, []).append(
                LiveEntry(
                    int(e.id),
                    e.intent_id,
                    e.symbol,
                    e.side,
                    float(e.qty),
                    float(e.ref_price),
                    e.status,
                    e.attempts,
                )
            )
        book = cls(positions, entries, {})
        book.know(conn, account, symbols)
        return book

    def know(self, conn: Connection, account: str, symbols: Sequence[str]) -> None:
        """Read the last entry of the symbols not seen yet (the cooldown's reference)."""
        missing = sorted(set(symbols) - self.symbols_known)
        if not missing:
            return
        O = _ORDERS.c  # noqa: E741 (a column namespace)
        last = conn.execute(
            select(O.symbol, func.max(O.signal_minute))
            .where(O.account == account, O.purpose == ENTRY, O.status.in_(ENTERED), O.symbol.in_(missing))
            .group_by(O.symbol)
        ).all()
        # Aware UTC datetimes (``UtcDateTime``: ``max()`` of the column too, on SQLite as well).
        self.last_entry.update({str(symbol): at for symbol, at in last})
        self.symbols_known.update(missing)

    # -- what the checks read ----------------------------------------------------------------------

    def snapshot(
        self, *, equity: float, day_start_equity: float, halted: bool, halt_reason: str | None, symbol: str
    ) -> AccountSnapshot:
        held = [p for group in self.positions.values() for p in group if p.status == OPEN]
        waiting = [e for group in self.entries.values() for e in group if e.status in ACTIVE_ORDER]
        held_here = [p for p in held if p.symbol == symbol]
        waiting_here = [e for e in waiting if e.symbol == symbol]
        return AccountSnapshot(
            equity=equity,
            day_start_equity=day_start_equity,
            halted=halted,
            halt_reason=halt_reason,
            open_entries=len(held) + len(waiting),
            exposure_total=sum(p.value for p in held) + sum(e.value for e in waiting),
            symbol_entries=len(held_here) + len(waiting_here),
            symbol_exposure=sum(p.value for p in held_here) + sum(e.value for e in waiting_here),
            last_entry_minute=self.last_entry.get(symbol),
        )

    def open_positions(self, symbol: str, side: str) -> list[HeldPosition]:
        return [p for p in self.positions.get(symbol, []) if p.status == OPEN and p.side == side]

    def unsent_entries(self, symbol: str, order_side: str, status: str) -> list[LiveEntry]:
        """Entries nobody has sent anywhere yet: they can simply be dropped."""
        return [
            e
            for e in self.entries.get(symbol, [])
            if e.side == order_side and e.status == status and e.attempts == 0
        ]

    # -- what the decisions change -----------------------------------------------------------------

    def close(self, pos: HeldPosition, exit_order: dict[str, Any]) -> None:
        pos.status = CLOSING
        self.new_orders.append(exit_order)
        self.closing.append((pos.id, str(exit_order["client_order_id"])))

    def cancel(self, entry: LiveEntry, why: str) -> None:
        entry.status = CANCELLED
        if entry.row is not None:  # decided earlier in this batch, not written yet
            entry.row.update(status=CANCELLED, reason=why)
        elif entry.id is not None:
            self.cancelled.append((entry.id, why))
        if entry.intent_id is not None:
            self.intents[entry.intent_id] = (CANCELLED, why)

    def add_entry(self, order: dict[str, Any]) -> None:
        self.new_orders.append(order)
        symbol = str(order["symbol"])
        self.entries.setdefault(symbol, []).append(
            LiveEntry(
                None,
                order["intent_id"],
                symbol,
                str(order["side"]),
                float(order["qty"]),
                float(order["ref_price"]),
                str(order["status"]),
                0,
                order,
            )
        )
        self.last_entry[symbol] = order["signal_minute"]

    def set_intent(self, intent_id: int, status: str, why: str | None) -> None:
        self.intents[intent_id] = (status, why)

    # -- back to the database ----------------------------------------------------------------------

    def write(self, conn: Connection, now: datetime) -> None:
        """Everything decided so far, in at most four statements; the book can go on deciding."""
        ids: dict[str, int] = {}
        if self.new_orders:
            rows = conn.execute(
                insert(_ORDERS).returning(_ORDERS.c.id, _ORDERS.c.client_order_id), self.new_orders
            )
            ids = {r.client_order_id: int(r.id) for r in rows}
            for group in self.entries.values():
                for entry in group:
                    if entry.row is not None:
                        entry.id, entry.row = ids[str(entry.row["client_order_id"])], None
        if self.closing:
            conn.execute(
                update(_POSITIONS)
                .where(_POSITIONS.c.id == bindparam("pid"))
                .values(status=CLOSING, exit_order_id=bindparam("oid"), updated_at=now),
                [{"pid": pid, "oid": ids[cid]} for pid, cid in self.closing],
            )
        if self.cancelled:
            conn.execute(
                update(_ORDERS)
                .where(_ORDERS.c.id == bindparam("oid"))
                .values(status=CANCELLED, reason=bindparam("why"), updated_at=now),
                [{"oid": oid, "why": why} for oid, why in self.cancelled],
            )
        if self.intents:
            conn.execute(
                update(_INTENTS)
                .where(_INTENTS.c.id == bindparam("iid"))
                .values(status=bindparam("st"), reason=bindparam("why"), updated_at=now),
                [{"iid": iid, "st": st, "why": why} for iid, (st, why) in self.intents.items()],
            )
        self.new_orders, self.closing, self.cancelled, self.intents = [], [], [], {}
