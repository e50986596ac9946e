"""Batched, deterministic inference with one loaded model version.

The model is loaded once (``Predictor.load``) and reused for every minute; ``cuda`` when available
and asked for, else the CPU. Nothing touches CUDA at import time.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from core.errors import ConfigError
from core.settings import ModelSettings
from ml.registry import LoadedVersion, ModelRegistry

MAX_BATCH = 1024


def pick_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("model.device is cuda but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    def __init__(self, loaded: LoadedVersion, device: torch.device) -> None:
        self.loaded = loaded
        self.device = device
        self.model = loaded.model.to(device).eval()

    @classmethod
    def load(cls, registry: ModelRegistry, ref: str, settings: ModelSettings) -> Predictor:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        device = pick_device(settings.device)
        return cls(registry.load(ref, device=device), device)

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def temperature(self) -> float:
        return self.model.temperature

    def predict(self, windows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``[B, 96, 240]`` scaled windows -> ``[B, 20]`` raw outputs (see the output schema)."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        expected = (self.loaded.config.context, self.loaded.config.n_features)
        if x.ndim != 3 or x.shape[1:] != expected:
            raise ValueError(f"input must be [batch, {expected[0]}, {expected[1]}], got {x.shape}")
        outputs = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], MAX_BATCH):
                batch = torch.from_numpy(x[start : start + MAX_BATCH]).to(self.device)
                outputs.append(self.model(batch).float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.empty((0, 20), dtype=np.float32)
