"""Issue 5's acceptance: one minute for 50 symbols with real Redis, PostgreSQL and one worker process
per queue; a rerun adds nothing; a features worker killed with SIGKILL loses and duplicates nothing.
Issue 11: the same minute with RabbitMQ as the broker (quorum queues, publisher confirms).
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, func, select

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.models import MlPrediction, OrderIntent, SignalRecord
from pipeline.clock import minute_dt
from pipeline.ledger import RunLedger
from pipeline.messages import HeartbeatMessage, SignalMessage, parse_message
from pipeline.signal_store import SignalStore
from tests.conftest import redis_db
from tests.support.models import untrained_registry
from tests.support.workers import (
    BROKER_DB,
    WorkerFleet,
    backfill_live_history,
    celery_client,
    deployment_env,
    running_fleet,
)
from worker.queues import Queue, task_queues

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_SYMBOLS = 50


@dataclass
class Deployment:
    env: dict[str, str]
    client: Celery
    engine: Engine
    channel: str
    heartbeat: str
    tmp: Path
    settings: Settings = field(default_factory=Settings)


@pytest.fixture
def rabbit_vhost() -> Iterator[str]:
    """A fresh virtual host on the machine's RabbitMQ: its own quorum queues, deleted after."""
    vhost = f"mlsig-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True
    )
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], check=False)


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """Redis unless a test asks for ``rabbitmq`` (indirect parametrisation)."""
    if getattr(request, "param", "redis") == "rabbitmq":
        return str(request.getfixturevalue("rabbit_vhost"))
    return redis_db(BROKER_DB)


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path, broker_url: str) -> Iterator[Deployment]:
    channel = f"signals-{uuid.uuid4().hex[:8]}"
    registry = untrained_registry(tmp_path / "models")
    env = deployment_env(
        pg_url,
        registry.root,
        broker_url=broker_url,
        MLSIG_CELERY__VISIBILITY_TIMEOUT_SECONDS="6",
        MLSIG_CELERY__UNACKED_RESTORE_INTERVAL_SECONDS="1",
        MLSIG_PIPELINE__CHANNEL=channel,
        MLSIG_PIPELINE__HEARTBEAT_CHANNEL=f"{channel}:heartbeat",
        MLSIG_PIPELINE__CANDLE_WAIT_SECONDS="0",
        MLSIG_PIPELINE__SYMBOLS_PER_TASK="5",
        MLSIG_ML_INTEGRATION__SIGNALS__CONFIDENCE_THRESHOLD="0.34",
    )
    backfill_live_history(pg_url, N_SYMBOLS, end_lag_minutes=10)
    engine = db.get_engine(pg_url)
    client = celery_client(env, "test-client")
    amqp = broker_url.startswith("amqp")
    client.conf.update(
        task_queues=task_queues(quorum=amqp),
        broker_transport_options={"confirm_publish": True} if amqp else {},
    )
    yield Deployment(env, client, engine, channel, f"{channel}:heartbeat", tmp_path)
    client.close()


def wait_for_workers(client: Celery, fleet: WorkerFleet, count: int) -> None:
    for _ in range(120):
        if len(client.control.ping(timeout=0.5) or []) >= count:
            return
    pytest.fail(f"workers did not answer ping:\n{fleet.logs()}")


class Subscriber:
    """Collects messages from the signal channel until the minute's heartbeat arrives."""

    def __init__(self, deployment: Deployment) -> None:
        self.pubsub = redis.Redis.from_url(deployment.env["MLSIG_REDIS_URL"]).pubsub(
            ignore_subscribe_messages=True
        )
        self.pubsub.subscribe(deployment.channel, deployment.heartbeat)
        self.messages: list[SignalMessage | HeartbeatMessage] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for item in self.pubsub.listen():
            message = parse_message(item["data"])
            self.messages.append(message)
            if isinstance(message, HeartbeatMessage):
                self.done.set()
                return

    def close(self) -> None:
        self.pubsub.close()


def run_minute(d: Deployment, minute: str) -> dict[str, object]:
    started = d.client.send_task("tasks.pipeline.run_minute", args=[minute, True], queue=Queue.CONTROL.value)
    outcome: dict[str, object] = started.get(timeout=60)
    return outcome


def counts(d: Deployment) -> tuple[int, int, int]:
    with d.engine.connect() as conn:
        signals, predictions, intents = (
            int(conn.execute(select(func.count()).select_from(model)).scalar_one())
            for model in (SignalRecord, MlPrediction, OrderIntent)
        )
    return signals, predictions, intents


@pytest.mark.parametrize("broker_url", ["redis", "rabbitmq"], indirect=True)
def test_one_minute_for_50_symbols_and_a_rerun_adds_nothing(deployment: Deployment) -> None:
    d = deployment
    minute = iso_minute(floor_minute(now_ms()) - 10 * MINUTE_MS)
    with running_fleet(d.env, d.tmp) as fleet:
        wait_for_workers(d.client, fleet, len(Queue))
        subscriber = Subscriber(d)
        outcome = run_minute(d, minute)
        assert outcome["status"] == "running", outcome
        published = d.client.AsyncResult(str(outcome["result_id"])).get(timeout=90)
        for task_id in published["order_tasks"]:
            d.client.AsyncResult(task_id).get(timeout=30)
        assert subscriber.done.wait(timeout=30), fleet.logs()
        subscriber.close()

        signals = [m for m in subscriber.messages if isinstance(m, SignalMessage)]
        beat = subscriber.messages[-1]
        rows = SignalStore(d.engine).for_minute(minute_dt(minute))
        run = RunLedger(d.engine).get(minute_dt(minute))
        assert run is not None
        assert run.status == "done", (run.failures, fleet.logs())
        assert len(rows) == N_SYMBOLS
        assert len(signals) == N_SYMBOLS
        assert {s.symbol for s in signals} == {r.symbol for r in rows}
        assert isinstance(beat, HeartbeatMessage)
        assert beat.signals == N_SYMBOLS
        actionable = [r for r in rows if r.direction != "NEUTRAL"]
        assert beat.actionable == len(actionable) == len(published["order_tasks"])
        assert counts(d) == (N_SYMBOLS, N_SYMBOLS, len(actionable))

        again = run_minute(d, minute)
        assert again["status"] == "duplicate"
        assert counts(d) == (N_SYMBOLS, N_SYMBOLS, len(actionable))


