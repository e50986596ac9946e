"""The live broker against the local Bybit look-alike: one order per intent, whatever fails.

The fake exchange (tests/fakes/exchange_server.py) fills market orders at the newest close and
refuses a second order with the same orderLinkId, as Bybit does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import BrokerUnavailableError, ConfigError
from core.logging import configure_logging
from core.settings import Settings, TradingSettings
from tests.fakes.exchange_server import (
    ORDER_CREATE_PATH,
    ORDER_REALTIME_PATH,
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
    live_settings,
    live_trader,
)
from tests.support.trading import (
    Clock,
    account,
    intent,
    intent_row,
    make_trader,
    minute,
    orders,
    positions,
)
from trading.credentials import load_credentials
from trading.executor import Trader
from trading.live import LiveBroker
from trading.risk import code_of
from trading.sizing import round_down

BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"


@pytest.fixture
def server() -> Iterator[FakeExchangeServer]:
    with running_exchange_server() as srv:
        yield srv
        assert srv.errors == []


@pytest.fixture
def trader(server: FakeExchangeServer, sqlite_url: str) -> Iterator[Trader]:
    t = live_trader(server, sqlite_url)
    yield t
    assert t.broker is not None
    t.broker.close()


def test_an_intent_becomes_one_exchange_order_with_its_client_id(
    trader: Trader, server: FakeExchangeServer
) -> None:
    one = at_market(server, BTC, 0)
    result = trader.execute(one)
    assert result.status == "filled", result
    [sent] = creates(server)
    assert sent["orderLinkId"] == one.client_order_id
    assert (sent["side"], sent["orderType"]) == ("Buy", "Market")
    assert float(str(sent["stopLoss"])) == pytest.approx(one.stop_loss, abs=0.1)  # on the 0.1 tick
    assert float(str(sent["takeProfit"])) == pytest.approx(one.take_profit, abs=0.1)
    # Every private request was signed with the key from the settings.
    assert all(r.headers.get("X-BAPI-API-KEY") == API_KEY for r in server.requests(ORDER_CREATE_PATH))
    [order] = orders(trader)
    assert (order.status, order.exchange_order_id, order.attempts) == ("filled", "0000000000000000001", 1)
    [pos] = positions(trader)
    # The exchange's fill price, not its last price now, which moves on at the next wall-clock minute.
    [filled] = server.exchange_orders()
    assert pos.entry_price == pytest.approx(filled.avg_price)
    # Sized on the exchange's equity (100,000): 750 at risk over a stop 2 % away, on 0.001 lots.
    assert pos.qty == round_down(750 / (one.entry_price * 0.02), 0.001)
    assert account(trader).balance == pytest.approx(100_000 - order.fee)
    assert order.fee == pytest.approx(pos.qty * pos.entry_price * 5.5e-4)


def test_the_same_intent_twice_places_one_order(trader: Trader, server: FakeExchangeServer) -> None:
    one = at_market(server, BTC, 0)
    first, second = trader.execute(one), trader.execute(one)
    assert (first.created, second.created) == (True, False)
    assert second.status == "filled"
    assert len(creates(server)) == 1
    assert len(server.exchange_orders()) == 1


@pytest.mark.parametrize("fault", [Fault.lost_reply(500), Fault.slow_reply(1.0)], ids=["http500", "timeout"])
def test_an_unknown_outcome_is_reconciled_not_resent(
    trader: Trader, server: FakeExchangeServer, fault: Fault
) -> None:
    server.inject(fault, path=ORDER_CREATE_PATH)  # the order is recorded, the answer is lost
    one = at_market(server, BTC, 0)
    result = trader.execute(one)
    assert result.status == "filled"
    assert len(creates(server)) == 1  # looked up by its client order id, never sent again
    assert len(server.exchange_orders()) == 1
    assert orders(trader)[0].exchange_order_id is not None


def test_unknown_outcome_with_the_exchange_unreachable_retries_then_reconciles(
    trader: Trader, server: FakeExchangeServer
) -> None:
    server.inject(Fault.lost_reply(502), path=ORDER_CREATE_PATH)
    server.inject(Fault.server_error(503), times=UNREACHABLE, path=ORDER_REALTIME_PATH)
    one = at_market(server, BTC, 0)
    with pytest.raises(BrokerUnavailableError):
        trader.execute(one)  # the task retries this later (tasks.orders.execute)
    assert len(server.requests(ORDER_REALTIME_PATH)) == UNREACHABLE
    assert orders(trader)[0].status == "unknown"
    result = trader.execute(one)  # the Celery retry: the same message
    assert result.status == "filled"
    assert len(creates(server)) == 1
    assert len(server.exchange_orders()) == 1


def test_a_look_up_that_fails_once_is_retried_within_the_call(
    trader: Trader, server: FakeExchangeServer
) -> None:
    server.inject(Fault.lost_reply(502), path=ORDER_CREATE_PATH)
    server.inject(Fault.server_error(503), path=ORDER_REALTIME_PATH)
    one = at_market(server, BTC, 0)
    result = trader.execute(one)  # no task retry needed: the read was retried
    assert result.status == "filled"
    assert len(creates(server)) == 1  # the create itself is never repeated blindly
    assert len(server.exchange_orders()) == 1


def test_create_is_never_retried_by_the_retry_policy(trader: Trader, server: FakeExchangeServer) -> None:
    server.inject(Fault.server_error(503), times=UNREACHABLE, path=ORDER_CREATE_PATH)
    with pytest.raises(BrokerUnavailableError):
        trader.execute(at_market(server, BTC, 0))
    assert len(creates(server)) == 1


def test_a_request_that_never_arrived_is_sent_again_after_the_look_up(
    trader: Trader, server: FakeExchangeServer
) -> None:
    server.inject(Fault.server_error(503), path=ORDER_CREATE_PATH)  # refused before it took effect
    one = at_market(server, BTC, 0)
    with pytest.raises(BrokerUnavailableError):
        trader.execute(one)
    result = trader.execute(one)
    assert result.status == "filled"
    assert len(creates(server)) == 2  # the second only after the look-up found nothing
    log = [r.path for r in server.requests() if r.path in (ORDER_CREATE_PATH, ORDER_REALTIME_PATH)]
    # create (503) -> look-up -> look-up before the resend -> create -> look-up for the fill
    assert log == [
        ORDER_CREATE_PATH,
        ORDER_REALTIME_PATH,
        ORDER_REALTIME_PATH,
        ORDER_CREATE_PATH,
        ORDER_REALTIME_PATH,
    ]
    assert len(server.exchange_orders()) == 1


def test_a_duplicate_client_id_on_the_exchange_is_adopted(trader: Trader, server: FakeExchangeServer) -> None:
    one = at_market(server, BTC, 0)
    trader.reconcile()  # the worker started; then an earlier process's order reaches the exchange
    exchange = by_hand(trader)
    exchange.create_order(BTC, "market", "buy", 1.0, None, {"clientOrderId": one.client_order_id})
    result = trader.execute(one)
    assert result.status == "filled"
    assert len(server.exchange_orders()) == 1
    assert orders(trader)[0].filled_qty == 1.0  # what the exchange holds, not what was sized


@pytest.mark.parametrize(
    ("ret_code", "message", "ccxt_class"),
    [
        (110007, "ab not enough for new order", "InsufficientFunds"),
        (110017, "Reduce-only rule", "InvalidOrder"),
    ],
)
def test_permanent_errors_reject_with_the_exchange_reason(
    trader: Trader, server: FakeExchangeServer, ret_code: int, message: str, ccxt_class: str
) -> None:
    server.inject(Fault.bybit_error(ret_code, message), path=ORDER_CREATE_PATH)
    one = at_market(server, BTC, 0)
    result = trader.execute(one)
    assert result.status == "rejected"
    assert code_of(result.reason) == "exchange"
    assert ccxt_class in (result.reason or "")
    assert intent_row(trader, one.client_order_id).status == "rejected"
    assert trader.execute(one).status == "rejected"  # a redelivery does not try again
    assert len(creates(server)) == 1


def test_an_unknown_symbol_is_rejected_without_a_request(trader: Trader, server: FakeExchangeServer) -> None:
    result = trader.execute(intent("NOPE/USDT:USDT", 0))
    assert (result.status, code_of(result.reason)) == ("rejected", "exchange")
    assert "BadSymbol" in (result.reason or "")
    assert creates(server) == []


def test_an_opposite_signal_closes_with_a_reduce_only_order(
    trader: Trader, server: FakeExchangeServer
) -> None:
    trader.execute(at_market(server, BTC, 0))
    held = positions(trader)[0].qty
    trader.clock.now = minute(1)  # type: ignore[attr-defined]
    result = trader.execute(at_market(server, BTC, 1, "SHORT"))
    assert result.status == "filled"
    close, entry = creates(server)[1:]
    assert (close["side"], close["reduceOnly"], float(str(close["qty"]))) == ("Sell", True, held)
    assert (entry["side"], entry.get("reduceOnly")) == ("Sell", None)
    old, new = positions(trader)
    assert (old.status, old.exit_reason, new.side) == ("closed", "opposite_signal", "short")


def test_reconcile_on_start_adopts_and_closes_positions(server: FakeExchangeServer, trader: Trader) -> None:
    trader.execute(at_market(server, BTC, 0))  # open long here and on the exchange
    held = positions(trader)[0].qty
    # Behind the service's back: BTC closed by hand, ETH opened by hand.
    exchange = by_hand(trader)
    exchange.create_order(BTC, "market", "sell", held, None, {"reduceOnly": True})
    exchange.create_order(ETH, "market", "sell", 2.0, None, {})
    trader.clock.now = minute(2)  # type: ignore[attr-defined]
    report = trader.reconcile()
    assert report["positions_closed"] == 1
    assert report["positions_adopted"] == 1
    btc, eth = positions(trader)
    assert (btc.status, btc.exit_reason) == ("closed", "closed_on_exchange")
    assert (eth.status, eth.side, eth.qty) == ("open", "short", 2.0)
    assert account(trader).balance == pytest.approx(server.account.wallet)


def test_a_worker_that_died_mid_send_is_reconciled_at_the_next_start(
    server: FakeExchangeServer, sqlite_url: str, trader: Trader
) -> None:
    server.inject(Fault.slow_reply(1.0), path=ORDER_CREATE_PATH)
    server.inject(Fault.server_error(503), times=UNREACHABLE, path=ORDER_REALTIME_PATH)
    one = at_market(server, BTC, 0)
    with pytest.raises(BrokerUnavailableError):
        trader.execute(one)
    # A new process: its first action is the reconciliation, which finds the order filled.
    settings = live_settings(server, sqlite_url)
    fresh = make_trader(
        sqlite_url,
        Clock(minute(1)),
        LiveBroker(settings, load_credentials(settings.trading)),
        settings,
    )
    assert fresh.reconcile()["orders_updated"] == 1
    assert orders(fresh)[0].status == "filled"
    assert intent_row(fresh, one.client_order_id).status == "filled"
    assert len(creates(server)) == 1


def test_keys_never_reach_logs_task_arguments_or_reprs(
    server: FakeExchangeServer,
    trader: Trader,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging("DEBUG")  # ccxt's DEBUG log prints every request's headers
    caplog.set_level(logging.DEBUG)
    try:
        server.inject(Fault.lost_reply(500), path=ORDER_CREATE_PATH)
        one = at_market(server, BTC, 0)
        trader.execute(one)
        server.inject(Fault.bybit_error(110007, "ab not enough for new order"), path=ORDER_CREATE_PATH)
        trader.execute(at_market(server, ETH, 0))
    finally:
        configure_logging("INFO")
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "intent executed" in logged
    for secret in (API_KEY, API_SECRET):
        assert secret not in logged
        assert secret not in json.dumps(one.model_dump(mode="json"))  # the task's argument
        assert secret not in repr(trader.settings) + str(trader.settings.trading)
        assert secret not in repr(load_credentials(trader.settings.trading))


def test_credentials_from_a_secrets_file(tmp_path: Path) -> None:
    as_json = tmp_path / "keys.json"
    as_json.write_text(json.dumps({"api_key": "k1", "api_secret": "s1"}))
    creds = load_credentials(TradingSettings(secrets_file=as_json))
    assert (creds.api_key.get_secret_value(), creds.api_secret.get_secret_value()) == ("k1", "s1")
    as_env = tmp_path / "keys.env"
    as_env.write_text("# exchange keys\nMLSIG_TRADING__API_KEY=k2\napi_secret='s2'\n")
    creds = load_credentials(TradingSettings(secrets_file=as_env))
    assert (creds.api_key.get_secret_value(), creds.api_secret.get_secret_value()) == ("k2", "s2")
    broken = tmp_path / "broken.json"
    broken.write_text('{"api_key": "k3-visible", ')
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        load_credentials(TradingSettings(secrets_file=broken))
    assert "k3-visible" not in str(info.value)
    with pytest.raises(ConfigError, match="MLSIG_TRADING__API_KEY"):
        load_credentials(TradingSettings())
    (tmp_path / "half.env").write_text("api_key=k4\n")
    with pytest.raises(ConfigError, match="lacks api_secret"):
        load_credentials(TradingSettings(secrets_file=tmp_path / "half.env"))


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_TRADING__API_KEY", API_KEY)
    monkeypatch.setenv("MLSIG_TRADING__API_SECRET", API_SECRET)
    settings = Settings()
    assert load_credentials(settings.trading).api_key.get_secret_value() == API_KEY
    assert API_KEY not in repr(settings)


def test_resting_orders_are_found_open_then_cancelled(trader: Trader) -> None:
    """Look-ups by client order id see open orders (realtime) and closed ones (history)."""
    broker = trader.broker
    assert broker is not None
    exchange = by_hand(trader)
    exchange.create_order(BTC, "limit", "buy", 0.01, 1000.0, {"clientOrderId": "mls-resting-1"})
    found = broker.find(BTC, "mls-resting-1")
    assert found is not None
    assert (found.status, found.filled) == ("open", 0.0)
    broker.cancel(BTC, "mls-resting-1")
    gone = broker.find(BTC, "mls-resting-1")
    assert gone is not None
    assert gone.status == "canceled"
    assert broker.find(BTC, "mls-never-sent") is None
