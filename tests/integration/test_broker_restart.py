"""Issue 11: a worker survives a broker restart by reconnecting, or exits non-zero.

Each case runs the production command line of one queue's worker (worker/queues.py: pool and
prefetch as deployed) against a private broker (tests/support/brokers.py), starts a task, restarts
the broker while the task runs, and then requires one of two outcomes:

* the worker process is alive and executes a task sent after the restart, within a bound; or
* it has exited with a non-zero status, so that a supervisor restarting on failure brings it back
  (and when Celery logged an "Unrecoverable error", with worker.exit_status's status 70).

Redis runs with its append-only file on, as in docker-compose.yml, and is the broker and result
backend (db 0 and 1), as deployed. RabbitMQ is the broker only (quorum queues, publisher confirms);
results go to a private Redis that is not restarted. With celery 5.7.0 / kombu 5.7.0 the features
(prefork, concurrency > 1) and control (threads) workers on Redis take the second branch (kombu's
``AttributeError: 'NoneType' object has no attribute 'hostname'``); the others reconnect.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.exceptions import BackendError

from tests.support.brokers import PrivateRabbit, PrivateRedis, free_port, free_rabbit_port
from tests.support.workers import ROOT, WorkerFleet, WorkerProcess
from worker.exit_status import EX_UNRECOVERABLE
from worker.queues import Queue, task_queues

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAOS_TASKS = "tests.support.chaos_tasks"
TASK_SECONDS = 4.0  # the task in flight while the broker restarts
READY_S = 90.0  # worker start to first task done
RECOVER_S = 60.0  # broker back to a new task done (Celery retries after 2 s, 4 s, ...)
EXIT_S = 60.0  # a dying worker's warm shutdown waits for its running task

# pool -> the production queue whose worker uses it, plus options that make the case deterministic:
# the features worker's default concurrency is the CPU count; two processes keep a BRPOP pending
# while one task runs (the condition of the kombu failure) on any machine.
POOLS: dict[str, tuple[Queue, tuple[str, ...]]] = {
    "prefork": (Queue.FEATURES, ("--concurrency", "2")),
    "solo": (Queue.SIGNALS, ()),
    "threads": (Queue.CONTROL, ()),
}


@dataclass
class Broker:
    kind: str
    url: str
    backend: str
    server: PrivateRedis | PrivateRabbit

    def restart(self) -> None:
        self.server.restart()


@pytest.fixture(scope="module")
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    """One private RabbitMQ node for the module (it takes ~6 s to start); each case uses its own
    queue (one per pool), so cases do not share messages."""
    port = free_rabbit_port()
    node = PrivateRabbit(port, tmp_path_factory.mktemp("rabbit"), name=f"restart{port}")
    node.start()
    yield node
    node.stop()


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    kind = request.param
    if kind == "redis":
        server = PrivateRedis(free_port(), tmp_path / "redis", persist=True)
        server.start()
        try:
            yield Broker(kind, server.url(0), server.url(1), server)
        finally:
            server.stop()
        return
    node: PrivateRabbit = request.getfixturevalue("rabbit_node")
    results = PrivateRedis(free_port(), tmp_path / "results")
    results.start()
    try:
        yield Broker(kind, node.url, results.url(1), node)
    finally:
        results.stop()
        if not node.running:  # a failed restart: the next case gets a started node again
            node.start()


def release(client: Celery) -> None:
    """Close a client while its result backend is up. ``send_task`` subscribes to the task's result
    channel, and the AsyncResult's ``__del__`` unsubscribes; run by a later garbage collection with
    the backend gone, that retries for 20 s and ends in an unraisable error in some other test."""
    gc.collect()
    client.close()


def make_client(broker: Broker) -> Celery:
    amqp = broker.kind == "rabbitmq"
    client = Celery("restart-client", broker=broker.url, backend=broker.backend, set_as_current=False)
    client.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_queues=task_queues(quorum=amqp),
        task_default_queue=Queue.CONTROL.value,
        task_create_missing_queues=False,
        broker_transport_options={"confirm_publish": True} if amqp else {},
    )
    return client


def worker_env(broker_url: str, backend_url: str, tmp: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
        "MLSIG_CELERY__BROKER_URL": broker_url,
        "MLSIG_CELERY__RESULT_BACKEND": backend_url,
        "MLSIG_REDIS_URL": backend_url,
        "MLSIG_DATABASE_URL": f"sqlite:///{tmp}/restart.db",
        "MLSIG_MODEL__REGISTRY_DIR": str(tmp / "models"),
        "MLSIG_LOG_LEVEL": "WARNING",
        "OPENBLAS_NUM_THREADS": "1",
    }


def result_within(client: Celery, task_id: str, seconds: float, worker: WorkerProcess) -> object | None:
    """The task's result once it is ready; None if the worker exits first or time runs out.
    Polls the result backend (which may itself be reconnecting) against a deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = client.AsyncResult(task_id)
            if result.ready():  # read from the backend, no pub/sub subscription that could outlive it
                return result.result
        except (redis.RedisError, BackendError, OSError):  # the backend is coming back: try again
            pass
        if worker.process.poll() is not None:
            return None
        time.sleep(0.2)
    return None


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def report(request: pytest.FixtureRequest, outcome: str) -> None:
    """Which branch a case took: in the junit XML and, with ``-rP``, in the summary."""
    request.node.user_properties.append(("outcome", outcome))
    print(f"outcome: {outcome}")


