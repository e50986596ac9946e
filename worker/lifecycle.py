"""Worker lifecycle hooks: fresh connections after a fork, the model loaded once at start, and the
heartbeat the metrics exporter counts workers by (worker/telemetry.py)."""

from __future__ import annotations

from typing import Any

import redis
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from core.logging import configure_logging, get_logger
from core.settings import get_settings
from data import db
from worker import exit_status  # noqa: F401  (registers the non-zero exit after an unrecoverable error)
from worker.queues import Queue
from worker.runtime import get_runtime, install
from worker.telemetry import Heartbeat

log = get_logger(__name__)

_heartbeat: Heartbeat | None = None


@worker_process_init.connect
def _after_fork(**_kwargs: Any) -> None:
    # Connections inherited from the parent must never be shared with a forked child.
    db.dispose_engines()
    install(None)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)


@worker_ready.connect
def _preload_model(sender: Any = None, **_kwargs: Any) -> None:
    """The inference worker (solo pool) loads the champion once, before its first task."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    app = getattr(sender, "app", None)
    queues = set(app.amqp.queues.consume_from or ()) if app is not None else set()
    _start_heartbeat(str(getattr(sender, "hostname", "") or "worker"), queues)
    if Queue.ORDERS.value in queues and settings.trading.mode == "live":
        _reconcile_live()
    if Queue.INFERENCE.value not in queues:
        return
    try:
        description = get_runtime().model_server().warm_up()
        log.info("model loaded", model=description)
    except Exception as exc:  # noqa: BLE001  (a worker without a model still starts; tasks report why)
        log.error("model not loaded at start", error=f"{type(exc).__name__}: {exc}")


def _reconcile_live() -> None:
    """An orders worker trading live first brings open orders, positions and cash in line with the
    exchange: orders of a worker that died mid-send are looked up before anything is resent."""
    try:
        report = get_runtime().trader().reconcile()
        log.info("live account reconciled at start", **report)
    except Exception as exc:  # noqa: BLE001  (the worker still starts; the first intent reconciles again)
        log.error("live reconciliation at start failed", error=f"{type(exc).__name__}: {exc}")


def _start_heartbeat(hostname: str, queues: set[str]) -> None:
    global _heartbeat
    settings = get_settings()
    if not settings.ml_integration.monitoring.metrics_enabled or not queues or _heartbeat is not None:
        return
    # worker_ready comes from `celery worker` only: the embedded run (a bare WorkController, no
    # Redis) never gets here.
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    _heartbeat = Heartbeat(
        client, hostname, queues, settings.ml_integration.monitoring.worker_heartbeat_seconds
    )
    _heartbeat.start()


@worker_shutdown.connect
def _stop_heartbeat(**_kwargs: Any) -> None:
    """A clean shutdown leaves the count at once; a killed worker drops out after three periods."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None
