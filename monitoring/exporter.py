"""The metrics exporter: refresh a snapshot of every collector on a loop, serve it to Prometheus.

Why a collector over the durable state (and not prometheus_client's multiprocess mode, nor counters
in Redis): the ledger, the signal and the trading tables already record every minute, signal and
intent exactly once, whichever worker process wrote it. Counting their rows is correct with prefork
children, across worker restarts and over any number of hosts by construction, and needs no
instrumentation in the minute's hot path. Scrapes never touch the database: they serve the newest
snapshot, so a slow database cannot time a scrape out, and many Prometheus replicas cost nothing.
Each part (``collector`` label) fails alone: its ``mlsignals_exporter_collector_up`` drops to 0
and its last good families are served until it recovers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from core.logging import get_logger
from core.settings import Settings, redis_db_url
from data import db
from data.store import CandleStore
from data.stream.watermark import RedisWatermarks, WatermarkStore
from ml.registry import Registry
from monitoring import state_metrics
from monitoring.pipeline_metrics import PipelineMetrics
from monitoring.quality_metrics import QualityMetrics, breaker_settings_families

log = get_logger(__name__)

COLLECTORS = ("ledger", "data", "trading", "model", "quality", "queues", "stream")


def source_name(settings: Settings) -> str:
    """The exchange name candles are stored under (data/sources), without building the source."""
    return "simulator" if settings.data.source == "simulator" else settings.exchange.id


@dataclass(eq=False)  # registered by identity in a CollectorRegistry
class Exporter(Collector):
    """``refresh()`` reads everything once; ``collect()`` (Prometheus) serves the newest snapshot.

    ``redis_client`` None: the embedded run, which has no broker, workers or stream to report.
    """

    settings: Settings
    engine: Engine
    redis_client: redis.Redis | None
    settle_s: float = 120.0
    clock: Callable[[], float] = time.time
    _pipeline: PipelineMetrics = field(init=False)
    _trading: state_metrics.TradingCounters = field(init=False)
    _snapshot: dict[str, list[Metric]] = field(default_factory=dict, init=False)
    _up: dict[str, bool] = field(default_factory=dict, init=False)
    _refresh_s: float = field(default=0.0, init=False)
    _refreshed_at: float = field(default=0.0, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._pipeline = PipelineMetrics(self.settle_s)
        self._trading = state_metrics.TradingCounters(self.settle_s)
        self.store = CandleStore(self.engine)
        self.exchange = source_name(self.settings)
        self.registry = Registry(self.settings.model.registry_dir)
        # The signal-quality ledger's part; none when quality.enabled is off (no scorer runs).
        self.quality: QualityMetrics | None = None
        if self.settings.quality.enabled:
            self.quality = QualityMetrics(self.settings, self.engine, self.registry)
        self.watermarks: WatermarkStore | None = None
        self.queues: state_metrics.QueueProbe | None = None
        if self.redis_client is not None:
            self.watermarks = RedisWatermarks(self.redis_client)
            broker = self.settings.celery.broker_url or redis_db_url(self.settings.redis_url, 0)
            self.queues = state_metrics.QueueProbe(
                broker, self.redis_client, self.settings.ml_integration.monitoring.worker_heartbeat_seconds
            )

    @classmethod
    def from_settings(cls, settings: Settings, *, embedded: bool = False) -> Exporter:
        client = None if embedded else redis.Redis.from_url(settings.redis_url, socket_timeout=3)
        return cls(settings, db.get_engine(settings.database_url), client)

    # -- refresh ----------------------------------------------------------------------------------
    def refresh(self) -> dict[str, bool]:
        """Read every part once; returns which parts succeeded."""
        began = time.perf_counter()
        now_s = self.clock()
        now = datetime.fromtimestamp(now_s, UTC)
        parts: dict[str, Callable[[], Iterable[Metric]]] = {
            "ledger": lambda: self._pipeline_families(now),
            "trading": lambda: self._trading_families(now),
            "data": lambda: self._data_families(now_s),
            "model": lambda: state_metrics.model_families(self.registry, self.redis_client),
        }
        if self.redis_client is not None:
            parts["queues"] = lambda: self.queues.families() if self.queues is not None else ()
            parts["stream"] = lambda: state_metrics.stream_families(self.watermarks, self.exchange)
        if self.quality is not None:
            # Last: its figures, recomputed once per quality.interval_seconds, take the longest.
            parts["quality"] = lambda: self.quality.families(now_s) if self.quality is not None else ()
        snapshot: dict[str, list[Metric]] = {}
        up: dict[str, bool] = {}
        for name, read in parts.items():
            try:
                snapshot[name] = list(read())
                up[name] = True
            except Exception as exc:  # noqa: BLE001  (one part failing must not blank the others)
                up[name] = False
                log.warning("metrics collector failed", collector=name, error=f"{type(exc).__name__}: {exc}")
                if name == "queues" and self.queues is not None:
                    self.queues.close()
        with self._lock:
            # A failed part keeps serving its last good families; its collector_up says it is stale.
            self._snapshot = {**self._snapshot, **snapshot}
            self._up = up
            self._refresh_s = time.perf_counter() - began
            self._refreshed_at = now_s
        return up

    def _pipeline_families(self, now: datetime) -> list[Metric]:
        with self.engine.connect() as conn:
            self._pipeline.refresh(conn, now)
        return list(self._pipeline.families())

    def _data_families(self, now_s: float) -> list[Metric]:
        with self.engine.connect() as conn:
            return list(state_metrics.data_families(conn, self.store, self.exchange, self.settings, now_s))

    def _trading_families(self, now: datetime) -> list[Metric]:
        with self.engine.connect() as conn:
            self._trading.refresh(conn, now)
            return [*self._trading.families(), *state_metrics.account_families(conn)]

    # -- serve ------------------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot, up = dict(self._snapshot), dict(self._up)
            refresh_s, refreshed_at = self._refresh_s, self._refreshed_at
        yield from state_metrics.settings_families(self.settings)
        if self.quality is not None:
            yield from breaker_settings_families(self.settings)
        for families in snapshot.values():
            yield from families
        collector_up = GaugeMetricFamily(
            "mlsignals_exporter_collector_up",
            "1 when the collector's last refresh succeeded.",
            labels=["collector"],
        )
        for name, ok in sorted(up.items()):
            collector_up.add_metric([name], 1.0 if ok else 0.0)
        yield collector_up
        yield GaugeMetricFamily(
            "mlsignals_exporter_refresh_duration_seconds", "Duration of the last refresh.", value=refresh_s
        )
        yield GaugeMetricFamily(
            "mlsignals_exporter_last_refresh_timestamp_seconds",
            "Unix time of the last refresh.",
            value=refreshed_at,
        )

    def describe(self) -> Iterable[Metric]:
        return ()  # families vary with the data; prometheus_client then never calls collect at register

    def close(self) -> None:
        if self.queues is not None:
            self.queues.close()


@dataclass
class RefreshLoop:
    """Refreshes ``exporter`` every ``interval_s`` on a daemon thread until stopped."""

    exporter: Exporter
    interval_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.exporter.refresh()
        self._thread = threading.Thread(target=self._run, name="mlsig-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.exporter.refresh()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop refreshing; True once the thread has ended. A refresh still in flight after
        ``timeout_s`` (a slow database, a paused process) is abandoned: the thread is a daemon, so a
        process that exits never waits on it (a supervisor's SIGTERM must end the process promptly)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            return not self._thread.is_alive()
        return True


def serve(exporter: Exporter, host: str, port: int, interval_s: float) -> tuple[Any, RefreshLoop]:
    """Start the refresh loop and an HTTP server for ``/metrics``; returns (server, loop)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    loop = RefreshLoop(exporter, interval_s)
    loop.start()
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, loop
