"""Read-only views of the trading tables for ``mlsignals trading status | history``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from data.models import OrderIntent, TradingAccount, TradingFill, TradingOrder, TradingPosition
from trading.accounts import midnight, utcnow
from trading.states import ACTIVE_ORDER, CLOSED, CLOSING, OPEN


@dataclass(frozen=True)
class AccountStatus:
    account: TradingAccount | None
    positions: list[TradingPosition]
    open_orders: list[TradingOrder]
    realised_total: float
    realised_today: float
    unrealised: float
    closed_today: int

    @property
    def day_pnl(self) -> float:
        if self.account is None:
            return 0.0
        return self.account.equity - self.account.day_start_equity


def account_status(engine: Engine, name: str, now: datetime | None = None) -> AccountStatus:
    today = midnight(now or utcnow())
    P, Ord = TradingPosition, TradingOrder
    with Session(engine) as s:
        acct = s.execute(select(TradingAccount).where(TradingAccount.name == name)).scalar_one_or_none()
        held = s.scalars(
            select(P).where(P.account == name, P.status.in_((OPEN, CLOSING))).order_by(P.symbol, P.id)
        ).all()
        waiting = s.scalars(
            select(Ord).where(Ord.account == name, Ord.status.in_(ACTIVE_ORDER)).order_by(Ord.id)
        ).all()
        realised_total = s.execute(
            select(func.coalesce(func.sum(P.realised_pnl), 0.0)).where(P.account == name, P.status == CLOSED)
        ).scalar_one()
        closed = s.execute(
            select(P.realised_pnl, P.closed_at).where(P.account == name, P.status == CLOSED)
        ).all()
    today_rows = [r.realised_pnl for r in closed if r.closed_at is not None and r.closed_at >= today]
    return AccountStatus(
        account=acct,
        positions=list(held),
        open_orders=list(waiting),
        realised_total=float(realised_total),
        realised_today=float(sum(today_rows)),
        unrealised=float(sum(p.unrealised_pnl for p in held)),
        closed_today=len(today_rows),
    )


def recent_orders(engine: Engine, name: str, limit: int, symbol: str | None = None) -> list[TradingOrder]:
    Ord = TradingOrder
    stmt = select(Ord).where(Ord.account == name)
    if symbol:
        stmt = stmt.where(Ord.symbol == symbol)
    with Session(engine) as s:
        return list(s.scalars(stmt.order_by(Ord.id.desc()).limit(limit)).all())


def recent_fills(engine: Engine, name: str, limit: int, symbol: str | None = None) -> list[TradingFill]:
    F = TradingFill
    stmt = select(F).where(F.account == name)
    if symbol:
        stmt = stmt.where(F.symbol == symbol)
    with Session(engine) as s:
        return list(s.scalars(stmt.order_by(F.id.desc()).limit(limit)).all())


def recent_intents(engine: Engine, limit: int, symbol: str | None = None) -> list[OrderIntent]:
    stmt = select(OrderIntent)
    if symbol:
        stmt = stmt.where(OrderIntent.symbol == symbol)
    with Session(engine) as s:
        return list(s.scalars(stmt.order_by(OrderIntent.id.desc()).limit(limit)).all())
