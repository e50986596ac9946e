"""The minute's service without Celery (``pipeline.minute_service``, ``pipeline.stages``,
``pipeline.publish_service``): the start policy with a fake chord port, the stages' failure policy,
and the publish step with a fake order queue, on the embedded runtime's real SQLite ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import redis.exceptions
import sqlalchemy.exc
from sqlalchemy import update

from core.settings import Settings
from core.timegrid import floor_minute, iso_minute, now_ms
from data import db
from data.models import PipelineRun
from ml.features import FEATURE_SPEC
from pipeline import minute_service
from pipeline.clock import deadline, minute_dt
from pipeline.ledger import DONE, FAILED, INFERENCE, MISSED, PARTIAL, PUBLISH, RUNNING, SKIPPED_LATE
from pipeline.locks import MemoryMinuteLock
from pipeline.messages import HeartbeatMessage, parse_message
from pipeline.ports import DispatchedChord, MinuteRuntime
from pipeline.publish_service import publish_minute
from pipeline.stages import features_stage, inference_stage
from pipeline.window_store import window_key
from trading.intents import OrderIntentMessage, client_order_id
from worker.embedded import build_embedded
from worker.runtime import Runtime


class RecordingDispatch:
    """The ``ChordDispatch`` port: records what it was asked to send, sends nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str, str, list[list[str]], datetime]] = []

    def __call__(
        self, minute_iso: str, run: int, run_id: str, version: str, chunks: list[list[str]], expires: datetime
    ) -> DispatchedChord:
        self.sent.append((minute_iso, run, run_id, version, chunks, expires))
        return DispatchedChord(result_id=f"result-{len(self.sent)}", tasks=len(chunks))


class RecordingOrders:
    """The ``OrderQueue`` port: records the ticks and intents it was asked to send."""

    def __init__(self) -> None:
        self.ticks: list[tuple[str, datetime]] = []
        self.intents: list[OrderIntentMessage] = []

    def send_tick(self, minute_iso: str, expires: datetime) -> str:
        self.ticks.append((minute_iso, expires))
        return f"tick-{len(self.ticks)}"

    def send_intent(self, intent: OrderIntentMessage) -> str:
        self.intents.append(intent)
        return f"intent-{len(self.intents)}"


