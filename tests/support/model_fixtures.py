"""Seeded random models, scalers and registries for the model, registry, predictor and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ml.features import FEATURE_SPEC
from ml.model import ModelConfig, UnifiedPatchTST, build_model
from ml.registry import Registry
from ml.scaling import RobustScaler


def random_model(seed: int = 0, temperature: float = 1.3, linear_path: bool = False) -> UnifiedPatchTST:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(linear_path=linear_path))
    for head in (model.returns_head, model.direction_head, model.risk_head):
        last = head[-1]
        assert isinstance(last, torch.nn.Linear)
        torch.nn.init.normal_(last.weight, std=0.2)
    if model.linear is not None:
        n = model.linear.input_mean.shape[0]
        model.linear.load_fit(
            torch.randn(n // 3 + 1, 4) * 0.01,
            torch.randn(n + 1, 12) * 0.05,
            torch.randn(n),
            torch.rand(n) + 0.5,
        )
    with torch.no_grad():
        model.log_temperature.fill_(float(np.log(temperature)))
    return model.eval()


def random_scaler(seed: int = 0) -> RobustScaler:
    rows = np.random.default_rng(seed).normal(size=(64, FEATURE_SPEC.n_features))
    return RobustScaler.fit(rows)


def register_random(registry: Registry, seed: int = 0, linear_path: bool = False) -> str:
    training = {"symbols": ["BTC/USDT:USDT"], "candles": {"start": "a", "end": "b"}, "seed": seed}
    model = random_model(seed, linear_path=linear_path)
    version, _ = registry.register(model, random_scaler(seed), training, {"note": seed})
    return version


def make_registry(path: Path, n: int = 1, linear_path: bool = False) -> tuple[Registry, list[str]]:
    registry = Registry(path)
    return registry, [register_random(registry, seed, linear_path) for seed in range(n)]
