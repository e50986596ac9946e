"""The minute pipeline in the embedded runtime: real Celery canvas and workers, in-process broker."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.models import OrderIntent
from data.validation import ValidationPolicy
from ml.features import FEATURE_SPEC
from pipeline.messages import HeartbeatMessage, SignalMessage, parse_message
from tasks.common import minute_dt
from tasks.pipeline import start_minute
from tests.support.models import FixedModelServer
from worker.app import app
from worker.embedded import embedded_runtime

N_SYMBOLS = 8


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(
        data_dir=tmp_path,
        data={"universe_size": N_SYMBOLS},
        pipeline={"symbols_per_task": 3, "candle_wait_seconds": 0},
        ml_integration={"signals": {"confidence_threshold": 0.34}},
    )
    db.upgrade(s.database_url)
    from data.sources.factory import make_source, resolve_symbols
    from data.store import CandleStore

    source = make_source(s)
    minutes = FEATURE_SPEC.window * s.data.bar_minutes + 30
    report = Ingestor(CandleStore(db.get_engine(s.database_url)), source, ValidationPolicy()).backfill(
        resolve_symbols(s, source), minutes / 1440, end_ms=floor_minute(now_ms()) - 5 * MINUTE_MS
    )
    assert report.ok
    return s


def drain(inbox: queue.Queue[tuple[str, str]]) -> list[SignalMessage | HeartbeatMessage]:
    out = []
    while True:
        try:
            out.append(parse_message(inbox.get_nowait()[1]))
        except queue.Empty:
            return out


def test_one_minute_end_to_end_and_rerun_adds_nothing(settings: Settings) -> None:
    minute = iso_minute(floor_minute(now_ms()) - 5 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        server = FixedModelServer()
        rt.models = server
        inbox = rt.bus.subscribe()  # type: ignore[attr-defined]

        outcome = start_minute(rt, minute, replay=True)
        result = app.AsyncResult(outcome["result_id"]).get(timeout=60)
        for task_id in result["order_tasks"]:
            assert app.AsyncResult(task_id).get(timeout=30)["created"] is True

        messages = drain(inbox)
        signals = [m for m in messages if isinstance(m, SignalMessage)]
        beats = [m for m in messages if isinstance(m, HeartbeatMessage)]
        rows = rt.signals.for_minute(minute_dt(minute))
        run = rt.ledger.get(minute_dt(minute))
        assert run is not None
        assert run.status == "done", run.failures
        assert run.signals_made == N_SYMBOLS
        assert {"dispatch", "inference_forward", "store", "publish", "minute_total"} <= set(run.timings)
        assert len(rows) == N_SYMBOLS
        # Each signal goes out twice: on "signals" and on its symbol's channel.
        assert len(signals) == 2 * N_SYMBOLS
        assert {m.sequence for m in signals} == {r.id for r in rows}
        assert len(beats) == 1
        assert beats[0].signals == N_SYMBOLS
        actionable = [r for r in rows if r.direction != "NEUTRAL"]
        assert beats[0].actionable == len(actionable) == len(result["order_tasks"])
        assert server.calls == 1  # one batched forward pass for all symbols
        with rt.store.engine.connect() as conn:
            intents = conn.execute(OrderIntent.__table__.select()).all()
        assert len(intents) == len(actionable)

        again = start_minute(rt, minute, replay=True)
        assert again["status"] == "duplicate"
        assert len(rt.signals.for_minute(minute_dt(minute))) == N_SYMBOLS
        assert drain(inbox) == []


def test_bad_symbol_does_not_stop_the_minute(settings: Settings) -> None:
    settings.data.symbols = ["BTC/USDT:USDT", "NOPE/USDT:USDT", "ETH/USDT:USDT"]
    minute = iso_minute(floor_minute(now_ms()) - 4 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        rt.models = FixedModelServer()
        outcome = start_minute(rt, minute, replay=True)
        app.AsyncResult(outcome["result_id"]).get(timeout=60)
        run = rt.ledger.get(minute_dt(minute))
        assert run is not None
        assert run.status == "partial"
        assert set(run.failures) == {"NOPE/USDT:USDT"}
        assert "unknown_symbol" in run.failures["NOPE/USDT:USDT"]
        assert sorted(r.symbol for r in rt.signals.for_minute(minute_dt(minute))) == [
            "BTC/USDT:USDT",
            "ETH/USDT:USDT",
        ]


def test_late_minute_is_skipped_and_announced(settings: Settings) -> None:
    minute = iso_minute(floor_minute(now_ms()) - 3 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        rt.models = FixedModelServer()
        inbox = rt.bus.subscribe()  # type: ignore[attr-defined]
        assert start_minute(rt, minute)["status"] == "skipped_late"
        run = rt.ledger.get(minute_dt(minute))
        assert run is not None
        assert run.status == "skipped_late"
        assert "after the minute began" in (run.note or "")
        beats = drain(inbox)
        assert [b.status for b in beats if isinstance(b, HeartbeatMessage)] == ["skipped_late"]
        assert rt.signals.for_minute(minute_dt(minute)) == []


def test_two_concurrent_starts_of_one_minute_give_one_run(settings: Settings) -> None:
    from concurrent.futures import ThreadPoolExecutor

    minute = iso_minute(floor_minute(now_ms()) - 2 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        rt.models = FixedModelServer()
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda _: start_minute(rt, minute, replay=True), range(2)))
        statuses = sorted(o["status"] for o in outcomes)
        assert statuses == ["duplicate", "running"]
        running = next(o for o in outcomes if o["status"] == "running")
        app.AsyncResult(running["result_id"]).get(timeout=60)
        assert len(rt.signals.for_minute(minute_dt(minute))) == N_SYMBOLS


def test_ledger_row_alone_stops_a_second_run(settings: Settings) -> None:
    """Two processes each holding their own lock (two beats): the unique ledger row decides."""
    from pipeline.locks import MemoryMinuteLock

    minute = iso_minute(floor_minute(now_ms()) - 6 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        rt.models = FixedModelServer()
        first = start_minute(rt, minute, replay=True)
        app.AsyncResult(first["result_id"]).get(timeout=60)
        rt.lock = MemoryMinuteLock()  # a second beat process has a lock of its own
        assert start_minute(rt, minute, replay=True)["status"] == "duplicate"


def test_minute_without_a_champion_is_recorded_as_failed(settings: Settings) -> None:
    minute = iso_minute(floor_minute(now_ms()) - 7 * MINUTE_MS)
    with embedded_runtime(settings, beat=False) as rt:
        server = FixedModelServer()
        server.version = None  # type: ignore[assignment]
        rt.models = server
        inbox = rt.bus.subscribe()  # type: ignore[attr-defined]
        outcome = start_minute(rt, minute, replay=True)
        assert outcome["status"] == "failed"
        run = rt.ledger.get(minute_dt(minute))
        assert run is not None
        assert "no champion" in (run.note or "")
        assert [m.status for m in drain(inbox) if isinstance(m, HeartbeatMessage)] == ["failed"]