@pytest.fixture
def runtime(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    db.upgrade(sqlite_url)
    # Any second of the current minute is an in-time start; the minute before is late.
    settings = Settings(
        database_url=sqlite_url,
        data={"universe_size": 3},
        pipeline={"symbols_per_task": 2, "max_start_delay_seconds": 61},
    )
    rt = build_embedded(settings)
    monkeypatch.setattr(rt, "champion_version", lambda: "v1")
    return rt


def heartbeats(rt: Runtime, inbox: Any) -> list[HeartbeatMessage]:
    out = []
    while not inbox.empty():
        channel, raw = inbox.get_nowait()
        if channel == rt.settings.pipeline.heartbeat_channel:
            message = parse_message(raw)
            assert isinstance(message, HeartbeatMessage)
            out.append(message)
    return out


def this_minute() -> str:
    return iso_minute(floor_minute(now_ms()))


def minutes_ago(n: int) -> str:
    return iso_minute(floor_minute(now_ms()) - n * 60_000)


def test_the_runtime_is_a_minute_runtime(runtime: Runtime) -> None:
    rt: MinuteRuntime = runtime  # structural: worker.runtime.Runtime needs no adapter
    assert rt.symbols() == runtime.symbols()


def test_a_start_dispatches_the_minute_in_chunks_and_only_once(runtime: Runtime) -> None:
    dispatch = RecordingDispatch()
    minute = this_minute()
    outcome = minute_service.start_minute(runtime, dispatch, minute)
    symbols = runtime.symbols()
    run = outcome["run"]
    assert outcome == {
        "minute": minute,
        "status": RUNNING,
        "run": run,
        "symbols": 3,
        "result_id": "result-1",
    }
    expires = deadline(runtime.settings, minute)
    assert dispatch.sent == [(minute, run, f"{minute}/{run}", "v1", [symbols[:2], symbols[2:]], expires)]
    row = runtime.ledger.get(minute_dt(minute))
    assert row is not None
    assert (row.status, row.attempts, row.stage, row.symbols_asked) == (RUNNING, 1, "dispatched", 3)
    assert set(row.timings) == {"start_delay", "dispatch"}
    assert 0 <= row.timings["start_delay"] <= 61

    # A second start loses the lock; one of another process (its own lock) loses the ledger row; a
    # retry of the first start (which holds the lock) is decided by the ledger row too.
    assert minute_service.start_minute(runtime, dispatch, minute)["status"] == minute_service.DUPLICATE
    runtime.lock = MemoryMinuteLock()
    assert minute_service.start_minute(runtime, dispatch, minute)["status"] == minute_service.DUPLICATE
    retried = minute_service.start_minute(runtime, dispatch, minute, retrying=True)
    assert retried == {"minute": minute, "status": minute_service.DUPLICATE}
    assert len(dispatch.sent) == 1


def test_a_replay_runs_a_past_minute_and_expires_from_now(runtime: Runtime) -> None:
    dispatch = RecordingDispatch()
    runtime.ledger.claim(minute_dt(minutes_ago(9)), status=DONE, model_version="v1", symbols_asked=3)
    minute = minutes_ago(5)
    before = datetime.now(UTC)
    outcome = minute_service.start_minute(runtime, dispatch, minute, replay=True)
    after = datetime.now(UTC)
    assert outcome["status"] == RUNNING
    [(_, _, _, _, _, expires)] = dispatch.sent
    budget = timedelta(seconds=runtime.settings.pipeline.minute_deadline_seconds)
    assert before + budget <= expires <= after + budget
    # A replay does no bookkeeping of other minutes: the gap before it is not recorded as missed.
    assert [r.status for r in runtime.ledger.recent(10)] == [RUNNING, DONE]


def test_a_future_minute_is_refused(runtime: Runtime) -> None:
    dispatch = RecordingDispatch()
    minute = iso_minute(floor_minute(now_ms()) + 2 * 60_000)
    outcome = minute_service.start_minute(runtime, dispatch, minute)
    assert outcome == {"minute": minute, "status": FAILED, "note": "minute is in the future"}
    assert runtime.ledger.recent(5) == []
    assert dispatch.sent == []


def test_a_late_start_is_recorded_and_announced_once_and_never_dispatched(runtime: Runtime) -> None:
    dispatch = RecordingDispatch()
    inbox = runtime.bus.subscribe()  # type: ignore[attr-defined]
    minute = minutes_ago(2)
    assert minute_service.start_minute(runtime, dispatch, minute) == {
        "minute": minute,
        "status": SKIPPED_LATE,
    }
    assert minute_service.start_minute(runtime, dispatch, minute)["status"] == SKIPPED_LATE
    [beat] = heartbeats(runtime, inbox)
    assert (beat.status, beat.symbols_asked, beat.signals) == (SKIPPED_LATE, 0, 0)
    assert "after the minute began (limit 61" in (beat.note or "")
    row = runtime.ledger.get(minute_dt(minute))
    assert row is not None
    assert (row.status, row.note) == (SKIPPED_LATE, beat.note)
    assert row.finished_at is not None
    assert dispatch.sent == []


def test_a_minute_without_a_champion_fails_and_is_announced_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "champion_version", lambda: None)
    dispatch = RecordingDispatch()
    inbox = runtime.bus.subscribe()  # type: ignore[attr-defined]
    minute = this_minute()
    outcome = minute_service.start_minute(runtime, dispatch, minute)
    assert outcome == {"minute": minute, "status": FAILED, "note": minute_service.NO_CHAMPION_NOTE}
    # Another process's start (its own lock) finds the row: the minute is announced only once.
    runtime.lock = MemoryMinuteLock()
    assert minute_service.start_minute(runtime, dispatch, minute)["status"] == FAILED
    [beat] = heartbeats(runtime, inbox)
    assert (beat.status, beat.model_version, beat.symbols_asked, beat.failed) == (FAILED, None, 3, 3)
    row = runtime.ledger.get(minute_dt(minute))
    assert row is not None
    assert (row.status, row.note, row.symbols_asked) == (FAILED, minute_service.NO_CHAMPION_NOTE, 3)
    assert dispatch.sent == []


