"""The paper broker on scripted candles: fills, stop-loss and take-profit exits, PnL, idempotency.

Settings (tests/support/trading.py): 10,000 paper balance, 10 bps fee, 10 bps slippage, 1 % risk,
confidence 0.8 over a 0.6 threshold -> scale 0.75 -> 75 at risk; entry 100 and stop 98 -> 37.5 units.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from data import db
from tests.support.trading import (
    Clock,
    account,
    fills,
    intent,
    intent_row,
    make_trader,
    minute,
    ms,
    orders,
    positions,
    write_candles,
)
from trading.executor import set_halted
from trading.intake import record_intent
from trading.paper import Candle, FillModel, exit_fill_price, exit_on_candle
from trading.risk import code_of
from trading.sizing import round_down

BTC = "BTC/USDT:USDT"
QTY = 37.5
FILL = 100.5 * 1.001  # open 100.5, bought 10 bps higher
ENTRY_FEE = FILL * QTY * 0.001


def test_exit_rules_on_one_candle() -> None:
    c = Candle(0, open=100, high=105, low=97, close=101)
    assert exit_on_candle("long", 98, 104, c) == ("stop_loss", 98)  # both reached: the stop first
    assert exit_on_candle("long", None, 104, c) == ("take_profit", 104)
    assert exit_on_candle("short", 102, 96, c) == ("stop_loss", 102)
    assert exit_on_candle("short", None, 98, c) == ("take_profit", 98)
    assert exit_on_candle("long", 90, 110, c) is None
    gap_down = Candle(0, open=95, high=96, low=94, close=95)
    assert exit_on_candle("long", 98, 104, gap_down) == ("stop_loss", 95)  # filled at the worse open
    gap_up = Candle(0, open=106, high=107, low=105, close=106)
    assert exit_on_candle("long", 98, 104, gap_up) == ("take_profit", 106)  # a limit fills better
    model = FillModel(fee_bps=10, slippage_bps=10)
    assert exit_fill_price(model, "long", "stop_loss", 98) == pytest.approx(98 * 0.999)
    assert exit_fill_price(model, "short", "stop_loss", 102) == pytest.approx(102 * 1.001)
    assert exit_fill_price(model, "long", "take_profit", 104) == 104


def test_fill_at_the_next_candle_open_then_take_profit(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    write_candles(trader, BTC, [(-1, 99.8, 100.2, 99.7, 100.0)])  # what the signal saw
    first = intent(BTC, 0, entry=100, stop=98, target=104)
    result = trader.execute(first)
    assert (result.created, result.status) == (True, "submitted")
    [order] = orders(trader)
    assert (order.status, order.qty, order.side, order.purpose) == ("pending", QTY, "buy", "entry")

    # Nothing to fill on yet: the candle opening at the signal's minute has not closed.
    assert trader.tick(ms(0)).fills == 0
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8)])
    report = trader.tick(ms(1))
    assert report.fills == 1
    [pos] = positions(trader)
    assert pos.status == "open"
    assert pos.entry_price == pytest.approx(FILL)
    assert pos.mark_price == 100.8
    assert pos.unrealised_pnl == pytest.approx((100.8 - FILL) * QTY)
    acct = account(trader)
    assert acct.balance == pytest.approx(10_000 - ENTRY_FEE)
    assert acct.equity == pytest.approx(10_000 - ENTRY_FEE + (100.8 - FILL) * QTY)
    assert intent_row(trader, first.client_order_id).status == "filled"

    write_candles(trader, BTC, [(1, 101.0, 104.5, 100.9, 104.2)])
    report = trader.tick(ms(2))
    assert report.exits == {"take_profit": 1}
    [pos] = positions(trader)
    exit_fee = 104 * QTY * 0.001
    gross = (104 - FILL) * QTY
    assert (pos.status, pos.exit_reason, pos.exit_price) == ("closed", "take_profit", 104)
    assert pos.realised_pnl == pytest.approx(gross - ENTRY_FEE - exit_fee)
    acct = account(trader)
    assert acct.balance == pytest.approx(10_000 + gross - ENTRY_FEE - exit_fee)
    assert acct.equity == pytest.approx(acct.balance)
    assert [(f.kind, f.side) for f in fills(trader)] == [("entry", "buy"), ("take_profit", "sell")]
    assert [f.realised_pnl for f in fills(trader)] == [0.0, pytest.approx(gross)]


def test_stop_loss_on_the_fill_candle_and_stop_first_when_both_hit(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    trader.execute(intent(BTC, 0, entry=100, stop=98, target=104))
    # The fill candle itself reaches both the stop and the target: the stop is assumed first.
    write_candles(trader, BTC, [(0, 100.5, 105.0, 97.0, 101.0)])
    report = trader.tick(ms(1))
    assert (report.fills, report.exits) == (1, {"stop_loss": 1})
    [pos] = positions(trader)
    exit_price = 98 * 0.999
    assert pos.exit_reason == "stop_loss"
    assert pos.exit_price == pytest.approx(exit_price)
    gross = (exit_price - FILL) * QTY
    exit_fee = exit_price * QTY * 0.001
    assert pos.realised_pnl == pytest.approx(gross - ENTRY_FEE - exit_fee)
    # The loss at the stop is the 75 budgeted, plus the slippage on both fills, plus both fees.
    slippage = (FILL - 100) * QTY + (98 - exit_price) * QTY
    assert -pos.realised_pnl == pytest.approx(75 + slippage + ENTRY_FEE + exit_fee)


def test_short_with_a_gap_through_the_stop(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    trader.execute(intent(BTC, 0, "SHORT", entry=100, stop=102, target=96))
    write_candles(trader, BTC, [(0, 100.0, 100.5, 99.5, 100.2), (1, 103.0, 103.5, 102.5, 103.0)])
    report = trader.tick(ms(2))
    assert report.exits == {"stop_loss": 1}
    [pos] = positions(trader)
    entry = 100.0 * 0.999  # sold 10 bps lower
    assert pos.side == "short"
    assert pos.entry_price == pytest.approx(entry)
    assert pos.exit_price == pytest.approx(103.0 * 1.001)  # the gap open, bought 10 bps higher
    assert fills(trader)[1].realised_pnl == pytest.approx((entry - 103.0 * 1.001) * QTY)


def test_opposite_signal_closes_the_position_first(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    trader.execute(intent(BTC, 0, entry=100, stop=98, target=110))
    write_candles(trader, BTC, [(0, 100.0, 100.4, 99.9, 100.2), (1, 100.2, 100.6, 100.1, 100.5)])
    trader.clock.now = minute(2) + timedelta(seconds=5)  # type: ignore[attr-defined]
    short = intent(BTC, 2, "SHORT", entry=100.5, stop=102.5, target=96)
    assert trader.execute(short).status == "submitted"
    closing = positions(trader)[0]
    assert closing.status == "closing"
    exits = orders(trader, purpose="exit")
    assert [(o.status, o.reason, o.side, o.qty) for o in exits] == [
        ("pending", "opposite_signal", "sell", QTY)
    ]
    # Sized on the equity after marking the long at the last close: 0.75 % of it over 2 per unit.
    entry = orders(trader, client_order_id=short.client_order_id)[0]
    assert (entry.side, entry.qty) == ("sell", round_down(account(trader).equity * 0.0075 / 2, 0.001))

    write_candles(trader, BTC, [(2, 100.6, 100.9, 100.3, 100.4)])
    report = trader.tick(ms(3))
    assert report.exits == {"opposite_signal": 1}
    assert report.fills == 1
    old, new = positions(trader)
    assert (old.status, old.exit_reason) == ("closed", "opposite_signal")
    assert old.exit_price == pytest.approx(100.6 * 0.999)
    assert (new.status, new.side) == ("open", "short")
    assert new.entry_price == pytest.approx(100.6 * 0.999)


def test_opposite_signal_inside_the_cooldown_closes_but_does_not_reenter(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url, cooldown_minutes=15)
    trader.execute(intent(BTC, 0))
    write_candles(trader, BTC, [(0, 100.0, 100.4, 99.9, 100.2)])
    trader.tick(ms(1))
    trader.clock.now = minute(3)  # type: ignore[attr-defined]
    result = trader.execute(intent(BTC, 3, "SHORT", entry=100.2, stop=102, target=97))
    assert result.status == "rejected"
    assert code_of(result.reason) == "cooldown"
    assert "closed 1 opposite position" in (result.reason or "")
    assert positions(trader)[0].status == "closing"


def test_same_intent_twice_places_one_order(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    one = intent(BTC, 0)
    first, second = trader.execute(one), trader.execute(one)
    assert (first.created, second.created) == (True, False)
    assert second.status == first.status == "submitted"
    assert len(orders(trader)) == 1


def test_a_crash_after_recording_is_decided_on_redelivery(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    one = intent(BTC, 0)
    assert record_intent(trader.engine, one)  # the worker died right after this commit
    result = trader.execute(one)  # the redelivered message
    assert (result.created, result.status) == (False, "submitted")
    assert len(orders(trader)) == 1


def test_the_minute_step_is_idempotent(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    trader.execute(intent(BTC, 0))
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8)])
    assert trader.tick(ms(1)).fills == 1
    again = trader.tick(ms(1))
    assert again.skipped
    assert trader.tick(ms(2)).fills == 0
    assert len(fills(trader)) == 1


def test_late_candles_are_still_checked(sqlite_url: str) -> None:
    """A minute ticked before its candle arrived: the position's own watermark catches up later."""
    trader = make_trader(sqlite_url)
    trader.execute(intent(BTC, 0))
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8)])
    trader.tick(ms(1))
    trader.tick(ms(2))  # candle 1 is late
    write_candles(trader, BTC, [(1, 100.8, 100.9, 97.5, 98.0), (2, 98.0, 98.5, 97.8, 98.2)])
    report = trader.tick(ms(3))
    assert report.exits == {"stop_loss": 1}
    assert positions(trader)[0].exit_price == pytest.approx(98 * 0.999)


