"""The Kubernetes liveness probe of the workers (worker/liveness.py) against real Celery workers.

A worker process per case (``worker_command(queue)``, as deployed) on a private Redis of the test's
own (tests/support/brokers.py), so the broker can be stopped without touching the shared one. The
heartbeat file appears once the consumer runs and is touched again and again; the probe (run as the
manifests run it: ``python -P worker/liveness.py``) passes while it is fresh, says ``reconnecting``
and still passes while the broker is down, fails once the worker stopped (the file is gone) and once
a killed worker's file is older than ``--max-age``. Every wait is a bounded poll for the awaited
state, never a fixed sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.brokers import PrivateRedis, private_redis
from tests.support.workers import ROOT, WorkerFleet
from worker import liveness
from worker.queues import Queue

PROBE = ROOT / "worker" / "liveness.py"
INTERVAL_S = 0.5  # the step's touch interval in these tests (10 s deployed)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, logs: Callable[[], str]) -> None:
    """Poll ``condition`` every 50 ms for at most ``timeout_s``; fail with the worker's log otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} within {timeout_s:.0f} s\n{logs()}")


def probe(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The probe as the manifests run it: the file as a script, without the project on sys.path."""
    return subprocess.run(
        [sys.executable, "-P", str(PROBE), "--file", str(path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != liveness.FILE_ENV},
        cwd="/",
    )


def state(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateRedis]:
    with private_redis(tmp_path / "redis") as server:
        yield server


def worker_env(broker: PrivateRedis, tmp_path: Path, alive: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
        liveness.FILE_ENV: str(alive),
        liveness.INTERVAL_ENV: str(INTERVAL_S),
        "MLSIG_CELERY__BROKER_URL": broker.url(0),
        "MLSIG_CELERY__RESULT_BACKEND": broker.url(1),
        "MLSIG_REDIS_URL": broker.url(2),
        "MLSIG_DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}",
        "MLSIG_ML_INTEGRATION__MONITORING__METRICS_ENABLED": "false",
        "MLSIG_LOG_LEVEL": "WARNING",
    }


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("queue", [Queue.SIGNALS, Queue.FEATURES], ids=["solo", "prefork"])
def test_heartbeat_file_tracks_a_real_worker(queue: Queue, broker: PrivateRedis, tmp_path: Path) -> None:
    alive = tmp_path / "run" / "alive"
    alive.parent.mkdir()
    alive.write_text("alive\n")  # a previous container's file: the new worker must delete it first
    os.utime(alive, (time.time() - 3600, time.time() - 3600))
    fleet = WorkerFleet(worker_env(broker, tmp_path, alive), tmp_path)
    extra = ["--concurrency", "1"] if queue is Queue.FEATURES else []
    worker = fleet.start(queue, *extra)
    try:
        wait_until(
            lambda: (m := mtime(alive)) is not None and m > time.time() - 60,
            60,
            "the consumer did not write a fresh heartbeat file",
            fleet.logs,
        )
        assert state(alive) == liveness.ALIVE
        first = probe(alive, "--max-age", "5")
        assert first.returncode == 0, first.stderr
        assert "alive" in first.stdout

        # Touched again and again on the worker's timer, not written once.
        for _ in range(2):
            seen = mtime(alive)

            def touched(previous: float | None = seen) -> bool:
                return mtime(alive) not in (None, previous)

            wait_until(touched, 10, "the file was not touched", fleet.logs)

        # The broker goes away: the consumer restarts its blueprint and says so; the probe passes
        # within the reconnect grace (Kubernetes must not restart the fleet for a broker outage)
        # and fails past it.
        broker.stop()
        wait_until(lambda: state(alive) == liveness.RECONNECTING, 30, "no reconnecting state", fleet.logs)
        during = probe(alive, "--max-age", "5")
        assert during.returncode == 0, during.stderr
        assert "reconnecting" in during.stdout
        lost_at = mtime(alive)
        assert lost_at is not None
        wait_until(lambda: time.time() - lost_at > 1.0, 5, "clock did not advance", fleet.logs)
        assert probe(alive, "--max-age", "5", "--reconnect-grace", "1").returncode == 1

        broker.start()
        wait_until(
            lambda: state(alive) == liveness.ALIVE, 60, "not alive again after reconnecting", fleet.logs
        )
        assert probe(alive, "--max-age", "5").returncode == 0

        # A clean (warm) shutdown deletes the file: the probe fails at once.
        fleet.stop()
        assert worker.process.returncode is not None
        assert not alive.exists()
        after = probe(alive, "--max-age", "5")
        assert after.returncode == 1
        assert "missing" in after.stderr
    finally:
        fleet.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_worker_fails_the_probe_once_its_file_is_older_than_max_age(
    broker: PrivateRedis, tmp_path: Path
) -> None:
    alive = tmp_path / "alive"
    fleet = WorkerFleet(worker_env(broker, tmp_path, alive), tmp_path)
    worker = fleet.start(Queue.CONTROL)
    try:
        wait_until(lambda: state(alive) == liveness.ALIVE, 60, "no heartbeat file", fleet.logs)
        assert probe(alive, "--max-age", "2").returncode == 0
        worker.kill()  # SIGKILL: nothing removes the file, it only grows old
        assert state(alive) == liveness.ALIVE
        last = mtime(alive)
        assert last is not None
        wait_until(lambda: time.time() - last > 2.5, 10, "clock did not advance", fleet.logs)
        assert mtime(alive) == last  # nobody touches it any more
        stale = probe(alive, "--max-age", "2")
        assert stale.returncode == 1
        assert "touched" in stale.stderr
    finally:
        fleet.stop()


# ------------------------------------------------------------------------ the step and check alone


def test_check_reads_state_and_age(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    assert liveness.check(path)[0] is False
    liveness.write_state(path, liveness.ALIVE)
    now = path.stat().st_mtime
    assert liveness.check(path, max_age_s=60, now=now + 59)[0] is True
    assert liveness.check(path, max_age_s=60, now=now + 61)[0] is False
    liveness.write_state(path, liveness.RECONNECTING)
    now = path.stat().st_mtime
    assert liveness.check(path, max_age_s=60, reconnect_grace_s=900, now=now + 600)[0] is True
    assert liveness.check(path, max_age_s=60, reconnect_grace_s=900, now=now + 901)[0] is False
    path.write_text("garbage\n")
    assert liveness.check(path, now=path.stat().st_mtime)[0] is False


def test_step_states_without_a_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """start writes ``alive`` and schedules touches; stop during a running blueprint (a connection
    restart) writes ``reconnecting``; stop while closing, and shutdown, delete the file."""
    from celery import bootsteps

    path = tmp_path / "alive"
    monkeypatch.setenv(liveness.FILE_ENV, str(path))
    monkeypatch.setenv(liveness.INTERVAL_ENV, "7")
    scheduled: list[tuple[float, Any]] = []

    class Entry:
        cancelled = False

        def cancel(self) -> None:
            self.cancelled = True

    def call_repeatedly(secs: float, fun: Any) -> Entry:
        scheduled.append((secs, fun))
        return Entry()

    run, close = vars(bootsteps)["RUN"], vars(bootsteps)["CLOSE"]
    consumer = SimpleNamespace(
        timer=SimpleNamespace(call_repeatedly=call_repeatedly), blueprint=SimpleNamespace(state=run)
    )
    path.write_text("alive\n")
    step = liveness.HeartbeatFile(consumer)
    assert not path.exists()  # a leftover file is deleted at construction
    assert step.include_if(consumer)
    step.start(consumer)
    assert state(path) == liveness.ALIVE
    assert scheduled[0][0] == 7.0
    path.unlink()
    scheduled[0][1]()  # a touch recreates a deleted file
    assert state(path) == liveness.ALIVE
    step.stop(consumer)
    assert state(path) == liveness.RECONNECTING
    step.start(consumer)
    consumer.blueprint.state = close
    step.stop(consumer)
    assert not path.exists()
    step.start(consumer)
    step.shutdown(consumer)
    assert not path.exists()

    monkeypatch.setenv(liveness.FILE_ENV, "")
    assert not liveness.HeartbeatFile(consumer).include_if(consumer)
