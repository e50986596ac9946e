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


# -- the shadow challenger (docs/SIGNAL_QUALITY.md "Shadow challenger") ---------------------------------

from ml.model.network import UnifiedPatchTST  # noqa: E402  (appended section)


def shifted_scaler(seed: int = 1) -> RobustScaler:
    """A seeded scaler far from the identity (per-feature centre and scale), so that windows scaled by
    ``identity_scaler`` must be rescaled before a model using this one sees them."""
    rng = np.random.default_rng(seed)
    n = FEATURE_SPEC.n_features
    return RobustScaler(
        FEATURE_SPEC.names, FEATURE_SPEC.hash, rng.normal(0.0, 0.5, n), rng.uniform(0.5, 2.0, n), 10.0, 2
    )


def biased_model(seed: int, direction: str | None = None) -> UnifiedPatchTST:
    """A seeded, untrained model (its heads start at zero: constant outputs). ``direction`` ``LONG``
    or ``SHORT``: its primary horizon's return (a 6 % move, far above any trading cost) and that
    class's logit are raised, so every one of its signals is an actionable signal of that side."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig()).eval()
    if direction is not None:
        from core.settings import Settings

        primary = Settings().decoding.primary_horizon
        side = {"LONG": 0, "SHORT": 1}[direction]
        with torch.no_grad():
            returns, logits = model.returns_head[-1], model.direction_head[-1]
            assert isinstance(returns, torch.nn.Linear)
            assert isinstance(logits, torch.nn.Linear)
            returns.bias[primary] += 6.0 if direction == "LONG" else -6.0
            logits.bias[3 * primary + side] += 10.0
    return model


def register_challenger(
    registry: Registry,
    *,
    seed: int = 1,
    scaler: RobustScaler | None = None,
    direction: str | None = None,
    model: UnifiedPatchTST | None = None,
) -> str:
    """``model`` (default: ``biased_model(seed, direction)``) registered beside the champion, i.e. as
    the challenger, with its own scaler (``shifted_scaler(seed)`` by default)."""
    model = model if model is not None else biased_model(seed, direction)
    version, alias = registry.register(
        model, scaler or shifted_scaler(seed), {"note": f"test challenger, seed {seed}"}, {}
    )
    assert alias == "challenger", alias
    return version


class ShadowFixedModelServer(FixedModelServer):
    """``FixedModelServer`` serving a shadow challenger too: a seeded model with random heads (its
    outputs, unlike the untrained champion's, depend on the input; no rescaling: both use the identity
    scaler), or one whose prediction raises ``fail``."""

    def __init__(
        self, version: str = "test-v1", challenger: str = "test-v2", fail: BaseException | None = None
    ) -> None:
        from tests.support.model_fixtures import random_model

        self.challenger = FixedModelServer(challenger, seed=1)
        self.challenger.model = random_model(1)
        super().__init__(version)
        self.fail = fail
        self.shadow_calls = 0

    def challenger_version(self) -> str | None:
        return self.challenger.version

    def predict_shadow(self, tensor: npt.NDArray[np.float32], champion_version: str) -> ModelOutputs | None:
        assert champion_version == self.version
        self.shadow_calls += 1
        if self.fail is not None:
            raise self.fail
        return self.challenger.predict(tensor, self.challenger.version)