def test_a_start_closes_an_overdue_run_and_records_the_gap(runtime: Runtime) -> None:
    dispatch = RecordingDispatch()
    inbox = runtime.bus.subscribe()  # type: ignore[attr-defined]
    lost = minute_dt(minutes_ago(3))
    run = runtime.ledger.claim(lost, status=RUNNING, model_version="v1", symbols_asked=3)
    assert run is not None
    with runtime.ledger.engine.begin() as conn:
        conn.execute(update(PipelineRun).where(PipelineRun.id == run).values(started_at=lost))
    assert minute_service.start_minute(runtime, dispatch, this_minute())["status"] == RUNNING
    statuses = [(r.minute, r.status) for r in reversed(runtime.ledger.recent(10))]
    assert statuses == [
        (lost, FAILED),
        (lost + timedelta(minutes=1), MISSED),
        (lost + timedelta(minutes=2), MISSED),
        (minute_dt(this_minute()), RUNNING),
    ]
    beats = heartbeats(runtime, inbox)
    assert [(b.minute, b.status) for b in beats] == [
        (lost + timedelta(minutes=1), MISSED),
        (lost + timedelta(minutes=2), MISSED),
        (lost, FAILED),
    ]
    assert (beats[-1].note, beats[-1].failed) == (minute_service.OVERDUE_NOTE, 3)


