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
from typing import TYPE_CHECKING

from celery.beat import EmbeddedService
from celery.result import allow_join_result

from core.errors import MLSignalsError
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

if TYPE_CHECKING:
    from celery.beat import _Threaded
    from celery.worker import WorkController

EMBEDDED_BROKER = "memory://"
EMBEDDED_BACKEND = "cache+memory://"
EMBEDDED_HOSTNAME = "embedded@localhost"
# How long the in-process worker may take to start consuming (it needs no network: well under 1 s).
WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 10.0


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

    worker: WorkController
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


def start_worker(concurrency: int) -> tuple[WorkController, threading.Thread]:
    """A Celery worker consuming every queue, on a thread pool, running in a thread of its own.

    Returns once its consumer is ready (``ready_callback``, Celery's hook for the moment the worker
    starts consuming); raises when the worker stopped before that, or did not get there in time.
    """
    ready = threading.Event()
    settled = threading.Event()  # ready, or the worker's thread ended first

    def on_ready(_consumer: object) -> None:
        ready.set()
        settled.set()

    worker = app.WorkController(
        hostname=EMBEDDED_HOSTNAME,
        pool="threads",
        concurrency=concurrency,
        queues=[q.value for q in Queue],
        loglevel="WARNING",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        ready_callback=on_ready,
    )

    def serve() -> None:
        try:
            worker.start()
        finally:
            settled.set()

    thread = threading.Thread(target=serve, name="embedded-worker", daemon=True)
    thread.start()
    settled.wait(WORKER_START_TIMEOUT_S)
    if not ready.is_set():
        worker.stop()
        thread.join(WORKER_STOP_TIMEOUT_S)
        state = "stopped while starting" if settled.is_set() else "did not start in time"
        raise MLSignalsError(f"the embedded Celery worker {state} (see the log above)")
    return worker, thread


@contextmanager
def embedded_runtime(
    settings: Settings, *, beat: bool = True, concurrency: int = 4, stream: bool = False
) -> Iterator[Runtime]:
    """Run workers for every queue (and beat) in background threads for the ``with`` block.

    ``stream`` also runs the candle stream service (the simulator's minute feed, or the exchange's
    WebSocket), so that feature tasks wait on its watermark as in a distributed deployment.

    The calling thread may wait on task results (``AsyncResult.get``) inside the block: the worker's
    pool marks the whole process as running tasks (Celery keeps that mark per process, not per
    thread), so the block runs under ``allow_join_result``; the process's previous state is put
    back when the block ends.
    """
    configure_app_for_embedded()
    # Celery narrates every task received and its result at INFO: in one process beside the live
    # table that is noise (and payloads); the pipeline's own structured lines say what happened.
    celery_logger = logging.getLogger("celery")
    previous_level = celery_logger.level
    celery_logger.setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    try:
        db.upgrade(settings.database_url)
        runtime = build_embedded(settings)
        install(runtime)
        with allow_join_result():  # outer: restores the process's state when the run ends
            worker, thread = start_worker(concurrency)
            with allow_join_result():  # inner: lifts the mark the worker's pool set, for the block
                yield from _run(runtime, settings, worker, thread, beat=beat, stream=stream)
    finally:
        install(None)
        celery_logger.setLevel(previous_level)


def _run(
    runtime: Runtime,
    settings: Settings,
    worker: WorkController,
    thread: threading.Thread,
    *,
    beat: bool,
    stream: bool,
) -> Iterator[Runtime]:
    """Beat and the stream beside the started worker; every part stopped however the block ends."""
    threads = EmbeddedThreads(worker, thread)
    clock: _Threaded | None = None
    try:
        if stream:
            assert runtime.watermarks is not None
            service = make_stream_service(
                settings, runtime.store, runtime.source, runtime.watermarks, runtime.symbols()
            )
            threads.stream = StreamThread(service).start()
        if beat:
            service_thread = EmbeddedService(app, thread=True, max_interval=1)
            assert isinstance(service_thread, threading.Thread)  # thread=True: beat in a thread
            clock = threads.beat = service_thread
            clock.start()
        runtime.health = threads.problem
        yield runtime
    finally:
        threads.stopping = True
        if clock is not None:
            clock.stop()
        if threads.stream is not None:
            threads.stream.stop()
        worker.stop()
        thread.join(timeout=WORKER_STOP_TIMEOUT_S)
