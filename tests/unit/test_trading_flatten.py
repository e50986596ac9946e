"""``Trader.flatten``: every open position closed now, once, whatever the exchange does meanwhile.

Paper on scripted candles (tests/support/trading.py: 10 bps fee, 10 bps slippage, 37.5 units per
hand-worked entry); live against the local Bybit look-alike, with 100-300 ms on every private request,
a 429, a lost reply, a rejection and an outage.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from cli.main import app as cli
from core.errors import BrokerUnavailableError
from core.settings import reset_settings_cache
from tests.fakes.exchange_server import (
    ORDER_CREATE_PATH,
    POSITION_LIST_PATH,
    FakeExchangeServer,
    Fault,
    running_exchange_server,
)
from tests.support.live_trading import (
    API_KEY,
    API_SECRET,
    UNREACHABLE,
    at_market,
    by_hand,
    creates,
    live_trader,
)
from tests.support.trading import (
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
from trading.executor import Trader, set_halted
from trading.risk import code_of

BTC, ETH, SOL = "BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"
QTY = 37.5
FILL = 100.5 * 1.001  # open 100.5, bought 10 bps higher
ENTRY_FEE = FILL * QTY * 0.001
HALT = "flatten: end of the trial"
LIVE_TIMEOUT_MS = 3000


def at(trader: Trader, i: int, seconds: int = 5) -> None:
    trader.clock.now = minute(i) + timedelta(seconds=seconds)  # type: ignore[attr-defined]


def long_btc_open(trader: Trader) -> None:
    """A BTC long filled on candle 0 at ``FILL``; candle 1 closed at 101.2 (the mark)."""
    trader.execute(intent(BTC, 0, entry=100, stop=98, target=104))
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8), (1, 101.0, 101.5, 100.9, 101.2)])


# -- paper -----------------------------------------------------------------------------------------


def test_paper_flatten_closes_at_the_mark_with_slippage_and_fee(db_url: str) -> None:
    trader = make_trader(db_url)
    long_btc_open(trader)
    at(trader, 2)
    waiting = intent(ETH, 2, entry=100, stop=98, target=104)
    assert trader.execute(waiting).status == "submitted"  # pending: its candle opens at 2

    report = trader.flatten(halt_reason=HALT)

    exit_price = 101.2 * 0.999  # the mark (candle 1's close), sold 10 bps lower
    exit_fee = exit_price * QTY * 0.001
    gross = (exit_price - FILL) * QTY
    [pos] = positions(trader)
    assert (pos.status, pos.exit_reason) == ("closed", "flatten")
    assert pos.exit_price == pytest.approx(exit_price)
    assert pos.realised_pnl == pytest.approx(gross - ENTRY_FEE - exit_fee)
    [flat] = report.positions
    assert (flat.symbol, flat.status, flat.marked_at) == (BTC, "closed", minute(2))
    assert flat.realised_pnl == pytest.approx(pos.realised_pnl)
    assert report.complete
    assert report.cancelled_orders == 1
    acct = account(trader)
    assert acct.balance == pytest.approx(10_000 + gross - ENTRY_FEE - exit_fee)
    assert acct.equity == pytest.approx(acct.balance)
    assert (acct.halted, acct.halt_reason) == (True, HALT)
    assert [(f.kind, f.side) for f in fills(trader)] == [("entry", "buy"), ("flatten", "sell")]
    assert fills(trader)[1].candle_open_ms == ms(1)
    exit_order = orders(trader, purpose="exit")[0]
    assert (exit_order.status, exit_order.reason, exit_order.qty) == ("filled", "flatten", QTY)
    entry = orders(trader, client_order_id=waiting.client_order_id)[0]
    assert (entry.status, entry.reason) == ("cancelled", "cancelled by a flatten")
    assert intent_row(trader, waiting.client_order_id).status == "cancelled"

    # Later candles fill nothing: the waiting entry is gone, and the halt refuses new intents.
    write_candles(trader, ETH, [(2, 100.0, 100.4, 99.9, 100.2)])
    write_candles(trader, BTC, [(2, 101.2, 101.3, 90.0, 91.0)])  # would have hit the stop
    at(trader, 3)
    assert trader.tick(ms(3)).fills == 0
    refused = trader.execute(intent(SOL, 3))
    assert (refused.status, code_of(refused.reason)) == ("rejected", "kill_switch")
    assert len(positions(trader)) == 1
    assert account(trader).balance == pytest.approx(acct.balance)


def test_paper_flatten_twice_closes_once(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    long_btc_open(trader)
    at(trader, 2)
    # The entry still waits for its step: it fills (candle 0 closed) before the halt, then closes.
    assert len(trader.flatten(halt_reason=HALT).positions) == 1
    again = trader.flatten(halt_reason=HALT)
    assert (again.positions, again.cancelled_orders, again.complete) == ([], 0, True)
    assert len(fills(trader)) == 2


def test_paper_flatten_first_takes_the_stop_the_closed_candles_reached(sqlite_url: str) -> None:
    """The step up to now runs first: a stop that candle 1 hit is the exit, not the flatten."""
    trader = make_trader(sqlite_url)
    trader.execute(intent(BTC, 0, entry=100, stop=98, target=104))
    write_candles(trader, BTC, [(0, 100.5, 101.0, 100.2, 100.8), (1, 100.0, 100.1, 97.0, 97.5)])
    at(trader, 2)
    report = trader.flatten(halt_reason=HALT)
    assert report.positions == []
    [pos] = positions(trader)
    assert (pos.status, pos.exit_reason) == ("closed", "stop_loss")


def test_paper_flatten_replaces_a_pending_opposite_exit(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    long_btc_open(trader)
    at(trader, 2)
    short = intent(BTC, 2, "SHORT", entry=101.2, stop=103, target=97)
    assert trader.execute(short).status == "submitted"
    assert positions(trader)[0].status == "closing"  # its exit waits for candle 2

    report = trader.flatten(halt_reason=HALT)
    [pos] = positions(trader)
    assert (pos.status, pos.exit_reason) == ("closed", "flatten")
    assert report.cancelled_orders == 2  # the opposite signal's exit and its short entry
    statuses = {(o.purpose, o.reason): o.status for o in orders(trader)}
    assert statuses[("exit", "cancelled by a flatten")] == "cancelled"
    assert statuses[("exit", "flatten")] == "filled"
    write_candles(trader, BTC, [(2, 101.0, 101.1, 100.8, 101.0)])
    at(trader, 3)
    trader.tick(ms(3))
    assert len(positions(trader)) == 1  # the short never opened


def test_paper_flatten_of_some_symbols_keeps_the_others(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    long_btc_open(trader)
    trader.execute(intent(ETH, 0, "SHORT", entry=50, stop=51, target=48))
    write_candles(trader, ETH, [(0, 50.0, 50.2, 49.8, 49.9), (1, 49.9, 50.0, 49.5, 49.6)])
    at(trader, 2)
    report = trader.flatten([ETH], halt_reason=None)
    assert [p.symbol for p in report.positions] == [ETH]
    btc, eth = positions(trader)
    assert (btc.status, eth.status) == ("open", "closed")
    acct = account(trader)
    assert acct.equity == pytest.approx(acct.balance + btc.unrealised_pnl)
    assert not acct.halted  # no halt asked for


def test_a_halt_already_on_keeps_its_reason(sqlite_url: str) -> None:
    trader = make_trader(sqlite_url)
    long_btc_open(trader)
    set_halted(trader.engine, trader.settings, True, "quality_breaker: hit rate 0.31 below 0.45")
    at(trader, 2)
    trader.flatten(halt_reason=HALT)
    assert code_of(account(trader).halt_reason) == "quality_breaker"


# -- live ------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeExchangeServer]:
    # Every private request takes 100 to 300 ms, as Bybit's do from a nearby region.
    with running_exchange_server(private_latency_s=(0.1, 0.3)) as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
def live(server: FakeExchangeServer, db_url: str) -> Iterator[Trader]:
    # Answers take up to 300 ms here: only the injected faults may time out.
    t = live_trader(server, db_url, timeout_ms=LIVE_TIMEOUT_MS)
    yield t
    assert t.broker is not None
    t.broker.close()


def reduce_only(server: FakeExchangeServer) -> list[tuple[str, str, float]]:
    """The reduce-only orders the exchange accepted: (symbol, side, qty)."""
    return [(o.symbol, o.side, o.qty) for o in server.exchange_orders() if o.reduce_only]


def open_two(live: Trader, server: FakeExchangeServer) -> tuple[float, float]:
    live.execute(at_market(server, BTC, 0))
    live.execute(at_market(server, ETH, 0, "SHORT"))
    btc, eth = positions(live)
    at(live, 1)
    return btc.qty, eth.qty


def test_live_flatten_sends_one_reduce_only_order_per_position(
    live: Trader, server: FakeExchangeServer
) -> None:
    btc_qty, eth_qty = open_two(live, server)
    report = live.flatten(halt_reason=HALT)
    assert report.complete, report
    assert sorted(reduce_only(server)) == [("BTCUSDT", "Sell", btc_qty), ("ETHUSDT", "Buy", eth_qty)]
    assert server.account.positions == {}
    btc, eth = positions(live)
    assert [(p.status, p.exit_reason) for p in (btc, eth)] == [("closed", "flatten")] * 2
    # The exchange's own fill price: the fake's candles move with the wall clock's minute, so its
    # last price read after the flatten may already be the next minute's.
    [btc_exit] = [o for o in server.exchange_orders() if o.reduce_only and o.symbol == "BTCUSDT"]
    assert btc.exit_price == pytest.approx(btc_exit.avg_price)
    assert account(live).balance == pytest.approx(server.account.wallet)
    assert account(live).halted
    assert [f.kind for f in fills(live)] == ["entry", "entry", "flatten", "flatten"]
    # Run again: nothing is open, nothing is sent.
    sent = len(creates(server))
    assert live.flatten(halt_reason=HALT).positions == []
    assert len(creates(server)) == sent


def test_a_429_on_an_exit_is_finished_by_a_rerun_without_a_second_order(
    live: Trader, server: FakeExchangeServer
) -> None:
    btc_qty, _ = open_two(live, server)
    server.inject(Fault.rate_limit(http_status=429), path=ORDER_CREATE_PATH)
    first = live.flatten(halt_reason=HALT)
    assert not first.complete
    stuck = [p for p in first.positions if p.status != "closed"]
    assert [(p.symbol, p.status) for p in stuck] == [(BTC, "closing")]
    assert "RateLimitExceeded" in (stuck[0].problem or "")
    assert "BTCUSDT" in server.account.positions  # still held on the exchange

    second = live.flatten(halt_reason=HALT)
    assert second.complete, second
    assert [(s, side) for s, side, _ in reduce_only(server)].count(("BTCUSDT", "Sell")) == 1
    assert server.account.positions == {}
    # The rerun sent the same exit (looked up first, then created under its client order id).
    btc_exit = orders(live, symbol=BTC, purpose="exit")
    assert len(btc_exit) == 1
    assert (btc_exit[0].status, btc_exit[0].attempts, btc_exit[0].qty) == ("filled", 2, btc_qty)


def test_a_lost_reply_on_an_exit_is_found_filled(live: Trader, server: FakeExchangeServer) -> None:
    open_two(live, server)
    server.inject(Fault.lost_reply(500), path=ORDER_CREATE_PATH)  # done on the exchange, answered 500
    report = live.flatten(halt_reason=HALT)
    assert report.complete, report
    assert len(reduce_only(server)) == 2
    assert [p.exit_reason for p in positions(live)] == ["flatten", "flatten"]


def test_an_outage_fails_clearly_and_sends_nothing_until_it_ends(
    live: Trader, server: FakeExchangeServer
) -> None:
    open_two(live, server)
    sent = len(creates(server))
    server.inject(Fault.server_error(503), times=UNREACHABLE, path=POSITION_LIST_PATH)
    with pytest.raises(BrokerUnavailableError, match="fetch_positions"):
        live.flatten(halt_reason=HALT)
    assert len(creates(server)) == sent
    assert [p.status for p in positions(live)] == ["open", "open"]
    assert account(live).halted  # no new entry while the exchange is away
    assert live.flatten(halt_reason=HALT).complete  # the exchange is back
    assert server.account.positions == {}


def test_a_rejected_exit_is_reported_and_a_rerun_sends_a_new_one(
    live: Trader, server: FakeExchangeServer
) -> None:
    open_two(live, server)
    server.inject(Fault.bybit_error(110007, "ab not enough for new order"), path=ORDER_CREATE_PATH)
    first = live.flatten(halt_reason=HALT)
    [stuck] = [p for p in first.positions if p.status != "closed"]
    assert (stuck.symbol, stuck.status) == (BTC, "open")
    assert "InsufficientFunds" in (stuck.problem or "")
    second = live.flatten(halt_reason=HALT)
    assert second.complete, second
    rejected, filled = orders(live, symbol=BTC, purpose="exit")
    assert (rejected.status, filled.status) == ("rejected", "filled")
    assert rejected.client_order_id != filled.client_order_id
    assert server.account.positions == {}


def test_positions_opened_or_closed_by_hand_are_flattened_by_the_exchange_s_word(
    live: Trader, server: FakeExchangeServer
) -> None:
    btc_qty, _ = open_two(live, server)
    exchange = by_hand(live)
    exchange.create_order(BTC, "market", "sell", btc_qty, None, {"reduceOnly": True})  # closed by hand
    exchange.create_order(SOL, "market", "buy", 3.0, None, {})  # opened by hand
    report = live.flatten(halt_reason=HALT)
    assert report.complete, report
    assert sorted(p.symbol for p in report.positions) == [ETH, SOL]
    assert server.account.positions == {}
    reasons = {p.symbol: p.exit_reason for p in positions(live)}
    assert reasons == {BTC: "closed_on_exchange", ETH: "flatten", SOL: "flatten"}


def test_an_entry_decided_before_the_flatten_is_never_sent_after_it(
    live: Trader, server: FakeExchangeServer
) -> None:
    decided = at_market(server, BTC, 0)
    live.reconcile()  # what a worker does before its first decision: the exchange's equity
    live._combined(decided)  # decided and committed; the worker died before sending it
    report = live.flatten(halt_reason=HALT)
    assert report.cancelled_orders == 1
    [order] = orders(live)
    assert (order.status, order.reason) == ("cancelled", "cancelled by a flatten")
    assert live.submit(int(order.id)) == "cancelled"  # the worker's retry
    assert creates(server) == []


def test_an_entry_in_flight_during_the_flatten_is_recorded_when_it_fills(
    live: Trader, server: FakeExchangeServer
) -> None:
    """Cancelled here while its create was on the wire: the exchange's fill wins, the position shows."""
    decided = at_market(server, BTC, 0)
    live.reconcile()  # what a worker does before its first decision: the exchange's equity
    live._combined(decided)
    live.flatten(halt_reason=HALT)
    [order] = orders(live)
    by_hand(live).create_order(
        BTC, "market", "buy", order.qty, None, {"clientOrderId": order.client_order_id}
    )
    broker = live.broker
    assert broker is not None
    found = broker.find(BTC, order.client_order_id)
    assert found is not None
    assert live.execution._apply_exchange_order(int(order.id), found) == "filled"  # type: ignore[attr-defined]
    [pos] = positions(live)
    assert (pos.status, pos.qty) == ("open", order.qty)
    assert live.flatten(halt_reason=HALT).complete
    assert server.account.positions == {}
    assert orders(live, purpose="exit")[0].status == "filled"


