"""Per-process wiring of the pipeline's parts: database, candle source, window store, bus, lock.

Built lazily on first use, so that each forked worker process opens its own connections. The
embedded runner installs an in-memory runtime (``install``) before starting its workers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import redis

from core.logging import get_logger
from core.settings import Settings, get_settings
from data import db
from data.sources.base import CandleSource
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.stream.watermark import RedisWatermarks, WatermarkStore
from pipeline.bus import RedisBus, SignalBus
from pipeline.ledger import RunLedger
from pipeline.locks import MinuteLock, RedisMinuteLock
from pipeline.signal_store import SignalStore
from pipeline.window_store import RedisWindowStore, WindowStore
from worker.telemetry import record_model_load, record_shadow_failure

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ml.features.live import Scaler
    from ml.outputs import ModelOutputs
    from trading.executor import Trader


class ModelServer(Protocol):
    """What the pipeline needs from the model registry (``ml.serving`` implements it): the champion,
    and, through ``ShadowModelServer``, the shadow challenger. ``predict`` serves any version it is
    given; ``warm_up`` (the inference worker's start) loads the champion, and the challenger too."""

    def champion_version(self) -> str | None: ...

    def scaler(self, version: str) -> Scaler: ...

    def predict(self, tensor: npt.NDArray[np.float32], version: str) -> ModelOutputs: ...

    def warm_up(self) -> str: ...


@runtime_checkable
class ShadowModelServer(Protocol):
    """A ``ModelServer`` that also serves the registry's challenger beside the champion
    (``ml.serving.RegistryModelServer`` does; a server without these methods has no challenger)."""

    def challenger_version(self) -> str | None: ...

    def predict_shadow(self, tensor: npt.NDArray[np.float32], champion_version: str) -> ModelOutputs | None:
        """The challenger's outputs for the champion-scaled ``tensor``; None when there is none to
        score this minute; raises when it failed to load or to predict."""
        ...


log = get_logger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: CandleStore
    source: CandleSource
    windows: WindowStore
    bus: SignalBus
    lock: MinuteLock
    ledger: RunLedger
    signals: SignalStore
    # Where the stream service's candle watermarks are (None: no stream; fetch over REST).
    watermarks: WatermarkStore | None = None
    # The distributed run's Redis client (None embedded): shares the exchange's request budget.
    redis_client: redis.Redis | None = None
    models: ModelServer | None = None
    trading: Trader | None = None
    # Embedded only: why the in-process workers cannot go on (None while they are healthy).
    health: Callable[[], str | None] | None = None
    # Shadow challenger failures seen by this process (also counted in Redis: telemetry.SHADOW_FAILURES_KEY).
    shadow_failures: int = 0
    _models_lock: threading.Lock = field(default_factory=threading.Lock)
    _trading_lock: threading.Lock = field(default_factory=threading.Lock)

    def symbols(self) -> list[str]:
        return resolve_symbols(self.settings, self.source)

    def model_server(self) -> ModelServer:
        """Created on first use in each process (the model itself loads on first prediction)."""
        with self._models_lock:
            if self.models is None:
                from ml.serving import RegistryModelServer

                self.models = RegistryModelServer(self.settings, on_load=self._count_model_load)
            return self.models

    def _count_model_load(self, version: str) -> None:
        if self.redis_client is None or not self.settings.ml_integration.monitoring.metrics_enabled:
            return
        try:
            record_model_load(self.redis_client)
        except redis.RedisError as exc:  # a metric never fails a prediction
            log.warning("model load not counted", version=version, error=str(exc))

    def trader(self) -> Trader:
        """The order executor of ``trading.mode`` (live: the exchange client and its keys), built once."""
        with self._trading_lock:
            if self.trading is None:
                from trading.factory import build_trader

                self.trading = build_trader(self.settings, self.store, self.source.name, self.redis_client)
            return self.trading

    def champion_version(self) -> str | None:
        return self.model_server().champion_version()

    def scaler(self, version: str) -> Scaler:
        return self.model_server().scaler(version)

    def predict(self, tensor: npt.NDArray[np.float32], version: str) -> ModelOutputs:
        return self.model_server().predict(tensor, version)

    def challenger_version(self) -> str | None:
        server = self.model_server()
        return server.challenger_version() if isinstance(server, ShadowModelServer) else None

    def predict_shadow(self, tensor: npt.NDArray[np.float32], champion_version: str) -> ModelOutputs | None:
        """The shadow challenger's outputs for the minute's champion-scaled ``tensor`` (None: no
        challenger to score); a failure is raised for the inference step, which records it and goes
        on with the champion's minute."""
        server = self.model_server()
        if not isinstance(server, ShadowModelServer):
            return None
        return server.predict_shadow(tensor, champion_version)

    def count_shadow_failure(self) -> None:
        """One minute whose shadow challenger failed (to load, predict or decode)."""
        self.shadow_failures += 1
        if self.redis_client is None or not self.settings.ml_integration.monitoring.metrics_enabled:
            return
        try:
            record_shadow_failure(self.redis_client)
        except redis.RedisError as exc:  # a metric never fails a minute
            log.warning("shadow failure not counted", error=str(exc))


_runtime: Runtime | None = None
_lock = threading.Lock()


def build_distributed(settings: Settings) -> Runtime:
    engine = db.get_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, health_check_interval=30)
    return Runtime(
        settings=settings,
        store=CandleStore(engine),
        # The exchange gateway's request budget is shared through Redis by every process on the host.
        source=make_source(settings, client),
        windows=RedisWindowStore(client),
        bus=RedisBus(client, settings.pipeline.stream_key, settings.pipeline.stream_maxlen),
        lock=RedisMinuteLock(client),
        ledger=RunLedger(engine),
        signals=SignalStore(engine),
        watermarks=RedisWatermarks(client),
        redis_client=client,
    )


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_distributed(get_settings())
        return _runtime


def install(runtime: Runtime | None) -> None:
    """Use ``runtime`` in this process (the embedded runner and tests); ``None`` resets."""
    global _runtime
    with _lock:
        _runtime = runtime
