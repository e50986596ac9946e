"""The data CLI as a user meets it: clear messages, exit codes, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db

runner = CliRunner(env={"COLUMNS": "160"})
SYMBOLS = "BTC/USDT:USDT,ETH/USDT:USDT"


@pytest.fixture
def env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    return {"MLSIG_DATABASE_URL": sqlite_url, "MLSIG_LOG_LEVEL": "WARNING"}


def mlsignals(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    script = Path(sys.executable).with_name("mlsignals")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | env
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=full_env, timeout=120)


@pytest.mark.usefixtures("env")
def test_backfill_status_and_rerun() -> None:
    first = runner.invoke(app, ["data", "backfill", "--days", "0.5", "--symbols", SYMBOLS])
    assert first.exit_code == 0, first.output
    assert "2 symbols, 1440 candles fetched, 1440 new, 0 failed" in first.output
    again = runner.invoke(app, ["data", "backfill", "--days", "0.5", "--symbols", SYMBOLS])
    assert again.exit_code == 0
    assert "0 new" in again.output
    sync = runner.invoke(app, ["data", "sync", "--symbols", SYMBOLS])
    assert sync.exit_code == 0, sync.output
    status = runner.invoke(app, ["data", "status", "--json"])
    assert status.exit_code == 0, status.output
    records = json.loads(status.output)["symbols"]
    assert [r["symbol"] for r in records] == sorted(SYMBOLS.split(","))
    assert all(r["missing_minutes"] == 0 and not r["stale"] and r["quarantine"] is None for r in records)
    table = runner.invoke(app, ["data", "status"])
    assert "BTC/USDT:USDT" in table.output
    assert "0 missing minutes in total" in table.output


def test_unknown_symbol_is_quarantined_with_exit_code_1(env: dict[str, str]) -> None:
    result = mlsignals(
        "data", "backfill", "--days", "0.1", "--symbols", "BTC/USDT:USDT,NOPE/USDT:USDT", env=env
    )
    assert result.returncode == 1, result.stderr
    assert "unknown_symbol" in result.stdout
    assert "NOPE/USDT:USDT" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    status = mlsignals("data", "status", "--json", env=env)
    records = {r["symbol"]: r for r in json.loads(status.stdout)["symbols"]}
    assert records["NOPE/USDT:USDT"]["quarantine"] == "unknown_symbol"
    assert records["BTC/USDT:USDT"]["candles"] == 144


def test_unreachable_database_is_a_clean_error() -> None:
    result = mlsignals("db", "upgrade", env={"MLSIG_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert result.returncode == 2
    assert "database error" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_is_a_clean_error(env: dict[str, str]) -> None:
    result = mlsignals("data", "status", env=env | {"MLSIG_DATA__SOURCE": "nasdaq"})
    assert result.returncode == 2
    assert "invalid settings" in result.stderr
    assert "data.source" in result.stderr
    assert "Traceback" not in result.stderr


def write_csv(path: Path, n: int, shuffle: bool = False) -> Path:
    end = floor_minute(now_ms()) - 10 * MINUTE_MS
    ts = end - MINUTE_MS * np.arange(n, 0, -1)
    close = 100 + np.arange(n, dtype=float)
    frame = pd.DataFrame(
        {
            "timestamp": pd.to_datetime(ts, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": 1.0,
        }
    )
    if shuffle:
        frame = frame.iloc[[1, 0, *range(2, n)]]
    frame.to_csv(path, index=False)
    return path


@pytest.mark.usefixtures("env")
def test_import_then_reimport_is_idempotent(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", 30)
    first = runner.invoke(app, ["data", "import", str(path), "--symbol", "BTC/USDT:USDT"])
    assert first.exit_code == 0, first.output
    assert "30 new" in first.output
    again = runner.invoke(app, ["data", "import", str(path), "--symbol", "BTC/USDT:USDT"])
    assert again.exit_code == 0, again.output
    assert "0 new" in again.output


def test_import_of_bad_file_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    unsorted = mlsignals(
        "data", "import", str(write_csv(tmp_path / "u.csv", 30, shuffle=True)), "--symbol", "X", env=env
    )
    assert unsorted.returncode == 2
    assert "[out_of_order]" in unsorted.stderr
    assert "Traceback" not in unsorted.stderr
    broken = tmp_path / "b.csv"
    broken.write_text("timestamp,open,high\n1,2,3\n")
    missing = mlsignals("data", "import", str(broken), "--symbol", "X", env=env)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    absent = mlsignals("data", "import", str(tmp_path / "nope.csv"), "--symbol", "X", env=env)
    assert absent.returncode == 2
    assert "Traceback" not in absent.stderr
    status = mlsignals("data", "status", "--json", env=env)
    assert json.loads(status.stdout) == {"symbols": [], "exchange_outages": []}


@pytest.mark.usefixtures("env")
def test_db_commands() -> None:
    head = db.head_revision()
    up = runner.invoke(app, ["db", "upgrade"])
    assert up.exit_code == 0
    assert f"schema at {head}" in up.output
    current = runner.invoke(app, ["db", "current"])
    assert f"current: {head}" in current.output
    down = runner.invoke(app, ["db", "downgrade", "--revision", "base"])
    assert down.exit_code == 0
    assert "schema at base" in down.output


def test_server_database_must_be_upgraded_first(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_DATABASE_URL", pg_url)
    result = runner.invoke(app, ["data", "status"])
    assert result.exit_code == 2
    assert "mlsignals db upgrade" in result.output


def test_default_sqlite_database_is_created_in_a_new_folder(tmp_path: Path) -> None:
    result = mlsignals("db", "upgrade", env={"MLSIG_DATA_DIR": str(tmp_path / "fresh" / "var")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "fresh" / "var" / "mlsignals.db").is_file()