def log_tail(worker: WorkerProcess) -> str:
    return worker.log.read_text(errors="replace")[-4000:]


CASES = [
    pytest.param("redis", "prefork", id="redis-prefork"),  # the reported one (features worker)
    pytest.param("redis", "solo", id="redis-solo"),
    pytest.param("redis", "threads", id="redis-threads"),
    pytest.param("rabbitmq", "prefork", id="rabbitmq-prefork"),
    pytest.param("rabbitmq", "solo", id="rabbitmq-solo"),
    pytest.param("rabbitmq", "threads", id="rabbitmq-threads"),
]


@pytest.mark.parametrize(("broker", "pool"), CASES, indirect=["broker"])
def test_worker_survives_a_broker_restart_or_exits_non_zero(
    broker: Broker, pool: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    queue, options = POOLS[pool]
    fleet = WorkerFleet(worker_env(broker.url, broker.backend, tmp_path), tmp_path)
    client = make_client(broker)
    try:
        worker = fleet.start(queue, "--include", CHAOS_TASKS, *options)
        # Only task ids are kept, so that release() finds no AsyncResult alive (see there).
        first = client.send_task("tests.chaos.ping_task", args=["before"], queue=queue.value).id
        ready = result_within(client, first, READY_S, worker)
        assert isinstance(ready, dict), f"worker not ready:\n{log_tail(worker)}"
        assert ready["value"] == "before"

        marker = tmp_path / "started"
        client.send_task(
            "tests.chaos.sleep_then_return", args=[TASK_SECONDS, "long", str(marker)], queue=queue.value
        )
        assert wait_for(marker.exists, 30), f"the long task did not start:\n{log_tail(worker)}"

        release(client)  # a fresh client after the restart: the old one's connections die with it
        restarted_at = time.monotonic()
        broker.restart()
        client = make_client(broker)
        after = client.send_task("tests.chaos.ping_task", args=["after"], queue=queue.value).id
        outcome = result_within(client, after, RECOVER_S, worker)

        if outcome is not None:
            assert isinstance(outcome, dict)
            assert outcome["value"] == "after"
            assert worker.process.poll() is None
            report(request, f"reconnected: a new task done {time.monotonic() - restarted_at:.1f}s after")
            return
        # Not served: the worker must be gone, with a status a supervisor restarts on.
        assert wait_for(lambda: worker.process.poll() is not None, EXIT_S), (
            f"alive but no task done within {RECOVER_S:.0f}s of the broker restart:\n{log_tail(worker)}"
        )
        code = worker.process.returncode
        report(request, f"exited with status {code}")
        log = worker.log.read_text(errors="replace")
        assert code != 0, f"the worker exited with status 0 after the broker restart:\n{log[-4000:]}"
        if "stopped by an unrecoverable error" in log:
            assert code == EX_UNRECOVERABLE
    finally:
        release(client)
        fleet.stop()


SAFETY_NET_SCRIPT = """
import logging, sys
from celery.signals import celeryd_init
import worker.app  # registers worker.lifecycle's hooks, as `celery -A worker worker` does
celeryd_init.send(sender="probe@localhost", instance=None, conf=None, options={})
logging.getLogger("celery.worker").critical(sys.argv[1], RuntimeError("boom"))
raise SystemExit(int(sys.argv[2]))
"""


@pytest.mark.parametrize(
    ("message", "status", "expected"),
    [
        pytest.param("Unrecoverable error: %r", 0, EX_UNRECOVERABLE, id="unrecoverable-then-exit-0"),
        pytest.param("Unrecoverable error: %r", 1, EX_UNRECOVERABLE, id="unrecoverable-then-exit-1"),
        pytest.param("Some other critical record: %r", 0, 0, id="other-critical-keeps-0"),
    ],
)
def test_a_worker_process_that_logged_an_unrecoverable_error_exits_70(
    message: str, status: int, expected: int, tmp_path: Path
) -> None:
    """The safety net on its own: whatever status the worker program would exit with once Celery
    logged an unrecoverable error (0 when a SystemExit(0) wins during the shutdown), it is 70."""
    env = worker_env("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/1", tmp_path)  # never connected
    run = subprocess.run(
        [sys.executable, "-c", SAFETY_NET_SCRIPT, message, str(status)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == expected, run.stderr[-3000:]
