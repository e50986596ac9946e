"""What worker processes leave in Redis for the metrics exporter: heartbeats and model loads.

Workers never serve metrics themselves (prefork children, restarts and several hosts would make
per-process counters wrong); the exporter reads the durable state instead (docs/MONITORING.md).
Two things exist only in a worker's memory, so workers write them to Redis:

* ``mlsig:workers``: a sorted set, one member per worker process (``hostname|pid|queue,queue``),
  scored with the time of its last heartbeat. A worker is up while its heartbeat is younger than
  three periods; a clean shutdown removes it at once.
* ``mlsig:model:loads``: how many times an inference process loaded a model version (start and hot
  reloads), a counter that outlives the processes.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterable

import redis

from core.logging import get_logger

log = get_logger(__name__)

WORKERS_KEY = "mlsig:workers"
MODEL_LOADS_KEY = "mlsig:model:loads"
# Minutes whose shadow challenger failed (load, prediction or decoding): outlives the inference processes.
SHADOW_FAILURES_KEY = "mlsig:shadow:failures"
# A worker whose heartbeat is older than this many periods is down.
MISSED_BEATS = 3


def member(hostname: str, pid: int, queues: Iterable[str]) -> str:
    return f"{hostname}|{pid}|{','.join(sorted(queues))}"


def beat(client: redis.Redis, name: str, now: float | None = None) -> None:
    client.zadd(WORKERS_KEY, {name: time.time() if now is None else now})


def workers_up(client: redis.Redis, period_s: float, now: float | None = None) -> Counter[str]:
    """Live worker processes per queue; drops members that stopped beating long ago."""
    now = time.time() if now is None else now
    oldest = now - MISSED_BEATS * period_s
    pipe = client.pipeline()
    # Members silent for a day are gone for good (a killed worker cannot remove itself).
    pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 86_400)
    pipe.zrangebyscore(WORKERS_KEY, oldest, "+inf")
    _, live = pipe.execute()
    up: Counter[str] = Counter()
    for raw in live:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        queues = text.rsplit("|", 1)[-1]
        up.update(q for q in queues.split(",") if q)
    return up


def record_model_load(client: redis.Redis) -> None:
    client.incr(MODEL_LOADS_KEY)


def model_loads(client: redis.Redis) -> int:
    return int(client.get(MODEL_LOADS_KEY) or 0)


def record_shadow_failure(client: redis.Redis) -> None:
    client.incr(SHADOW_FAILURES_KEY)


def shadow_failures(client: redis.Redis) -> int:
    return int(client.get(SHADOW_FAILURES_KEY) or 0)


class Heartbeat:
    """A daemon thread that beats every ``period_s`` until stopped.

    A thread rather than a timer on the worker's event loop: a solo worker busy with a long task
    does not run its loop's timers, and would look dead while it works.
    """

    def __init__(self, client: redis.Redis, hostname: str, queues: Iterable[str], period_s: float) -> None:
        self.client = client
        self.name = member(hostname, os.getpid(), queues)
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlsig-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.period_s)
        try:
            self.client.zrem(WORKERS_KEY, self.name)
        except redis.RedisError as exc:
            log.warning("worker heartbeat not removed", error=str(exc))

    def _run(self) -> None:
        while True:
            try:
                beat(self.client, self.name)
            except redis.RedisError as exc:
                # Redis restarting: the next beat tries again; the exporter sees the gap meanwhile.
                log.warning("worker heartbeat failed", error=str(exc))
            if self._stop.wait(self.period_s):
                return
