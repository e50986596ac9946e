"""``mlsignals trading …`` as an operator meets it: tables, the kill switch, clear errors."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.support.trading import intent, make_trader, ms, positions, write_candles
from trading.executor import Trader

runner = CliRunner(env={"COLUMNS": "200"})
BTC, ETH = "BTC/USDT:USDT", "ETH/USDT:USDT"


@pytest.fixture
def trader(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Trader:
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    t = make_trader(sqlite_url)
    t.execute(intent(BTC, 0))
    t.execute(intent(ETH, 0, confidence=0.5))  # refused: below the confidence threshold
    write_candles(t, BTC, [(0, 100.5, 101.0, 100.2, 100.8)])
    t.tick(ms(1))
    t.execute(intent("SOL/USDT:USDT", 1, "SHORT", entry=50, stop=51, target=48))
    return t


@pytest.mark.usefixtures("trader")
def test_status_shows_balance_positions_orders_and_limits() -> None:
    result = runner.invoke(app, ["trading", "status"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "paper account (USDT)" in out
    assert "trading" in out
    assert "HALTED" not in out
    assert "open positions (1)" in out
    assert BTC in out
    assert "open orders (1)" in out
    assert "SOL/USDT:USDT" in out
    assert "limits in force" in out
    assert "max_open_positions" in out
    assert "daily_loss_limit" in out
    assert "equity" in out
    assert "unrealised PnL" in out


@pytest.mark.usefixtures("trader")
def test_history_with_limit_and_symbol() -> None:
    result = runner.invoke(app, ["trading", "history"])
    assert result.exit_code == 0, result.output
    assert "min_confidence: confidence 0.500 below 0.600" in result.output
    assert "entry" in result.output
    assert "filled" in result.output
    only = runner.invoke(app, ["trading", "history", "--symbol", ETH, "--limit", "5"])
    assert only.exit_code == 0
    assert ETH in only.output
    assert BTC not in only.output
    one = runner.invoke(app, ["trading", "history", "-n", "1"])
    assert one.output.count("SOL/USDT:USDT") == 2  # the newest intent and the newest order only


def test_halt_and_resume(trader: Trader) -> None:
    halted = runner.invoke(app, ["trading", "halt", "--reason", "exchange maintenance"])
    assert halted.exit_code == 0, halted.output
    assert "trading halted: exchange maintenance" in halted.output
    assert "HALTED" in runner.invoke(app, ["trading", "status"]).output
    refused = trader.execute(intent("XRP/USDT:USDT", 1))
    assert refused.status == "rejected"
    assert "exchange maintenance" in (refused.reason or "")
    resumed = runner.invoke(app, ["trading", "resume"])
    assert resumed.exit_code == 0
    assert "trading resumed" in resumed.output
    assert "HALTED" not in runner.invoke(app, ["trading", "status"]).output


def test_status_before_any_order(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    result = runner.invoke(app, ["trading", "status"])
    assert result.exit_code == 0, result.output
    assert "no order yet" in result.output


@pytest.mark.integration
def test_an_unmigrated_server_database_is_a_clear_error(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_DATABASE_URL", pg_url)
    result = runner.invoke(app, ["trading", "halt"])
    assert result.exit_code == 2
    assert "mlsignals db upgrade" in result.output
    assert "Traceback" not in result.output


def test_flatten_asks_first_then_closes_everything_and_halts(trader: Trader) -> None:
    declined = runner.invoke(app, ["trading", "flatten"], input="n\n")
    assert declined.exit_code == 1
    assert "close 1 open position of the paper account at market and halt trading?" in declined.output
    assert "open positions (1)" in runner.invoke(app, ["trading", "status"]).output

    done = runner.invoke(app, ["trading", "flatten", "--reason", "end of the trial"], input="y\n")
    assert done.exit_code == 0, done.output
    assert "flattened paper account (1 positions, 0 orders cancelled)" in done.output  # SOL lapsed
    assert BTC in done.output
    assert "trading is halted" in done.output
    status = runner.invoke(app, ["trading", "status"]).output
    assert "open positions (0)" in status
    assert "open orders (0)" in status
    assert "HALTED" in status
    assert "flatten: end of the trial" in status
    [pos] = positions(trader)
    assert (pos.status, pos.exit_reason) == ("closed", "flatten")
    assert f"{pos.realised_pnl:,.2f} USDT" in done.output
    again = runner.invoke(app, ["trading", "flatten", "--yes"])
    assert again.exit_code == 0, again.output
    assert "(0 positions, 0 orders cancelled)" in again.output


@pytest.mark.usefixtures("trader")
def test_flatten_of_a_symbol_without_a_position_says_so() -> None:
    result = runner.invoke(app, ["trading", "flatten", "-y", "--keep-trading", "--symbol", "DOGE/USDT:USDT"])
    assert result.exit_code == 0, result.output
    assert "no open position in DOGE/USDT:USDT" in result.output
    assert "halted" not in result.output
    assert "open positions (1)" in runner.invoke(app, ["trading", "status"]).output
