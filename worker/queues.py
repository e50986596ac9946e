"""The queue enum: every queue, route and worker command is derived from it (after PostHog)."""

from __future__ import annotations

from enum import StrEnum

from kombu import Exchange
from kombu import Queue as KombuQueue


class Queue(StrEnum):
    CONTROL = "control"
    DATA = "data"
    FEATURES = "features"
    INFERENCE = "inference"
    SIGNALS = "signals"
    ORDERS = "orders"


# Task modules map one to one onto queues; a task's name is ``tasks.<module>.<function>``.
MODULE_QUEUES: dict[str, Queue] = {
    "tasks.pipeline": Queue.CONTROL,
    "tasks.quality": Queue.CONTROL,
    "tasks.data": Queue.DATA,
    "tasks.features": Queue.FEATURES,
    "tasks.inference": Queue.INFERENCE,
    "tasks.signals": Queue.SIGNALS,
    "tasks.orders": Queue.ORDERS,
}


def task_queues(*, quorum: bool = False) -> list[KombuQueue]:
    """Redis: plain queues. RabbitMQ (``quorum``): replicated, durable quorum queues, each bound to a
    topic exchange of its name, which Celery's native delayed delivery needs for countdown retries
    (quorum queues have no global QoS, so a held ETA message would otherwise block the worker)."""
    if not quorum:
        return [KombuQueue(q.value, routing_key=q.value) for q in Queue]
    return [
        KombuQueue(
            q.value,
            Exchange(q.value, type="topic", durable=True),
            routing_key=q.value,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for q in Queue
    ]


def task_routes() -> dict[str, dict[str, str]]:
    return {f"{module}.*": {"queue": queue.value} for module, queue in MODULE_QUEUES.items()}


# Per queue: pool and prefetch. CUDA is not fork-safe and a batch must not wait behind another
# prefetched batch, hence solo + prefetch 1 for inference; the CPU queues use forked processes.
WORKER_OPTIONS: dict[Queue, list[str]] = {
    Queue.CONTROL: ["--pool", "threads", "--concurrency", "4", "--prefetch-multiplier", "1"],
    Queue.DATA: ["--pool", "prefork", "--concurrency", "1", "--prefetch-multiplier", "1"],
    Queue.FEATURES: ["--pool", "prefork", "--prefetch-multiplier", "1"],
    Queue.INFERENCE: ["--pool", "solo", "--prefetch-multiplier", "1"],
    Queue.SIGNALS: ["--pool", "solo", "--prefetch-multiplier", "1"],
    Queue.ORDERS: ["--pool", "threads", "--concurrency", "8", "--prefetch-multiplier", "4"],
}


def worker_command(queue: Queue, *, app: str = "worker", loglevel: str = "INFO") -> list[str]:
    """The ``celery worker`` command line of one queue's worker pool."""
    return [
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        queue.value,
        "-n",
        f"{queue.value}@%h",
        "--loglevel",
        loglevel,
        "-E",
        *WORKER_OPTIONS[queue],
    ]
