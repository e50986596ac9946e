"""Issue 2's acceptance run: 50 simulated symbols x 7 days, sync, then both again, on both databases."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from cli.main import app
from core.settings import get_settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data.db import get_engine
from data.ingest import Ingestor
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.validation import ValidationPolicy

pytestmark = pytest.mark.slow


def test_backfill_sync_twice_one_row_per_candle(migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_DATABASE_URL", migrated_url)
    settings = get_settings()
    source = make_source(settings)
    symbols = resolve_symbols(settings, source)
    assert len(symbols) == 50
    store = CandleStore(get_engine(migrated_url))
    ingestor = Ingestor(store, source, ValidationPolicy())
    end = floor_minute(now_ms())
    lag = 30

    first = ingestor.backfill(symbols, 7, end_ms=end - lag * MINUTE_MS)
    sync = ingestor.sync(symbols, initial_minutes=60, end_ms=end)
    again = [
        ingestor.backfill(symbols, 7, end_ms=end),
        ingestor.sync(symbols, initial_minutes=60, end_ms=end),
    ]

    assert first.ok
    assert sync.ok
    assert first.inserted == 50 * 7 * 1440
    assert sync.inserted == 50 * lag
    # The second backfill's window starts `lag` minutes later: nothing in it is new.
    assert [r.inserted for r in again] == [0, 0]
    with get_engine(migrated_url).connect() as conn:
        total, distinct = conn.execute(
            text(
                "SELECT count(*), (SELECT count(*) FROM "
                "(SELECT DISTINCT symbol, open_time FROM raw_market_data) AS d) FROM raw_market_data"
            )
        ).one()
    assert total == distinct == 50 * (7 * 1440 + lag)

    status = CliRunner().invoke(app, ["data", "status", "--json"])
    assert status.exit_code == 0, status.output
    records = json.loads(status.output)["symbols"]
    assert len(records) == 50
    assert all(r["missing_minutes"] == 0 for r in records)
    assert all(r["candles"] == 7 * 1440 + lag for r in records)
    assert all(r["quarantine"] is None and not r["stale"] for r in records)