def test_the_command_exits_1_until_every_position_is_closed(
    live: Trader, server: FakeExchangeServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mlsignals trading flatten`` on the live account: a 429 leaves one position closing (exit
    code 1, the operator is told to run it again); the rerun closes it (exit code 0)."""
    open_two(live, server)
    for name, value in {
        "MLSIG_DATABASE_URL": db_url,
        "MLSIG_TRADING__MODE": "live",
        "MLSIG_TRADING__API_KEY": API_KEY,
        "MLSIG_TRADING__API_SECRET": API_SECRET,
        "MLSIG_EXCHANGE__API_URLS": json.dumps({"all": server.base_url}),
        "MLSIG_EXCHANGE__TIMEOUT_MS": str(LIVE_TIMEOUT_MS),
        "MLSIG_EXCHANGE__ENABLE_RATE_LIMIT": "false",
        "MLSIG_EXCHANGE__RETRY_BASE_DELAY_S": "0.02",
        "MLSIG_LOG_LEVEL": "WARNING",
    }.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()
    runner = CliRunner(env={"COLUMNS": "200"})
    server.inject(Fault.rate_limit(http_status=429), path=ORDER_CREATE_PATH)
    first = runner.invoke(cli, ["trading", "flatten", "--yes"])
    assert first.exit_code == 1, first.output
    assert "1 position is not closed" in first.output
    assert "RateLimitExceeded" in first.output
    second = runner.invoke(cli, ["trading", "flatten", "--yes"])
    assert second.exit_code == 0, second.output
    assert "flattened live account (1 positions" in second.output
    assert server.account.positions == {}
    assert len(reduce_only(server)) == 2
