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


def register_sign_flipped(registry: Registry, ref: str) -> str:
    """A deliberately broken copy of version ``ref``: its returns head negated (the transformer's last
    layer and the linear path's returns map), and its LONG and SHORT logits swapped to match, so the
    decoder acts on the wrong sign (with the returns alone flipped, probabilities and returns would
    disagree and most signals would just turn NEUTRAL). Registered beside ``ref`` (as the challenger);
    returns the new version."""
    loaded = registry.load(ref)
    model = loaded.model
    n_h = model.config.n_horizons
    swap = torch.arange(3 * n_h).reshape(n_h, 3)[:, [1, 0, 2]].reshape(-1)
    with torch.no_grad():
        returns = [model.returns_head[-1], model.linear.returns if model.linear is not None else None]
        direction = [model.direction_head[-1], model.linear.direction if model.linear is not None else None]
        for layer in returns:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.neg_()
                layer.bias.neg_()
        for layer in direction:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(layer.weight[swap])
                layer.bias.copy_(layer.bias[swap])
    version, _ = registry.register(
        model, loaded.scaler, {**loaded.training, "note": f"sign-flipped returns head of {ref}"}, {}
    )
    return version