def test_features_worker_killed_mid_minute(deployment: Deployment) -> None:
    d = deployment
    minute = iso_minute(floor_minute(now_ms()) - 9 * MINUTE_MS)
    broker = redis.Redis.from_url(d.env["MLSIG_CELERY__BROKER_URL"])
    others: list[Queue] = [q for q in Queue if q is not Queue.FEATURES]
    with running_fleet(d.env, d.tmp, others) as fleet:
        wait_for_workers(d.client, fleet, len(others))
        outcome = run_minute(d, minute)
        assert outcome["status"] == "running", outcome
        assert broker.llen(Queue.FEATURES.value) == N_SYMBOLS // 5

        victim = fleet.start(Queue.FEATURES, "--concurrency", "1")
        # The victim holds a chunk unacknowledged (late ack) as soon as it starts consuming.
        for _ in range(600):
            if broker.hlen("unacked") > 0:
                break
            threading.Event().wait(0.05)
        assert broker.hlen("unacked") > 0, fleet.logs()
        victim.kill()

        fleet.start(Queue.FEATURES, "--concurrency", "1")
        published = d.client.AsyncResult(str(outcome["result_id"])).get(timeout=120)
        for task_id in published["order_tasks"]:
            d.client.AsyncResult(task_id).get(timeout=30)

    run = RunLedger(d.engine).get(minute_dt(minute))
    assert run is not None
    assert run.status == "done", run.failures
    assert run.signals_made == N_SYMBOLS
    assert "redelivered after a worker loss" in (run.note or "")
    signals, predictions, _ = counts(d)
    assert (signals, predictions) == (N_SYMBOLS, N_SYMBOLS)


def test_inference_worker_killed_after_receiving_the_batch_is_saved_by_the_supervisor(
    deployment: Deployment,
) -> None:
    """Redis keeps a killed worker's task until the visibility timeout (60 s, after the deadline):
    the supervisor re-dispatches the stalled minute and it finishes once, with every signal."""
    d = deployment
    d.env |= {
        "MLSIG_CELERY__VISIBILITY_TIMEOUT_SECONDS": "600",  # as if redelivery came too late
        "MLSIG_PIPELINE__STALL_SECONDS": "8",
        # Any second of the minute will do as a start: the test does not wait for a boundary.
        "MLSIG_PIPELINE__MAX_START_DELAY_SECONDS": "59",
        "MLSIG_PIPELINE__MINUTE_DEADLINE_SECONDS": "170",
    }
    broker = redis.Redis.from_url(d.env["MLSIG_CELERY__BROKER_URL"])
    others: list[Queue] = [q for q in Queue if q is not Queue.INFERENCE]
    with running_fleet(d.env, d.tmp, others) as fleet:
        wait_for_workers(d.client, fleet, len(others))
        subscriber = Subscriber(d)
        started = d.client.send_task("tasks.pipeline.run_minute", queue=Queue.CONTROL.value).get(timeout=60)
        assert started["status"] == "running", started
        minute = str(started["minute"])
        wait_until(lambda: broker.llen(Queue.INFERENCE.value) == 1, fleet, "predict_batch was not queued")
        victim = fleet.start(Queue.INFERENCE)
        # The victim took the batch: the queue is empty and the message waits unacknowledged.
        wait_until(lambda: broker.llen(Queue.INFERENCE.value) == 0, fleet, "the victim took nothing")
        victim.kill()
        fleet.start(Queue.INFERENCE)
        ledger = RunLedger(d.engine)

        def finished() -> bool:
            # What beat does every few seconds.
            d.client.send_task("tasks.pipeline.supervise", queue=Queue.CONTROL.value).get(timeout=30)
            run = ledger.get(minute_dt(minute))
            return run is not None and run.status != "running"

        wait_until(finished, fleet, "the minute did not finish", timeout=150)
        assert subscriber.done.wait(timeout=30), fleet.logs()
        subscriber.close()
        # The workers' own log lines reach their output (Celery does not swallow them).
        assert "minute re-dispatched" in fleet.workers[Queue.CONTROL].log.read_text()

    run = ledger.get(minute_dt(minute))
    assert run is not None
    assert run.status == "done", (run.note, run.failures)
    # The first attempt cannot finish (its batch is held for 600 s): at least one re-dispatch; on a
    # loaded machine a slow second attempt may itself be re-dispatched, which duplicates nothing.
    assert run.attempts >= 2
    assert run.signals_made == N_SYMBOLS
    signals = [m for m in subscriber.messages if isinstance(m, SignalMessage)]
    assert len(signals) == len({m.sequence for m in signals}) == N_SYMBOLS
    assert counts(d)[:2] == (N_SYMBOLS, N_SYMBOLS)


def wait_until(
    condition: Callable[[], bool], fleet: WorkerFleet, message: str, timeout: float = 60.0
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        threading.Event().wait(0.05)
    pytest.fail(f"{message}:\n{fleet.logs()}")
