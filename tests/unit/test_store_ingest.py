"""Candle store and ingestion on SQLite and on the real PostgreSQL: idempotent, resumable, strict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.timegrid import MINUTE_MS
from data.bars import panel_from_candles
from data.db import get_engine
from data.ingest import Ingestor
from data.store import CandleStore
from data.validation import ValidationPolicy, validate_batch
from tests.support.sources import ScriptedSource

DAY = 1440 * MINUTE_MS
END = 1_763_942_400_000  # 2025-11-24T00:00Z
POLICY = ValidationPolicy(max_fill_gap_minutes=3, max_abs_log_return=0.25, stale_after_ms=300_000)


SYMBOLS = ["AAA/USDT:USDT", "BBB/USDT:USDT", "CCC/USDT:USDT"]


@pytest.fixture
def store(migrated_url: str) -> CandleStore:
    return CandleStore(get_engine(migrated_url))


@pytest.fixture
def source() -> ScriptedSource:
    return ScriptedSource(SYMBOLS, END - 3 * DAY, END)


def ingestor(store: CandleStore, source: ScriptedSource, now: int = END) -> Ingestor:
    return Ingestor(store, source, POLICY, clock=lambda: now)


def row_count(store: CandleStore) -> int:
    return sum(s.candles for s in store.status("scripted"))


def test_backfill_then_sync_twice_leaves_one_row_per_candle(
    store: CandleStore, source: ScriptedSource
) -> None:
    report = ingestor(store, source, END - 6 * 60 * MINUTE_MS).backfill(SYMBOLS, 2)
    assert report.ok, report.failed
    assert report.inserted == 3 * 2 * 1440
    sync = ingestor(store, source).sync(SYMBOLS, initial_minutes=100)
    assert sync.ok
    assert sync.inserted == 3 * 360
    again = [
        ingestor(store, source).backfill(SYMBOLS, 2),
        ingestor(store, source).sync(SYMBOLS, initial_minutes=100),
    ]
    assert [r.inserted for r in again] == [0, 0]
    statuses = store.status("scripted")
    assert [s.candles for s in statuses] == [2 * 1440 + 360] * 3
    assert all(s.missing_minutes == 0 and s.quarantine_rule is None for s in statuses)
    assert all(s.newest_open_ms == END - MINUTE_MS for s in statuses)


def test_stored_candles_equal_the_source(store: CandleStore, source: ScriptedSource) -> None:
    ingestor(store, source).backfill(SYMBOLS[:1], 1)
    stored = store.read_candles("scripted", SYMBOLS[0], END - DAY, END)
    expected = source.data[SYMBOLS[0]].iloc[-1440:].reset_index(drop=True)
    pd.testing.assert_frame_equal(stored.drop(columns="is_filled"), expected, check_exact=True)


def test_backfill_resumes_without_refetching_complete_days(
    store: CandleStore, source: ScriptedSource
) -> None:
    ingestor(store, source).backfill(SYMBOLS, 2)
    source.calls.clear()
    report = ingestor(store, source).backfill(SYMBOLS, 3)
    assert {(s, start) for s, start, _ in source.calls} == {(s, END - 3 * DAY) for s in SYMBOLS}
    assert report.inserted == 3 * 1440


def test_unknown_and_failing_symbols_are_quarantined_while_others_go_on(
    store: CandleStore, source: ScriptedSource
) -> None:
    source.unavailable.add(SYMBOLS[1])
    report = ingestor(store, source).backfill([*SYMBOLS, "NOPE/USDT:USDT"], 1)
    assert set(report.failed) == {SYMBOLS[1], "NOPE/USDT:USDT"}
    assert report.failed["NOPE/USDT:USDT"].rule == "unknown_symbol"
    assert report.failed[SYMBOLS[1]].rule == "source_unavailable"
    assert report.inserted == 2 * 1440
    quarantined = store.quarantined("scripted")
    assert quarantined[SYMBOLS[1]][0] == "source_unavailable"
    # The next clean run releases it.
    source.unavailable.clear()
    assert ingestor(store, source).backfill(SYMBOLS, 1).ok
    assert SYMBOLS[1] not in store.quarantined("scripted")


def test_bad_candle_writes_nothing_of_that_batch(store: CandleStore, source: ScriptedSource) -> None:
    frame = source.data[SYMBOLS[0]]
    frame.loc[frame.index[-10], "close"] = np.nan
    report = ingestor(store, source).backfill(SYMBOLS, 1)
    assert report.failed[SYMBOLS[0]].rule == "non_finite"
    status = {s.symbol: s for s in store.status("scripted")}
    assert status[SYMBOLS[0]].candles == 0
    assert status[SYMBOLS[0]].quarantine_rule == "non_finite"
    assert status[SYMBOLS[1]].candles == 1440


def test_sync_resumes_at_once_after_an_outage_and_records_it(
    store: CandleStore, source: ScriptedSource
) -> None:
    ingestor(store, source, END - 60 * MINUTE_MS).backfill(SYMBOLS[:1], 1)
    frame = source.data[SYMBOLS[0]]
    # The exchange printed nothing for 10 minutes: 60 .. 50 minutes before END.
    source.data[SYMBOLS[0]] = frame[frame["open_time"] >= END - 50 * MINUTE_MS].reset_index(drop=True)
    report = ingestor(store, source).sync(SYMBOLS[:1], initial_minutes=10)
    assert report.ok
    assert report.outcomes[SYMBOLS[0]].newest_open_ms == END - MINUTE_MS
    assert report.outcomes[SYMBOLS[0]].filled == 10
    [gap] = store.gaps("scripted")
    assert (gap.symbol, gap.start_ms, gap.minutes, gap.filled, gap.outage) == (
        SYMBOLS[0],
        END - 60 * MINUTE_MS,
        10,
        10,
        True,
    )
    # A re-run records nothing twice, and the real candles, when they turn up, replace the fillers.
    assert ingestor(store, source).sync(SYMBOLS[:1], initial_minutes=10).inserted == 0
    assert len(store.gaps("scripted")) == 1
    late = frame.iloc[-60:-50].reset_index(drop=True)
    repaired = validate_batch(late, SYMBOLS[0], now_ms=END, policy=POLICY)
    assert store.write("scripted", [repaired]) == 10
    stored = store.read_candles("scripted", SYMBOLS[0], END - 60 * MINUTE_MS, END - 50 * MINUTE_MS)
    assert not stored["is_filled"].any()
    assert np.allclose(stored["close"], frame["close"].iloc[-60:-50])


def test_stale_symbol_is_flagged(store: CandleStore, source: ScriptedSource) -> None:
    report = ingestor(store, source, END + 30 * MINUTE_MS).sync(SYMBOLS[:1], initial_minutes=60)
    assert report.failed[SYMBOLS[0]].rule == "stale"
    assert store.quarantined("scripted")[SYMBOLS[0]][0] == "stale"


def test_read_bars_in_sql_equals_numpy_aggregation(store: CandleStore, source: ScriptedSource) -> None:
    frame = source.data[SYMBOLS[2]]
    source.data[SYMBOLS[2]] = frame.drop(index=frame.index[-100]).reset_index(
        drop=True
    )  # filled by the gap rule
    ingestor(store, source).backfill(SYMBOLS, 1)
    anchor = END - 7 * MINUTE_MS
    panel = store.read_bars("scripted", [*SYMBOLS, "MISSING"], anchor, n_bars=40, bar_minutes=15)
    stored = {s: store.read_candles("scripted", s, END - DAY, END) for s in SYMBOLS}
    stored["MISSING"] = stored[SYMBOLS[0]].iloc[0:0]
    expected = panel_from_candles(stored, anchor, n_bars=40, bar_minutes=15)
    assert panel.symbols == expected.symbols
    np.testing.assert_array_equal(panel.bar_open_ms, expected.bar_open_ms)
    np.testing.assert_array_equal(panel.complete, expected.complete)
    for name in ("open", "high", "low", "close", "volume"):
        np.testing.assert_allclose(getattr(panel, name), getattr(expected, name), rtol=1e-12, equal_nan=True)
    assert panel.complete[:3].all()
    assert not panel.complete[3].any()
    # The filled minute is counted in its bar, on both paths.
    np.testing.assert_array_equal(panel.filled_minutes(), expected.filled_minutes())
    assert panel.filled_minutes()[2].sum() == 1
    assert panel.filled_minutes()[:2].sum() == 0


def test_turnover_nulls_and_filled_flags_round_trip(store: CandleStore, source: ScriptedSource) -> None:
    frame = source.data[SYMBOLS[0]]
    frame["turnover"] = np.where(np.arange(len(frame)) % 3 == 0, np.nan, frame["close"] * frame["volume"])
    source.data[SYMBOLS[0]] = frame.drop(index=frame.index[-20]).reset_index(drop=True)
    assert ingestor(store, source).backfill(SYMBOLS[:1], 1).ok
    stored = store.read_candles("scripted", SYMBOLS[0], END - DAY, END)
    expected = frame.iloc[-1440:].reset_index(drop=True)
    real = ~stored["is_filled"]
    assert int((~real).sum()) == 1
    np.testing.assert_array_equal(
        stored.loc[real, "turnover"].to_numpy(), expected.loc[real, "turnover"].to_numpy()
    )
    assert stored.loc[~real, "turnover"].tolist() == [0.0]


def test_a_large_backfill_refreshes_the_planner_statistics(
    store: CandleStore, source: ScriptedSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    import data.ingest

    monkeypatch.setattr(data.ingest, "ANALYZE_AFTER_ROWS", 1000)
    ingestor(store, source).backfill(SYMBOLS, 1)
    if store.dialect != "postgresql":
        return
    from sqlalchemy import text

    with store.engine.connect() as conn:
        analyzed = conn.execute(
            text(
                "SELECT last_analyze FROM pg_stat_user_tables "
                "WHERE relname = 'raw_market_data' AND schemaname = current_schema()"
            )
        ).scalar()
    assert analyzed is not None
