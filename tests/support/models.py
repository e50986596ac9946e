"""Untrained models for pipeline tests and benchmarks: a fixed, seeded UnifiedPatchTST held in memory,
and a registry holding one as its champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ml.features import FEATURE_SPEC
from ml.model.config import ModelConfig
from ml.model.network import build_model
from ml.model.schema import OutputSchema
from ml.outputs import ModelOutputs
from ml.registry import Registry
from ml.scaling import RobustScaler


def identity_scaler() -> RobustScaler:
    n = FEATURE_SPEC.n_features
    return RobustScaler(FEATURE_SPEC.names, FEATURE_SPEC.hash, np.zeros(n), np.ones(n), 10.0, 2)


def untrained_registry(root: Path, note: str = "untrained test model") -> Registry:
    """A registry at ``root`` whose champion is a seeded, untrained model of the default size: the
    pipeline's timing and plumbing do not depend on training."""
    registry = Registry(root)
    torch.manual_seed(0)
    registry.register(build_model(ModelConfig()), identity_scaler(), {"note": note}, {})
    return registry


class FixedModelServer:
    def __init__(self, version: str = "test-v1", seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.version = version
        self.config = ModelConfig()
        self.model = build_model(self.config).eval()
        self.schema = OutputSchema.from_config(self.config)
        self._scaler = identity_scaler()
        self.calls = 0

    def champion_version(self) -> str | None:
        return self.version

    def scaler(self, version: str) -> RobustScaler:
        assert version == self.version
        return self._scaler

    def predict(self, tensor: npt.NDArray[np.float32], version: str) -> ModelOutputs:
        assert version == self.version
        self.calls += 1
        with torch.inference_mode():
            out = self.model(torch.from_numpy(tensor)).numpy()
        return ModelOutputs(self.version, out, self.model.temperature, self.schema)

    def warm_up(self) -> str:
        return self.version
