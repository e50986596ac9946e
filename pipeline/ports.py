"""What the minute's services need from outside the package, as structural types.

The runtimes are read-only views of ``worker.runtime.Runtime`` (which satisfies each of them as it
is); the ports are what the task layer hands in: how to send the minute's chord and its orders. So
``pipeline`` never imports Celery, and a test drives a whole minute with a fake port.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from core.settings import Settings
from data.sources.base import CandleSource
from data.store import CandleStore
from data.stream.watermark import WatermarkStore
from pipeline.bus import SignalBus
from pipeline.ledger import RunLedger
from pipeline.locks import MinuteLock
from pipeline.signal_store import SignalStore
from pipeline.window_store import WindowStore
from trading.intents import OrderIntentMessage

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ml.features.live import Scaler
    from ml.outputs import ModelOutputs


class MinuteRuntime(Protocol):
    """What starting, supervising and publishing a minute use."""

    @property
    def settings(self) -> Settings: ...

    @property
    def ledger(self) -> RunLedger: ...

    @property
    def bus(self) -> SignalBus: ...

    @property
    def lock(self) -> MinuteLock: ...

    @property
    def signals(self) -> SignalStore: ...

    def symbols(self) -> list[str]: ...

    def champion_version(self) -> str | None: ...


class FeatureRuntime(Protocol):
    """What one chunk's feature stage uses."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> CandleStore: ...

    @property
    def source(self) -> CandleSource: ...

    @property
    def windows(self) -> WindowStore: ...

    @property
    def watermarks(self) -> WatermarkStore | None: ...

    def scaler(self, version: str) -> Scaler: ...


class InferenceRuntime(Protocol):
    """What the minute's inference stage uses."""

    @property
    def settings(self) -> Settings: ...

    @property
    def ledger(self) -> RunLedger: ...

    @property
    def windows(self) -> WindowStore: ...

    def predict(self, tensor: npt.NDArray[np.float32], version: str) -> ModelOutputs: ...

    def predict_shadow(self, tensor: npt.NDArray[np.float32], champion_version: str) -> ModelOutputs | None:
        """The shadow challenger's outputs for the champion-scaled ``tensor``; None when there is no
        challenger to score; raises when it failed (the stage records that and goes on)."""
        ...

    def count_shadow_failure(self) -> None:
        """Count a minute whose shadow challenger failed (a metric: it never raises)."""
        ...


@dataclass(frozen=True)
class DispatchedChord:
    """What a dispatch sent: the id of the chord's final result (publish's), and how many feature
    tasks its header holds."""

    result_id: str
    tasks: int


class ChordDispatch(Protocol):
    """Sends one attempt of a minute: a feature task per chunk, then inference, then publish, all
    expiring at ``expires``. ``run_id`` names the attempt's feature windows; ``run`` is the ledger row."""

    def __call__(
        self,
        minute_iso: str,
        run: int,
        run_id: str,
        version: str,
        chunks: list[list[str]],
        expires: datetime,
    ) -> DispatchedChord: ...


class OrderQueue(Protocol):
    """Where the publish step sends the orders worker its work; each method returns the task id."""

    def send_tick(self, minute_iso: str, expires: datetime) -> str:
        """The per-minute step (paper fills and stops, live reconciliation) for ``minute_iso``."""
        ...

    def send_intent(self, intent: OrderIntentMessage) -> str:
        """One order intent; its message lives until ``intent.expires_at``."""
        ...
