"""The ccxt path end to end: CLI backfill and sync from the local Bybit server into both databases."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from data.db import get_engine
from data.store import CandleStore
from tests.fakes.exchange_server import KLINE_PATH, Fault, running_exchange_server

runner = CliRunner(env={"COLUMNS": "200"})
BTC, ETH, XRP = "BTC/USDT:USDT", "ETH/USDT:USDT", "XRP/USDT:USDT"


def test_exchange_backfill_and_sync(migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_exchange_server(kline_unsupported=["XRPUSDT"]) as server:
        monkeypatch.setenv("MLSIG_DATABASE_URL", migrated_url)
        monkeypatch.setenv("MLSIG_DATA__SOURCE", "exchange")
        monkeypatch.setenv("MLSIG_EXCHANGE__API_URLS", json.dumps({"all": server.base_url}))
        monkeypatch.setenv("MLSIG_EXCHANGE__RETRY_BASE_DELAY_S", "0")
        server.inject(Fault.rate_limit(), times=2, path=KLINE_PATH)

        result = runner.invoke(app, ["data", "backfill", "--days", "0.5", "--symbols", f"{BTC},{ETH},{XRP}"])

        assert result.exit_code == 1, result.output
        assert "unknown_symbol" in result.output
        assert "XRP/USDT:USDT" in result.output
        store = CandleStore(get_engine(migrated_url))
        for symbol in (BTC, ETH):
            stored = store.read_candles("bybit", symbol, 0, 2**62)
            assert len(stored) == 720
            end = int(stored["open_time"].iloc[-1]) + 60_000
            expected = server.candles(symbol.split("/")[0] + "USDT", end - 720 * 60_000, end)
            assert stored[["open_time", "open", "high", "low", "close", "volume"]].to_numpy().tolist() == [
                row[:6] for row in expected
            ]
        assert len(server.requests(KLINE_PATH)) > 2  # the rate-limited answers were retried
        assert server.errors == []

        sync = runner.invoke(app, ["data", "sync", "--symbols", f"{BTC},{ETH}"])
        assert sync.exit_code == 0, sync.output
        status = json.loads(runner.invoke(app, ["data", "status", "--json"]).output)
        by_symbol = {r["symbol"]: r for r in status["symbols"]}
        assert by_symbol[XRP]["quarantine"] == "unknown_symbol"
        assert by_symbol[BTC]["missing_minutes"] == 0
        assert not by_symbol[BTC]["stale"]
