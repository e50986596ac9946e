"""The embedded default: beat and every queue's worker in one process (DESIGN.md §7).

In-process broker (kombu's memory transport), in-memory result backend, SQLite, the simulator, an
in-memory window store, minute lock and bus. The same tasks and canvas as the distributed run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

from celery._state import _set_task_join_will_block
from celery.beat import EmbeddedService
from celery.contrib.testing.worker import TestWorkController

from core.settings import Settings
from data import db
from data.sources.factory import make_source
from data.store import CandleStore
from data.stream.factory import make_stream_service
from data.stream.service import StreamThread
from data.stream.watermark import MemoryWatermarks
from pipeline.bus import MemoryBus
from pipeline.ledger import RunLedger
from pipeline.locks import MemoryMinuteLock
from pipeline.signal_store import SignalStore
from pipeline.window_store import MemoryWindowStore
from worker.app import app
from worker.queues import Queue
from worker.runtime import Runtime, install

EMBEDDED_BROKER = "memory://"
EMBEDDED_BACKEND = "cache+memory://"


def build_embedded(settings: Settings) -> Runtime:
    engine = db.get_engine(settings.database_url)
    return Runtime(
        settings=settings,
        store=CandleStore(engine),
        source=make_source(settings),
        windows=MemoryWindowStore(),
        bus=MemoryBus(),
        lock=MemoryMinuteLock(),
        ledger=RunLedger(engine),
        signals=SignalStore(engine),
        watermarks=MemoryWatermarks(),
    )


@dataclass
class EmbeddedThreads:
    """The threads an embedded run needs alive; ``problem`` says which one stopped on its own."""

    worker: Any
    worker_thread: threading.Thread
    beat: threading.Thread | None = None
    stream: StreamThread | None = None
    stopping: bool = False

    def problem(self) -> str | None:
        if self.stopping:
            return None
        if not self.worker_thread.is_alive():
            return "the embedded Celery worker stopped"
        if self.beat is not None and not self.beat.is_alive():
            return "the embedded beat scheduler stopped"
        if self.stream is not None and not self.stream.alive:
            return "the embedded candle stream stopped"
        return None


def configure_app_for_embedded() -> None:
    """Point the app at the in-process broker and backend.

    The worker's loader re-reads the app's configuration source when it starts, so the override
    must *be* the source (``config_from_object``), not an ``update`` on top of ``celeryconfig``.
    """
    import celeryconfig

    values = {
        key: value
        for key, value in vars(celeryconfig).items()
        if not key.startswith("_")
        and key.islower()
        and not callable(value)
        and not isinstance(value, ModuleType)
    }
    values.update(
        broker_url=EMBEDDED_BROKER,
        result_backend=EMBEDDED_BACKEND,
        broker_connection_retry_on_startup=False,
        beat_scheduler="celery.beat:Scheduler",
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    app.config_from_object(SimpleNamespace(**values), force=True)


@contextmanager
def embedded_runtime(
    settings: Settings, *, beat: bool = True, concurrency: int = 4, stream: bool = False
) -> Iterator[Runtime]:
    """Run workers for every queue (and beat) in background threads for the ``with`` block.

    ``stream`` also runs the candle stream service (the simulator's minute feed, or the exchange's
    WebSocket), so that feature tasks wait on its watermark as in a distributed deployment.
    """
    configure_app_for_embedded()
    # Celery narrates every task received and its result at INFO: in one process beside the live
    # table that is noise (and payloads); the pipeline's own structured lines say what happened.
    celery_logger = logging.getLogger("celery")
    previous_level = celery_logger.level
    celery_logger.setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    db.upgrade(settings.database_url)
    runtime = build_embedded(settings)
    install(runtime)
    worker: Any = TestWorkController(
        app=app,
        concurrency=concurrency,
        pool="threads",
        hostname="embedded@localhost",
        queues=[q.value for q in Queue],
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=None,
    )
    thread = threading.Thread(target=worker.start, name="embedded-worker", daemon=True)
    thread.start()
    worker.ensure_started()
    # The worker marks this process as "inside a task"; the runner's own thread waits on results.
    _set_task_join_will_block(False)
    streaming: StreamThread | None = None
    if stream:
        assert runtime.watermarks is not None
        service = make_stream_service(
            settings, runtime.store, runtime.source, runtime.watermarks, runtime.symbols()
        )
        streaming = StreamThread(service).start()
    clock: Any = None
    if beat:
        clock = EmbeddedService(app, thread=True, max_interval=1.0)
        clock.start()
    threads = EmbeddedThreads(worker, thread, clock, streaming)
    runtime.health = threads.problem
    try:
        yield runtime
    finally:
        threads.stopping = True
        if clock is not None:
            clock.stop()
        if streaming is not None:
            streaming.stop()
        worker.stop()
        thread.join(timeout=10)
        install(None)
        celery_logger.setLevel(previous_level)
