"""Every risk limit refuses an intent with its own reason, stored on the intent; nothing is ordered."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core.settings import Settings
from tests.support.trading import (
    account,
    intent,
    intent_row,
    make_trader,
    minute,
    ms,
    orders,
    positions,
    write_candles,
)
from trading.risk import Rejection, RiskLimits, code_of

BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"


def rejected(trader: object, message: object, code: Rejection) -> None:
    result = trader.execute(message)  # type: ignore[attr-defined]
    assert result.status == "rejected", result
    assert code_of(result.reason) == code.value, result.reason
    row = intent_row(trader, message.client_order_id)  # type: ignore[arg-type, attr-defined]
    assert (row.status, row.reason) == ("rejected", result.reason)
    assert orders(trader, client_order_id=message.client_order_id) == []  # type: ignore[arg-type, attr-defined]


def test_limits_come_from_the_settings_and_the_seed_keys() -> None:
    s = Settings(
        ml_integration={"signals": {"confidence_threshold": 0.65, "max_signals_per_symbol": 3}},
        trading={"max_open_positions": 4, "cooldown_minutes": 7},
    )
    limits = RiskLimits.from_settings(s)
    assert (limits.min_confidence, limits.max_signals_per_symbol) == (0.65, 3)
    assert (limits.max_open_positions, limits.cooldown_minutes) == (4, 7)
    assert RiskLimits.from_settings(Settings(trading={"min_confidence": 0.9})).min_confidence == 0.9
    assert set(limits.describe()) >= {"max_open_positions", "daily_loss_limit", "cooldown"}


def test_expired_intent(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    trader.clock.now = minute(20)  # type: ignore[attr-defined]
    rejected(trader, intent(BTC, 0, expires_in=15), Rejection.EXPIRED)


def test_min_confidence(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url, min_confidence=0.7)
    rejected(trader, intent(BTC, 0, confidence=0.65), Rejection.MIN_CONFIDENCE)
    assert trader.execute(intent(ETH, 0, confidence=0.75)).status == "submitted"


def test_max_open_positions_counts_pending_and_filled(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url, max_open_positions=2)
    trader.execute(intent(BTC, 0))
    write_candles(trader, BTC, [(0, 100.0, 100.5, 99.9, 100.2)])
    trader.clock.now = minute(1)  # type: ignore[attr-defined]
    trader.execute(intent(ETH, 1))  # BTC fills first (one open position), ETH pending
    assert len(positions(trader)) == 1
    rejected(trader, intent(SOL, 1), Rejection.MAX_OPEN_POSITIONS)


def test_max_exposure_per_symbol(sqlite_url: str) -> None:
    # 37.5 units x 100 = 3,750 notional; 0.3 x 10,000 equity = 3,000 allowed in one symbol.
    trader = make_trader(sqlite_url, max_exposure_per_symbol=0.3)
    rejected(trader, intent(BTC, 0), Rejection.MAX_EXPOSURE_PER_SYMBOL)


def test_max_exposure_total(sqlite_url: str) -> None:
    # Two entries of 3,750 fit under 0.8 x 10,000 = 8,000; a third does not.
    trader = make_trader(sqlite_url, max_exposure_total=0.8)
    assert trader.execute(intent(BTC, 0)).status == "submitted"
    assert trader.execute(intent(ETH, 0)).status == "submitted"
    rejected(trader, intent(SOL, 0), Rejection.MAX_EXPOSURE_TOTAL)


def test_max_signals_per_symbol_is_the_seed_key(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)  # ml_integration.signals.max_signals_per_symbol = 1
    trader.execute(intent(BTC, 0))
    trader.clock.now = minute(1)  # type: ignore[attr-defined]
    rejected(trader, intent(BTC, 1), Rejection.MAX_SIGNALS_PER_SYMBOL)


def test_cooldown_per_symbol(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_ML_INTEGRATION__SIGNALS__MAX_SIGNALS_PER_SYMBOL", "3")
    trader = make_trader(sqlite_url, cooldown_minutes=10)
    trader.execute(intent(BTC, 0))
    trader.clock.now = minute(5)  # type: ignore[attr-defined]
    rejected(trader, intent(BTC, 5), Rejection.COOLDOWN)
    assert trader.execute(intent(ETH, 5)).status == "submitted"  # other symbols are not cooling down
    trader.clock.now = minute(10)  # type: ignore[attr-defined]
    assert trader.execute(intent(BTC, 10, expires_in=15)).status == "submitted"


def test_daily_loss_limit_counts_unrealised_losses(sqlite_url: str) -> None:
    # 0.1 % of 10,000 = 10; the long of 37.5 marked 1.1 lower loses about 41 (plus the fee).
    trader = make_trader(sqlite_url, daily_loss_limit=0.001)
    trader.execute(intent(BTC, 0))
    write_candles(trader, BTC, [(0, 100.5, 100.6, 99.4, 99.5)])
    trader.clock.now = minute(1)  # type: ignore[attr-defined]
    rejected(trader, intent(ETH, 1), Rejection.DAILY_LOSS_LIMIT)
    acct = account(trader)
    assert acct.equity - acct.day_start_equity < -10


def test_daily_loss_counts_from_the_start_of_the_utc_day(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url, daily_loss_limit=0.001)
    trader.execute(intent(BTC, 0))
    write_candles(trader, BTC, [(0, 100.5, 100.6, 99.4, 99.5)])
    trader.tick(ms(1))
    # A new UTC day: the day starts from the equity it has, losses of yesterday no longer count.
    next_day = minute(0).replace(hour=0) + timedelta(days=1, minutes=1)
    trader.clock.now = next_day  # type: ignore[attr-defined]
    later = intent(ETH, 0).model_copy(
        update={
            "minute": next_day,
            "expires_at": next_day + timedelta(minutes=15),
            "client_order_id": "mls-nextday-eth",
        }
    )
    assert trader.execute(later).status == "submitted"
    acct = account(trader)
    assert acct.day_start_equity == pytest.approx(acct.equity)


def test_kill_switch(sqlite_url: str) -> None:
    from trading.executor import set_halted

    trader = make_trader(sqlite_url)
    set_halted(trader.engine, trader.settings, True, "drill")
    rejected(trader, intent(BTC, 0), Rejection.KILL_SWITCH)


def test_below_min_notional_and_no_stop(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url, paper_markets={ETH: {"qty_step": 0.001, "min_notional": 1e6}})
    rejected(trader, intent(ETH, 0), Rejection.BELOW_MIN_NOTIONAL)
    rejected(trader, intent(BTC, 0, stop=None), Rejection.NO_STOP_LOSS)