def test_the_execute_brings_the_account_up_to_its_minute(sqlite_url: str) -> None:
    """No separate step ran: the next intent fills the earlier order before it is checked."""
    trader = make_trader(sqlite_url, max_signals_per_symbol=1)
    trader.execute(intent(BTC, 0))
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8)])
    trader.clock.now = minute(1)  # type: ignore[attr-defined]
    trader.execute(intent("ETH/USDT:USDT", 1))
    assert [p.symbol for p in positions(trader)] == [BTC]


def test_a_pending_order_expires_with_its_signal(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    one = intent(BTC, 0, expires_in=2)
    trader.execute(one)
    report = trader.tick(ms(3))  # no candle ever came
    assert report.expired == 1
    assert orders(trader)[0].status == "expired"
    assert intent_row(trader, one.client_order_id).status == "expired"


def test_kill_switch_cancels_a_pending_entry_and_refuses_new_ones(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    trader.execute(intent(BTC, 0))
    set_halted(trader.engine, trader.settings, True, "maintenance")
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8)])
    assert trader.tick(ms(1)).cancelled == 1
    assert code_of(orders(trader)[0].reason) == "kill_switch"
    refused = trader.execute(intent("ETH/USDT:USDT", 0))
    assert (refused.status, code_of(refused.reason)) == ("rejected", "kill_switch")
    assert "maintenance" in (refused.reason or "")
    set_halted(trader.engine, trader.settings, False)
    assert trader.execute(intent("SOL/USDT:USDT", 0)).status == "submitted"


