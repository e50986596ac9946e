"""Helpers for the trading tests: scripted candles, intents and a Trader with a settable clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import Settings
from core.timegrid import dt_to_ms
from data import db
from data.candles import candles_from_rows
from data.models import OrderIntent, TradingAccount, TradingFill, TradingOrder, TradingPosition
from data.store import CandleStore
from data.validation import ValidatedBatch
from trading.executor import Trader
from trading.intents import OrderIntentMessage, client_order_id
from trading.live import LiveBroker

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
EXCHANGE = "simulator"
# Round numbers for hand-worked expectations: 10 bps fee, 10 bps slippage, 1 % risk.
TRADING = {
    "paper_balance": 10_000.0,
    "fee_bps": 10.0,
    "slippage_bps": 10.0,
    "risk_per_trade": 0.01,
    "confidence_min_scale": 0.5,
    # The hand-worked sizes scale confidence from a 0.6 floor (the signals' default floor is 0.4).
    "min_confidence": 0.6,
    "max_leverage": 5.0,
    "max_exposure_total": 20.0,
    "max_exposure_per_symbol": 10.0,
    "cooldown_minutes": 0,
    "daily_loss_limit": 0.5,
}


def minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def ms(i: int) -> int:
    return dt_to_ms(minute(i))


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


def settings_for(url: str, **trading: Any) -> Settings:
    return Settings(database_url=url, trading={**TRADING, **trading})


def make_trader(
    url: str,
    clock: Clock | None = None,
    broker: LiveBroker | None = None,
    settings: Settings | None = None,
    **trading: Any,
) -> Trader:
    db.upgrade(url)
    settings = settings or settings_for(url, **trading)
    engine = db.get_engine(url)
    return Trader(
        settings,
        engine,
        CandleStore(engine),
        EXCHANGE,
        broker=broker,
        clock=clock or Clock(minute(0) + timedelta(seconds=5)),
    )


def write_candles(
    trader: Trader, symbol: str, rows: Sequence[tuple[int, float, float, float, float]]
) -> None:
    """``(minute index, open, high, low, close)`` rows."""
    frame = candles_from_rows([[ms(i), o, h, low, c, 1.0] for i, o, h, low, c in rows])
    frame["is_filled"] = False
    trader.store.write(EXCHANGE, [ValidatedBatch(symbol, frame, 0)])


def intent(
    symbol: str = "BTC/USDT:USDT",
    at: int = 0,
    direction: str = "LONG",
    *,
    confidence: float = 0.8,
    entry: float = 100.0,
    stop: float | None = 98.0,
    target: float | None = 104.0,
    expires_in: int | None = 15,
    version: str = "v1",
) -> OrderIntentMessage:
    when = minute(at)
    return OrderIntentMessage(
        client_order_id=client_order_id(symbol, when, version),
        signal_id=1,
        symbol=symbol,
        minute=when,
        model_version=version,
        direction=direction,
        confidence=confidence,
        entry_price=entry,
        stop_loss=stop,
        take_profit=target,
        expires_at=None if expires_in is None else when + timedelta(minutes=expires_in),
    )


Row = TypeVar("Row", OrderIntent, TradingAccount, TradingFill, TradingOrder, TradingPosition)


def rows(trader: Trader, model: type[Row], **where: Any) -> list[Row]:
    with Session(trader.engine) as s:
        stmt = select(model).filter_by(**where).order_by(model.id)
        return list(s.scalars(stmt).all())


def orders(trader: Trader, **where: Any) -> list[TradingOrder]:
    return rows(trader, TradingOrder, **where)


def positions(trader: Trader, **where: Any) -> list[TradingPosition]:
    return rows(trader, TradingPosition, **where)


def fills(trader: Trader, **where: Any) -> list[TradingFill]:
    return rows(trader, TradingFill, **where)


def intent_row(trader: Trader, client_id: str) -> OrderIntent:
    found = rows(trader, OrderIntent, client_order_id=client_id)
    assert len(found) == 1
    return found[0]


def account(trader: Trader) -> TradingAccount:
    found = rows(trader, TradingAccount, name=trader.account)
    assert len(found) == 1
    return found[0]


def order_queue_spy(monkeypatch: Any) -> list[Any]:
    """Every order intent the publish step sends through the ``orders`` queue port, in order (the
    intents are still sent)."""
    from tasks.signals import CeleryOrderQueue

    sent: list[Any] = []
    original = CeleryOrderQueue.send_intent

    def spy(self: CeleryOrderQueue, intent: Any) -> str:
        sent.append(intent)
        return original(self, intent)

    monkeypatch.setattr(CeleryOrderQueue, "send_intent", spy)
    return sent
