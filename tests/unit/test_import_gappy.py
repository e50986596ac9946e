"""Importing real-shaped exchange history: an illiquid pair that prints no candle in many minutes.

The fixture is made here, shaped like 1-minute ETH/BTC history from an exchange: 13,681 candles
with 717 minutes missing in gaps of 1 to 8 minutes and one of 10 (no data is downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from core.timegrid import MINUTE_MS
from data import db
from data.store import CandleStore

runner = CliRunner(env={"COLUMNS": "160"})
START = 1_735_689_600_000  # 2025-01-01T00:00Z
CANDLES = 13_681
MISSING = 717
SYMBOL = "ETH/BTC"


def illiquid_history(seed: int = 3) -> pd.DataFrame:
    """Candles with ``MISSING`` minutes absent: one 10-minute gap, the rest in gaps of 1 to 8."""
    rng = np.random.default_rng(seed)
    span = CANDLES + MISSING
    gaps = [10]
    while sum(gaps) < MISSING:
        gaps.append(min(int(rng.integers(1, 9)), MISSING - sum(gaps)))
    starts = np.sort(rng.choice(np.arange(50, span - 50, 20), size=len(gaps), replace=False))
    missing = np.concatenate([np.arange(s, s + g) for s, g in zip(starts, gaps, strict=True)])
    keep = np.setdiff1d(np.arange(span), missing)
    assert len(keep) == CANDLES
    close = 0.035 * np.exp(np.cumsum(rng.normal(0, 4e-4, span)))[keep]
    open_ = np.concatenate([[close[0]], close[:-1]])
    return pd.DataFrame(
        {
            "timestamp": START + keep.astype(np.int64) * MINUTE_MS,
            "open": open_,
            "high": np.maximum(open_, close) * 1.0003,
            "low": np.minimum(open_, close) * 0.9997,
            "close": close,
            "volume": rng.uniform(0.1, 20, CANDLES),
        }
    )


@pytest.fixture
def database(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> CandleStore:
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    db.upgrade(sqlite_url)
    return CandleStore(db.get_engine(sqlite_url))


def test_a_gappy_csv_imports_whole_reports_its_gaps_and_keeps_the_given_exchange(
    database: CandleStore, tmp_path: Path
) -> None:
    frame = illiquid_history()
    path = tmp_path / "ETHBTC-1m.csv"
    frame.to_csv(path, index=False)
    result = runner.invoke(app, ["data", "import", str(path), "--symbol", SYMBOL, "--exchange", "bybit"])
    assert result.exit_code == 0, result.output
    assert f"{CANDLES} candles read, {MISSING} filled in" in result.output
    assert "longest 10 min" in result.output
    assert "long gap 2025-01-01T02:30:00Z .. 2025-01-01T02:40:00Z (10 min)" in result.output
    [status] = database.status("bybit")
    assert status.candles == CANDLES + MISSING
    assert status.filled_minutes == MISSING
    assert status.missing_minutes == 0
    assert database.status("simulator") == []
    gaps = database.gaps("bybit")
    assert sum(g.minutes for g in gaps) == MISSING
    # Longer than data.max_fill_gap_minutes (3): reported as outages; the rest as ordinary pauses.
    assert all(g.outage == (g.minutes > 3) for g in gaps)
    assert max(g.minutes for g in gaps) == 10
    stored = database.read_candles("bybit", SYMBOL, START, START + (CANDLES + MISSING) * MINUTE_MS)
    real = stored[~stored["is_filled"]]
    assert np.array_equal(real["open_time"].to_numpy(), frame["timestamp"].to_numpy())
    assert np.allclose(real["close"].to_numpy(), frame["close"].to_numpy())
    again = runner.invoke(app, ["data", "import", str(path), "--symbol", SYMBOL, "--exchange", "bybit"])
    assert "0 new" in again.output
    assert len(database.gaps("bybit")) == len(gaps)


def test_freqtrade_json_is_read_and_labelled_by_its_folder(database: CandleStore, tmp_path: Path) -> None:
    frame = illiquid_history(seed=5).iloc[:2000]
    folder = tmp_path / "user_data" / "data" / "binance"
    folder.mkdir(parents=True)
    path = folder / "ETH_BTC-1m.json"
    path.write_text(json.dumps(frame.to_numpy().tolist()))
    result = runner.invoke(app, ["data", "import", str(path), "--symbol", SYMBOL])
    assert result.exit_code == 0, result.output
    assert database.status("binance")[0].candles > 2000
    plain = tmp_path / "candles.json"
    plain.write_text(json.dumps(frame.iloc[:100].to_numpy().tolist()))
    assert runner.invoke(app, ["data", "import", str(plain), "--symbol", "X"]).exit_code == 0
    assert database.status("import")[0].symbol == "X"


def test_malformed_json_is_refused_with_the_row(database: CandleStore, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([[START, 1, 1, 1, 1, 1], [START + MINUTE_MS, 1, 1, 1]]))
    result = runner.invoke(app, ["data", "import", str(path), "--symbol", "X"])
    assert result.exit_code == 2
    assert "data row 2 has 4 values" in result.output
    assert database.status("import") == []
