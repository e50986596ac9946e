"""``tasks.quality.score`` on a real `control` worker (Redis broker, PostgreSQL): the beat schedule
holds it, a sent task scores what is due, a second one adds nothing, and the worker killed (SIGKILL)
while a pass runs loses nothing: the redelivered task (acks_late) completes it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.settings import Settings
from data import db
from data.models import SignalOutcome
from quality.outcomes import HORIZONS
from tests.support.quality import N_MINUTES, N_SYMBOLS, build_ledger
from tests.support.workers import (
    celery_client,
    deployment_env,
    running_fleet,
    wait_for_workers,
)
from worker.queues import Queue
from worker.schedule import beat_schedule

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOTAL = N_MINUTES * N_SYMBOLS * len(HORIZONS)


def rows(engine: Any) -> tuple[int, int]:
    o = SignalOutcome
    with engine.connect() as conn:
        n = int(conn.execute(select(func.count()).select_from(o)).scalar() or 0)
        keys = select(o.signal_id, o.horizon_bars).distinct().subquery()
        distinct = int(conn.execute(select(func.count()).select_from(keys)).scalar() or 0)
    return n, distinct


def test_the_beat_schedule_runs_the_quality_pass() -> None:
    schedule = beat_schedule(Settings())
    assert schedule["score-signal-outcomes"]["task"] == "tasks.quality.score"
    assert schedule["score-signal-outcomes"]["schedule"] == Settings().quality.interval_seconds
    assert "score-signal-outcomes" not in beat_schedule(Settings(quality={"enabled": False}))


def test_the_quality_task_on_a_real_worker_survives_a_kill(pg_url: str, tmp_path: Path) -> None:
    db.upgrade(pg_url)
    ledger = build_ledger(tmp_path, pg_url)
    env = deployment_env(
        pg_url,
        tmp_path / "models",
        MLSIG_CELERY__VISIBILITY_TIMEOUT_SECONDS="6",
        MLSIG_CELERY__UNACKED_RESTORE_INTERVAL_SECONDS="1",
        MLSIG_DATA__UNIVERSE_SIZE=str(N_SYMBOLS),
    )
    client = celery_client(env, "quality-test")
    with running_fleet(env, tmp_path, [Queue.CONTROL]) as fleet:
        wait_for_workers(client, fleet)
        sent = client.send_task("tasks.quality.score", queue=Queue.CONTROL.value)
        deadline = time.monotonic() + 120
        while rows(ledger.engine)[0] == 0:  # the first committed minute is the event
            assert time.monotonic() < deadline, fleet.logs()
            time.sleep(0.02)
        fleet.workers[Queue.CONTROL].kill()
        partial, _ = rows(ledger.engine)
        assert 0 < partial < TOTAL  # killed mid-pass
        # A new worker gets the unacknowledged task back after the visibility timeout and finishes.
        fleet.start(Queue.CONTROL)
        summary = sent.get(timeout=180)
        assert summary["breaker"]["state"] == "no_champion"
        n, distinct = rows(ledger.engine)
        assert n == distinct == TOTAL
        again = client.send_task("tasks.quality.score", queue=Queue.CONTROL.value).get(timeout=60)
        assert again["outcomes"] == {**again["outcomes"], "minutes": 0, "resolved": 0, "unresolved": 0}
        assert rows(ledger.engine) == (TOTAL, TOTAL)
