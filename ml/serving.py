"""The pipeline's view of the registry: champion look-up, scalers by version, hot model reload.

Every minute reads the ``champion`` alias once and passes the version to all its tasks; the
inference worker reloads only when that version differs from the one it holds, so a promotion
takes effect at the next minute without a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from core.settings import Settings
from ml.outputs import ModelOutputs
from ml.predictor import Predictor
from ml.registry import Registry
from ml.scaling import RobustScaler


class RegistryModelServer:
    def __init__(self, settings: Settings, on_load: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        # Told the version after each model load (start or hot reload): the worker counts them.
        self.on_load = on_load
        self.registry = Registry(settings.model.registry_dir)
        self._scalers: dict[str, RobustScaler] = {}
        self._predictor: Predictor | None = None
        self._lock = threading.Lock()

    def champion_version(self) -> str | None:
        value = self.registry.aliases().get("champion")
        return str(value) if value else None

    def scaler(self, version: str) -> RobustScaler:
        with self._lock:
            if version not in self._scalers:
                # A full, verified load: the scaler is trusted only with its manifest and spec hash.
                self._scalers[version] = self.registry.load(version).scaler
            return self._scalers[version]

    def predictor(self, version: str) -> Predictor:
        with self._lock:
            if self._predictor is None or self._predictor.version != version:
                self._predictor = Predictor.load(self.registry, version, self.settings)
                if self.on_load is not None:
                    self.on_load(version)
            return self._predictor

    def predict(self, tensor: npt.NDArray[np.float32], version: str) -> ModelOutputs:
        predictor = self.predictor(version)
        outputs = predictor.predict(tensor)
        return ModelOutputs(predictor.version, outputs, predictor.temperature, predictor.loaded.schema)

    def warm_up(self) -> str:
        version = self.champion_version()
        if version is None:
            return "no champion yet"
        predictor = self.predictor(version)
        return f"{predictor.version} on {predictor.device}"
