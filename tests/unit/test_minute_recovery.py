"""Issue 11: the ledger's missed minutes, the supervisor's re-dispatch and overdue closing, and the
bus that publishes each message once on pub/sub and on the durable stream."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import redis
from sqlalchemy import update

from core.settings import Settings
from data import db
from data.models import PipelineRun
from pipeline import minute_service
from pipeline.bus import BusItem, MemoryBus, RedisBus
from pipeline.ledger import DONE, FAILED, INFERENCE, MISSED, RUNNING, RunLedger
from pipeline.messages import HeartbeatMessage, parse_message
from pipeline.ports import DispatchedChord
from worker.embedded import build_embedded
from worker.runtime import Runtime

M0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def test_missed_minutes_are_recorded_once_back_to_the_newest_row(migrated_url: str) -> None:
    ledger = RunLedger(db.get_engine(migrated_url))
    assert ledger.record_missed(M0, lookback_minutes=60, note="x") == []  # a new ledger expects nothing
    ledger.claim(M0, status=DONE, model_version="v1", symbols_asked=1)
    later = M0 + timedelta(minutes=4)
    recorded = ledger.record_missed(later, lookback_minutes=60, note="beat down")
    assert recorded == [M0 + timedelta(minutes=i) for i in (1, 2, 3)]
    assert ledger.record_missed(later, lookback_minutes=60, note="beat down") == []
    run = ledger.get(M0 + timedelta(minutes=2))
    assert run is not None
    assert (run.status, run.note) == (MISSED, "beat down")
    # After a long stop only the lookback is filled in.
    far = later + timedelta(days=2)
    assert len(ledger.record_missed(far, lookback_minutes=30, note="down")) == 30
    assert ledger.record_missed(far, lookback_minutes=0, note="down") == []


def test_stalled_runs_are_redispatched_once_per_attempt(migrated_url: str) -> None:
    ledger = RunLedger(db.get_engine(migrated_url))
    now = datetime.now(UTC)
    run_id = ledger.claim(now, status=RUNNING, model_version="v1", symbols_asked=3)
    assert run_id is not None
    assert ledger.stalled(now, stalled_for=15, newer_than=now - timedelta(minutes=1)) == []
    later = now + timedelta(seconds=20)
    [stalled] = ledger.stalled(later, stalled_for=15, newer_than=now - timedelta(minutes=1))
    assert (stalled.id, stalled.attempts, stalled.stage) == (run_id, 1, "dispatched")
    assert ledger.claim_redispatch(stalled, "again")
    assert not ledger.claim_redispatch(stalled, "again")  # a second supervisor lost the race
    run = ledger.get(now)
    assert run is not None
    assert (run.attempts, run.note) == (2, "again")
    ledger.mark_stage(run_id, INFERENCE)
    assert ledger.stalled(now + timedelta(seconds=10), stalled_for=15, newer_than=now - timedelta(1)) == []
    ledger.update(run_id, status=DONE, finished=True)
    ledger.mark_stage(run_id, "publish")  # a finished run's stage no longer moves
    run = ledger.get(now)
    assert run is not None
    assert run.stage == INFERENCE


@pytest.fixture
def runtime(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    db.upgrade(sqlite_url)
    settings = Settings(database_url=sqlite_url, data={"universe_size": 3})
    rt = build_embedded(settings)
    monkeypatch.setattr(rt, "champion_version", lambda: "v1")
    return rt


def _claim_at(rt: Runtime, minute: datetime) -> int:
    """A running minute whose dispatch happened at the minute itself (the supervisor's clock is the
    test's ``now`` argument, not the wall clock)."""
    run = rt.ledger.claim(minute, status=RUNNING, model_version="v1", symbols_asked=3)
    assert run is not None
    with rt.ledger.engine.begin() as conn:
        conn.execute(
            update(PipelineRun).where(PipelineRun.id == run).values(stage_at=minute, started_at=minute)
        )
    return run


def _heartbeats(inbox: Any) -> list[HeartbeatMessage]:
    out = []
    while not inbox.empty():
        message = parse_message(inbox.get_nowait()[1])
        assert isinstance(message, HeartbeatMessage)
        out.append(message)
    return out


class RecordingDispatch:
    """The ``ChordDispatch`` port, recording what it was asked to send (chunks as a count)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, str, str, int, datetime]] = []

    def __call__(
        self, minute_iso: str, run: int, run_id: str, version: str, chunks: list[list[str]], expires: datetime
    ) -> DispatchedChord:
        self.sent.append((minute_iso, run, run_id, version, sum(len(c) for c in chunks), expires))
        return DispatchedChord(result_id=f"result-{len(self.sent)}", tasks=len(chunks))


def supervisor_at(
    runtime: Runtime, dispatch: RecordingDispatch, minute: datetime
) -> Callable[[float], dict[str, list[str]]]:
    """The supervisor as beat fires it, at ``minute`` plus a number of seconds."""
    return lambda seconds: minute_service.supervise_minutes(
        runtime, dispatch, minute + timedelta(seconds=seconds)
    )


def test_supervisor_redispatches_a_stalled_minute_and_announces_a_lost_one(runtime: Runtime) -> None:
    dispatch = RecordingDispatch()
    inbox = runtime.bus.subscribe()  # type: ignore[attr-defined]
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    supervise = supervisor_at(runtime, dispatch, now)
    run = _claim_at(runtime, now)
    # Nothing to do while the run makes progress.
    assert supervise(10) == {"closed": [], "redispatched": []}
    report = supervise(20)
    minute_iso = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert report["redispatched"] == [minute_iso]
    # The second attempt writes windows of its own and keeps the minute's deadline.
    deadline = now + timedelta(seconds=runtime.settings.pipeline.minute_deadline_seconds)
    assert dispatch.sent == [(minute_iso, run, f"{minute_iso}/{run}.2", "v1", 3, deadline)]
    # Stalled again, but 15 s before the deadline there is no time for another attempt.
    assert supervise(45)["redispatched"] == []
    assert _heartbeats(inbox) == []
    # Past the deadline (+ grace) the run is closed and announced, once.
    closed = supervise(61)
    assert closed["closed"] == report["redispatched"]
    assert supervise(66)["closed"] == []
    assert len(dispatch.sent) == 1
    [beat] = _heartbeats(inbox)
    assert (beat.status, beat.failed, beat.note) == (FAILED, 3, minute_service.OVERDUE_NOTE)
    row = runtime.ledger.get(now)
    assert row is not None
    assert (row.status, row.attempts) == (FAILED, 2)


def test_supervisor_gives_up_after_max_attempts(runtime: Runtime) -> None:
    dispatch = RecordingDispatch()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    supervise = supervisor_at(runtime, dispatch, now)
    _claim_at(runtime, now)
    limit = runtime.settings.pipeline.max_attempts
    redispatched = sum(len(supervise(1 + 16 * step)["redispatched"]) for step in range(1, 6))
    assert 1 <= redispatched <= limit - 1
    # Each attempt is numbered: its feature windows never mix with another attempt's.
    assert [sent[2].rsplit(".", 1)[1] for sent in dispatch.sent] == [
        str(a) for a in range(2, redispatched + 2)
    ]


def test_a_start_after_a_gap_records_and_announces_the_missed_minutes(runtime: Runtime) -> None:
    inbox = runtime.bus.subscribe()  # type: ignore[attr-defined]
    runtime.ledger.claim(M0, status=DONE, model_version="v1", symbols_asked=3)
    later = M0 + timedelta(minutes=3)
    assert minute_service.record_missed(runtime, later) == [
        M0 + timedelta(minutes=1),
        M0 + timedelta(minutes=2),
    ]
    assert minute_service.record_missed(runtime, later) == []
    beats = _heartbeats(inbox)
    assert [(b.minute, b.status) for b in beats] == [
        (M0 + timedelta(minutes=1), MISSED),
        (M0 + timedelta(minutes=2), MISSED),
    ]
    assert all(b.note == minute_service.MISSED_NOTE for b in beats)


def test_a_late_start_is_skipped_and_still_records_the_minutes_before(runtime: Runtime) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    runtime.ledger.claim(now - timedelta(minutes=5), status=DONE, model_version="v1", symbols_asked=3)
    late = now - timedelta(minutes=2)
    dispatch = RecordingDispatch()
    outcome = minute_service.start_minute(runtime, dispatch, late.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert dispatch.sent == []
    assert outcome["status"] == "skipped_late"
    statuses = [(r.minute.replace(tzinfo=UTC), r.status) for r in reversed(runtime.ledger.recent(10))]
    assert statuses == [
        (now - timedelta(minutes=5), DONE),
        (now - timedelta(minutes=4), MISSED),
        (now - timedelta(minutes=3), MISSED),
        (late, "skipped_late"),
    ]


def test_memory_bus_sends_each_item_once() -> None:
    bus = MemoryBus()
    inbox = bus.subscribe(["a"])
    item = BusItem("signal:1", "signal", "1", "{}", ("a", "b"))
    assert bus.publish_once([item, BusItem("signal:2", "signal", "2", "[]", ("a",))]) == 2
    assert bus.publish_once([item]) == 0
    assert [inbox.get_nowait() for _ in range(2)] == [("a", "{}"), ("a", "[]")]
    assert inbox.empty()


@pytest.mark.integration
def test_redis_bus_appends_to_the_stream_and_publishes_once(clean_redis: redis.Redis) -> None:
    client = clean_redis
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("sig")
    assert pubsub.get_message(timeout=1) is None
    bus = RedisBus(client, "test:stream", maxlen=1000)
    items = [BusItem(f"signal:{i}", "signal", str(i), json.dumps({"n": i}), ("sig",)) for i in range(3)]
    assert bus.publish_once(items) == 3
    assert bus.publish_once([*items[1:], BusItem("signal:9", "signal", "9", "{}", ("sig",))]) == 1
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange("test:stream"))
    assert [e[1][b"sequence"] for e in entries] == [b"0", b"1", b"2", b"9"]
    assert {e[1][b"type"] for e in entries} == {b"signal"}
    got = []
    while (message := pubsub.get_message(timeout=2)) is not None:
        got.append(message["data"])
    assert got == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}', b"{}"]


@pytest.mark.integration
def test_redis_bus_trims_the_stream_to_about_maxlen(clean_redis: redis.Redis) -> None:
    client = clean_redis
    bus = RedisBus(client, "test:stream", maxlen=1000)
    for batch in range(5):
        bus.publish_once([BusItem(f"s:{batch}:{i}", "signal", str(i), "{}", ()) for i in range(1000)])
    length = client.xlen("test:stream")
    assert 1000 <= length < 2000  # approximate trimming works in whole radix-tree nodes