def test_concurrent_workers_never_exceed_a_limit(db_url: str) -> None:
    """Forty intents at once from eight threads, limit ten: the account lock serialises decisions."""
    db.upgrade(db_url)
    trader = make_trader(db_url, max_open_positions=10)
    trader.ensure_account()
    many = [intent(f"S{i:02d}/USDT:USDT", 0) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(trader.execute, many))
    accepted = [r for r in results if r.status == "submitted"]
    rejected = {code_of(r.reason) for r in results if r.status == "rejected"}
    assert len(accepted) == 10
    assert rejected == {"max_open_positions"}
    assert len(orders(trader)) == 10


def test_the_paper_balance_is_configurable(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url, paper_balance=2_500.0, clock=Clock(minute(0)))
    trader.ensure_account()
    acct = account(trader)
    assert (acct.balance, acct.equity, acct.initial_balance) == (2_500.0, 2_500.0, 2_500.0)


def test_two_processes_see_each_others_decisions(sqlite_url: str) -> None:
    """Each executor keeps what it read of the account between batches only while nobody else
    has written: a second process's order counts against the first one's limits at once."""
    first = make_trader(sqlite_url, max_open_positions=2)
    second = make_trader(sqlite_url, max_open_positions=2)
    assert first.execute(intent(BTC, 0)).status == "submitted"
    assert second.execute(intent("ETH/USDT:USDT", 0)).status == "submitted"
    refused = first.execute(intent("SOL/USDT:USDT", 0))
    assert code_of(refused.reason) == "max_open_positions"
