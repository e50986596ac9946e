"""Batched, deterministic inference of one registered version, loaded once.

``Predictor.load(registry, "champion", settings)`` verifies and loads the version (ml/registry.py),
picks the device (``model.device``: ``auto`` is CUDA when available, else CPU), sets torch's thread
count (``model.torch_threads`` when > 0) and keeps the model in eval mode. ``predict`` runs one
forward pass per call under ``torch.inference_mode``: no dropout, no noise, the same input gives the
same output. Nothing touches CUDA at import time.

With ``model.backend: onnx`` the CPU forward pass runs in ONNX Runtime on a graph exported from the
verified weights at load time (ml/onnx_backend.py); on CUDA the eager model is used.

``refresh_if_changed`` re-resolves the alias (one small JSON read) and reloads when it points to a
new version, so a long-running worker picks up a promotion or rollback without a restart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from core.errors import ConfigError
from core.logging import get_logger
from core.settings import Settings
from ml.decoding import DecodedSignal, DecodeRules, decode
from ml.features import FEATURE_SPEC, FeatureSpecMismatchError, LiveBatch
from ml.onnx_backend import OnnxRunner
from ml.registry import LoadedModel, Registry

log = get_logger(__name__)


def select_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def apply_thread_settings(threads: int) -> None:
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Prediction:
    """Raw outputs ``[B, 20]`` and what decoding needs besides prices."""

    outputs: npt.NDArray[np.float32]
    temperature: float
    version: str


def select_backend(backend: str, device: torch.device) -> str:
    """ONNX Runtime is a CPU backend here: with a CUDA device the eager model runs on the GPU."""
    if backend == "onnx" and device.type != "cpu":
        log.info("model.backend onnx applies to CPU inference; using eager on", device=str(device))
        return "eager"
    return backend


class Predictor:
    def __init__(
        self,
        registry: Registry,
        ref: str,
        loaded: LoadedModel,
        device: torch.device,
        backend: str = "eager",
        threads: int = 0,
    ) -> None:
        self.registry = registry
        self.ref = ref
        self.device = device
        self.backend = backend
        self.threads = threads
        self._lock = threading.Lock()
        self._loaded, self._model, self._onnx = self._prepare(loaded)

    def _prepare(self, loaded: LoadedModel) -> tuple[LoadedModel, torch.nn.Module, OnnxRunner | None]:
        model = loaded.model.to(self.device).eval()
        onnx = OnnxRunner.from_model(loaded.model, self.threads) if self.backend == "onnx" else None
        return loaded, model, onnx

    @classmethod
    def load(cls, registry: Registry, ref: str, settings: Settings) -> Predictor:
        apply_thread_settings(settings.model.torch_threads)
        device = select_device(settings.model.device)
        backend = select_backend(settings.model.backend, device)
        loaded = registry.load(ref)
        predictor = cls(registry, ref, loaded, device, backend, settings.model.torch_threads)
        log.info("model loaded", version=loaded.version, ref=ref, device=str(device), backend=backend)
        return predictor

    # -- what was loaded ---------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._loaded.version

    @property
    def loaded(self) -> LoadedModel:
        return self._loaded

    @property
    def temperature(self) -> float:
        return self._loaded.temperature

    # -- inference ---------------------------------------------------------------------------------
    def predict(self, inputs: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.float32]:
        """Scaled features ``[B, 96, 240]`` float32 -> outputs ``[B, 20]`` (schema order)."""
        x = inputs if isinstance(inputs, torch.Tensor) else torch.from_numpy(np.asarray(inputs))
        config = self._loaded.config
        if x.ndim != 3 or tuple(x.shape[1:]) != (config.context, config.n_features):
            raise FeatureSpecMismatchError(
                f"model input must be [batch, {config.context}, {config.n_features}] (bars, features), "
                f"got {list(x.shape)}"
            )
        if x.dtype != torch.float32:
            raise ValueError(f"model input must be float32, got {x.dtype}")
        if x.shape[0] == 0:
            return np.empty((0, config.n_outputs), dtype=np.float32)
        with self._lock:
            if self._onnx is not None:
                return self._onnx(x.numpy())
            with torch.inference_mode():
                out: npt.NDArray[np.float32] = self._model(x.to(self.device, non_blocking=True)).cpu().numpy()
            return out

    def predict_batch(self, batch: LiveBatch) -> Prediction:
        """Outputs for a live batch, after checking it was built for this model's feature spec."""
        if batch.spec_hash != self._loaded.feature_spec_hash or batch.spec_hash != FEATURE_SPEC.hash:
            raise FeatureSpecMismatchError(
                f"live batch built for feature spec {batch.spec_hash[:12]}…, model {self.version} "
                f"expects {self._loaded.feature_spec_hash[:12]}…"
            )
        return Prediction(self.predict(batch.tensor), self.temperature, self.version)

    def decode(
        self, outputs: npt.ArrayLike, prices: npt.ArrayLike, settings: Settings | DecodeRules
    ) -> list[DecodedSignal]:
        """``ml.decoding.decode`` with this version's temperature and output schema."""
        return decode(outputs, self.temperature, prices, settings, self._loaded.schema)

    # -- hot reload --------------------------------------------------------------------------------
    def refresh_if_changed(self) -> bool:
        """Reload when ``ref`` (an alias) now names another version; True when it did."""
        current = self.registry.resolve(self.ref)
        if current == self.version:
            return False
        prepared = self._prepare(self.registry.load(current))
        with self._lock:
            self._loaded, self._model, self._onnx = prepared
        log.info("model reloaded", version=current, ref=self.ref)
        return True