def test_the_feature_stage_retries_a_transient_error_then_fails_the_chunk_alone(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    error: BaseException = sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    def scaler(_version: str) -> Any:
        raise error

    monkeypatch.setattr(runtime, "scaler", scaler)
    minute = minutes_ago(1)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        features_stage(runtime, ["A", "B"], minute, "run", "v1", may_retry=True)
    out = features_stage(runtime, ["A", "B"], minute, "run", "v1", may_retry=False)
    assert [(d["symbol"], d["ok"]) for d in out] == [("A", False), ("B", False)]
    assert all("OperationalError" in str(d["reason"]) and "chunk_seconds" in d for d in out)
    assert not any("redelivered" in d for d in out)
    # Any other error fails the chunk's symbols at once, even with retries left.
    error = ValueError("bad scaler")
    out = features_stage(runtime, ["A"], minute, "run", "v1", may_retry=True, redelivered=True)
    assert out[0]["ok"] is False
    assert out[0]["reason"] == "feature task error: ValueError: bad scaler"
    assert out[0]["redelivered"] is True


def _one_window_chunk(runtime: Runtime) -> list[list[dict[str, Any]]]:
    key = window_key("run", "A")
    shape = (FEATURE_SPEC.context, FEATURE_SPEC.n_features)
    runtime.windows.put_many({key: np.zeros(shape, dtype=np.float32)}, ttl_seconds=60)
    ref = {"symbol": "A", "ok": True, "key": key, "reason": None, "bar_end_ms": 0, "close": 100.0}
    return [[ref | {"chunk_seconds": 0.25, "redelivered": True}], []]


def test_the_inference_stage_closes_the_run_on_a_model_error_but_not_on_a_transient_one(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    minute = minutes_ago(1)
    run = runtime.ledger.claim(minute_dt(minute), status=RUNNING, model_version="v1", symbols_asked=1)
    assert run is not None
    chunks = _one_window_chunk(runtime)
    error: BaseException = redis.exceptions.ConnectionError("redis restarting")

    def predict(*_args: Any) -> Any:
        raise error

    monkeypatch.setattr(runtime, "predict", predict)
    with pytest.raises(redis.exceptions.ConnectionError):
        inference_stage(runtime, chunks, minute, run, "v1")
    row = runtime.ledger.get(minute_dt(minute))
    assert row is not None
    assert (row.status, row.stage) == (RUNNING, INFERENCE)  # Celery retries it

    error = RuntimeError("CUDA out of memory")
    with pytest.raises(RuntimeError):
        inference_stage(runtime, chunks, minute, run, "v1")
    row = runtime.ledger.get(minute_dt(minute))
    assert row is not None
    assert (row.status, row.note) == (FAILED, "inference failed: RuntimeError: CUDA out of memory")
    assert row.finished_at is not None


def test_the_inference_stage_reports_what_the_features_left(runtime: Runtime) -> None:
    minute = minutes_ago(1)
    run = runtime.ledger.claim(minute_dt(minute), status=RUNNING, model_version="v1", symbols_asked=2)
    assert run is not None
    failed = {"symbol": "B", "ok": False, "key": None, "reason": "stale", "bar_end_ms": None, "close": None}
    chunks = [[failed | {"chunk_seconds": 0.5, "redelivered": True}]]
    result = inference_stage(runtime, chunks, minute, run, "v1")
    assert result["signals"] == []
    assert result["failures"] == {"B": "stale"}
    assert result["symbols_asked"] == 1
    assert result["feature_timings"] == {"features_max_chunk": 0.5, "features_sum": 0.5}
    assert result["note"] == "feature work for 1 symbols was redelivered after a worker loss"


def signal_doc(symbol: str, minute: str, direction: str, expires_at: str) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "minute": minute,
        "model_version": "v1",
        "bar_end": minute,
        "direction": direction,
        "confidence": 0.7,
        "probabilities": {"1h": {"long": 0.7, "short": 0.2, "flat": 0.1}},
        "returns": {"1h": 0.004},
        "risk": {"drawdown_1h": 0.01},
        "entry_price": 100.0,
        "stop_loss": 99.0 if direction != "NEUTRAL" else None,
        "take_profit": 101.5 if direction != "NEUTRAL" else None,
        "expires_at": expires_at,
    }


def inference_result(minute: str, failures: dict[str, str] | None = None) -> dict[str, Any]:
    # The signals of a minute ten minutes ago expired five minutes ago (a replay).
    expired = iso_minute(floor_minute(now_ms()) - 5 * 60_000)
    docs = [signal_doc("A", minute, "LONG", expired), signal_doc("B", minute, "NEUTRAL", expired)]
    predictions = [
        {
            "symbol": d["symbol"],
            "minute": minute,
            "model_version": "v1",
            "outputs": [0.0] * 20,
            "temperature": 1.0,
        }
        for d in docs
    ]
    return {
        "signals": docs,
        "predictions": predictions,
        "failures": failures or {},
        "timings": {"forward": 0.1},
        "feature_timings": {"features_sum": 0.2},
        "symbols_asked": 2 + len(failures or {}),
    }


def test_publish_stores_publishes_and_enqueues_once(runtime: Runtime) -> None:
    inbox = runtime.bus.subscribe()  # type: ignore[attr-defined]
    orders = RecordingOrders()
    minute = minutes_ago(10)
    when = minute_dt(minute)
    run = runtime.ledger.claim(when, status=RUNNING, model_version="v1", symbols_asked=2)
    assert run is not None
    expires = datetime.now(UTC) + timedelta(seconds=55)
    result = inference_result(minute)

    out = publish_minute(runtime, orders, result, minute, run, "v1", expires)
    assert out == {
        "minute": minute,
        "signals": 2,
        "published": 2,
        "order_tasks": ["intent-1"],
        "tick_task": "tick-1",
    }
    assert orders.ticks == [(minute, expires)]
    [intent] = orders.intents
    assert (intent.symbol, intent.direction) == ("A", "LONG")
    assert intent.client_order_id == client_order_id("A", when, "v1")
    # The signal expired already (a replayed minute): its intent lives as long as the minute's tasks.
    assert intent.expires_at == expires
    row = runtime.ledger.get(when)
    assert row is not None
    assert (row.status, row.signals_made, row.stage) == (DONE, 2, PUBLISH)
    assert {"inference_forward", "features_sum", "store", "publish", "minute_total"} <= set(row.timings)
    assert row.finished_at is not None
    [beat] = heartbeats(runtime, inbox)
    assert (beat.status, beat.signals, beat.actionable, beat.failed, beat.symbols_asked) == (DONE, 2, 1, 0, 2)

    # A redelivered publish sends the per-minute step again (idempotent), and nothing else twice.
    again = publish_minute(runtime, orders, result, minute, run, "v1", expires)
    assert (again["signals"], again["published"], again["order_tasks"]) == (2, 0, [])
    assert len(orders.ticks) == 2
    assert len(orders.intents) == 1
    assert heartbeats(runtime, inbox) == []


def test_publish_with_failures_is_partial_and_orders_expire_at_the_deadline(runtime: Runtime) -> None:
    orders = RecordingOrders()
    minute = minutes_ago(10)
    run = runtime.ledger.claim(minute_dt(minute), status=RUNNING, model_version="v1", symbols_asked=3)
    assert run is not None
    result = inference_result(minute, failures={"C": "stale candles"}) | {"note": "redelivered"}
    publish_minute(runtime, orders, result, minute, run, "v1")
    assert orders.ticks == [(minute, deadline(runtime.settings, minute))]
    row = runtime.ledger.get(minute_dt(minute))
    assert row is not None
    assert (row.status, row.failures, row.note) == (PARTIAL, {"C": "stale candles"}, "redelivered")
