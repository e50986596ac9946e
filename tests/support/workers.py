"""Real Celery worker processes for the integration tests: one per queue, as in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from worker.queues import Queue, worker_command

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    queue: Queue
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the worker and its pool children (they share its process group)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class WorkerFleet:
    env: dict[str, str]
    tmp: Path
    workers: dict[Queue, WorkerProcess] = field(default_factory=dict)  # the newest per queue
    started: list[WorkerProcess] = field(default_factory=list)  # every process, for stop()

    def start(self, queue: Queue, *extra: str) -> WorkerProcess:
        command = worker_command(queue, loglevel="WARNING")
        command[0] = str(Path(sys.executable).with_name("celery"))
        command[command.index("-n") + 1] = f"{queue.value}-{len(self.started)}-{os.getpid()}@%h"
        log = self.tmp / f"worker-{queue.value}-{time.monotonic_ns()}.log"
        handle = log.open("wb")
        process = subprocess.Popen(
            [*command, *extra],
            cwd=ROOT,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so kill() reaches the pool children
        )
        worker = WorkerProcess(queue, process, log)
        self.workers[queue] = worker
        self.started.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGTERM)
        for worker in self.started:
            try:
                worker.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            f"--- {w.queue} ---\n{w.log.read_text(errors='replace')[-3000:]}" for w in self.started
        )


@contextmanager
def running_fleet(
    env: Mapping[str, str], tmp: Path, queues: list[Queue] | None = None
) -> Iterator[WorkerFleet]:
    fleet = WorkerFleet(dict(env), tmp)
    try:
        for queue in queues or list(Queue):
            fleet.start(queue, *(["--concurrency", "1"] if queue is Queue.FEATURES else []))
        yield fleet
    finally:
        fleet.stop()


def wait_for_workers(client: Celery, fleet: WorkerFleet, timeout_s: float = 120.0) -> None:
    """Until every started worker process answers a ping; a clear error when they do not."""
    expected = [f"{w.queue.value} (pid {w.process.pid})" for w in fleet.started]
    deadline = time.monotonic() + timeout_s
    answered: list[str] = []
    while time.monotonic() < deadline:
        answered = sorted(name for reply in client.control.ping(timeout=0.5) or [] for name in reply)
        if len(answered) >= len(fleet.started):
            return
        if any(w.process.poll() is not None for w in fleet.started):
            break  # a worker exited: waiting longer cannot help
    exited = [
        f"{w.queue.value} (exit code {w.process.returncode})"
        for w in fleet.started
        if w.process.poll() is not None
    ]
    raise RuntimeError(
        f"the workers did not come up: waited up to {timeout_s:.0f} s for {len(expected)} Celery worker "
        f"processes ({', '.join(expected)}) to answer a ping on broker "
        f"{client.conf.broker_url}; {len(answered)} answered ({', '.join(answered) or 'none'}); "
        f"exited: {', '.join(exited) or 'none'}.\nWorker logs (tail):\n{fleet.logs()}"
    )


def celery_client(env: Mapping[str, str], name: str) -> Celery:
    """A client of the deployment in ``env`` (its broker and result backend), JSON only as the
    workers; never the process's current app."""
    client = Celery(
        name,
        broker=env["MLSIG_CELERY__BROKER_URL"],
        backend=env["MLSIG_CELERY__RESULT_BACKEND"],
        set_as_current=False,
    )
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return client


# The distributed tests' databases on the test Redis (broker, results, application): flushed by
# ``deployment_env``; never the developer's db 0, nor a number the other tests use.
BROKER_DB, BACKEND_DB, APP_DB = 11, 12, 13


def deployment_env(
    database_url: str, registry_dir: Path | str, *, broker_url: str | None = None, **settings: str
) -> dict[str, str]:
    """The environment of a test deployment's worker processes: this process's variables without
    any ``MLSIG_*``, then its database, the three Redis databases (emptied here), the registry, quiet
    logs, one BLAS thread, and ``settings`` (``MLSIG_…`` names to values)."""
    import redis

    from tests.conftest import redis_db

    for number in (BROKER_DB, BACKEND_DB, APP_DB):
        redis.Redis.from_url(redis_db(number)).flushdb()
    return (
        {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")}
        | {
            "MLSIG_DATABASE_URL": database_url,
            "MLSIG_REDIS_URL": redis_db(APP_DB),
            "MLSIG_CELERY__BROKER_URL": broker_url or redis_db(BROKER_DB),
            "MLSIG_CELERY__RESULT_BACKEND": redis_db(BACKEND_DB),
            "MLSIG_MODEL__REGISTRY_DIR": str(registry_dir),
            "MLSIG_LOG_LEVEL": "WARNING",
            "OPENBLAS_NUM_THREADS": "1",
        }
        | settings
    )


def embedded_settings(root: Path, n_symbols: int, *, per_task: int = 2, **overrides: Any) -> Any:
    """Settings of an embedded test deployment under ``root``: ``n_symbols`` simulated symbols,
    ``per_task`` per feature task, no wait for candles, no trading cooldown (``overrides`` replace
    top-level settings, e.g. ``database_url``)."""
    from core.settings import Settings

    return Settings(
        **{
            "data_dir": root,
            "data": {"universe_size": n_symbols},
            "model": {"registry_dir": root / "models", "device": "cpu"},
            "pipeline": {"symbols_per_task": per_task, "candle_wait_seconds": 0},
            "trading": {"cooldown_minutes": 0},
            **overrides,
        }
    )


def backfill_live_history(
    database_url: str, n_symbols: int, end_lag_minutes: int, extra_minutes: int = 60
) -> None:
    """The model's window of simulated candles (and ``extra_minutes`` more) for the first
    ``n_symbols`` of the default simulator, ending ``end_lag_minutes`` before the current minute, on
    a migrated database."""
    from core.timegrid import MINUTE_MS, floor_minute, now_ms
    from data import db
    from data.ingest import Ingestor
    from data.sources.simulator import SimulatedMarket
    from data.store import CandleStore
    from data.validation import ValidationPolicy
    from ml.features import FEATURE_SPEC

    db.upgrade(database_url)
    market = SimulatedMarket()
    days = (FEATURE_SPEC.window * 15 + extra_minutes) / 1440
    report = Ingestor(CandleStore(db.get_engine(database_url)), market, ValidationPolicy()).backfill(
        market.list_symbols()[:n_symbols], days, end_ms=floor_minute(now_ms()) - end_lag_minutes * MINUTE_MS
    )
    assert report.ok, report
