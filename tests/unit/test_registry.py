"""The model registry: round trip, tamper detection, feature-spec checks, aliases."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from core.settings import ModelSettings
from ml.features import FEATURE_SPEC, FeatureSpecMismatchError
from ml.model.config import ModelConfig
from ml.model.network import build_model
from ml.predictor import Predictor
from ml.registry import CHALLENGER, CHAMPION, FILES, ModelIntegrityError, ModelRegistry, UnknownVersionError
from ml.scaling import RobustScaler

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def scaler() -> RobustScaler:
    rows = np.random.default_rng(0).normal(size=(50, FEATURE_SPEC.n_features))
    return RobustScaler.fit(rows)


def save(registry: ModelRegistry, seed: int, minutes: int = 0) -> str:
    torch.manual_seed(seed)
    model = build_model(ModelConfig())
    return registry.save(
        model,
        scaler(),
        training={"seed": seed},
        metrics={"val_loss": 1.0},
        created=T0 + timedelta(minutes=minutes),
    )


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def test_round_trip_gives_the_same_outputs(registry: ModelRegistry) -> None:
    version = save(registry, 1)
    torch.manual_seed(1)
    original = build_model(ModelConfig()).eval()
    x = np.random.default_rng(1).normal(size=(3, 96, 240)).astype(np.float32)
    predictor = Predictor.load(registry, CHAMPION, ModelSettings(device="cpu"))
    assert predictor.version == version
    with torch.inference_mode():
        expected = original(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(predictor.predict(x), expected)
    np.testing.assert_array_equal(predictor.predict(x[:1]), expected[:1])


def test_first_version_is_champion_later_ones_challengers(registry: ModelRegistry) -> None:
    first = save(registry, 1)
    second = save(registry, 2, minutes=1)
    assert registry.resolve(CHAMPION) == first
    assert registry.resolve(CHALLENGER) == second
    assert registry.versions() == [first, second]


def test_promote_and_rollback_move_the_champion(registry: ModelRegistry) -> None:
    first = save(registry, 1)
    second = save(registry, 2, minutes=1)
    third = save(registry, 3, minutes=2)
    assert registry.promote(second) == second
    assert registry.resolve(CHAMPION) == second
    registry.promote(third)
    assert registry.rollback() == second
    assert registry.resolve(CHAMPION) == second
    assert registry.rollback() == first
    assert registry.resolve(CHAMPION) == first
    with pytest.raises(UnknownVersionError, match="roll back"):
        registry.rollback()


@pytest.mark.parametrize("name", FILES)
def test_tampering_with_any_file_fails_loading(registry: ModelRegistry, name: str) -> None:
    version = save(registry, 1)
    path = registry.root / "versions" / version / name
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(ModelIntegrityError, match=name):
        registry.load(version)
    with pytest.raises(ModelIntegrityError):
        registry.promote(version)


def test_missing_file_or_manifest_fails_loading(registry: ModelRegistry) -> None:
    version = save(registry, 1)
    (registry.root / "versions" / version / "scaler.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"scaler\.json is missing"):
        registry.load(version)
    (registry.root / "versions" / version / "manifest.json").unlink()
    with pytest.raises(UnknownVersionError):
        registry.load(version)


def test_feature_spec_change_fails_loading(registry: ModelRegistry) -> None:
    version = save(registry, 1)
    changed = replace(FEATURE_SPEC, version="9.9.9")
    with pytest.raises(FeatureSpecMismatchError):
        ModelRegistry(registry.root, spec=changed).load(version)
    with pytest.raises(FeatureSpecMismatchError):
        ModelRegistry(registry.root, spec=changed).load_scaler(version)


def test_metrics_update_is_re_signed_but_outside_edits_are_caught(registry: ModelRegistry) -> None:
    version = save(registry, 1)
    registry.update_metrics(version, {"test_accuracy": 0.5})
    assert registry.load(version).metrics == {"val_loss": 1.0, "test_accuracy": 0.5}
    metrics = registry.root / "versions" / version / "metrics.json"
    metrics.write_text(json.dumps({"test_accuracy": 0.99}))
    with pytest.raises(ModelIntegrityError, match=r"metrics\.json"):
        registry.update_metrics(version, {"x": 1})


def test_unknown_names_are_clear_errors(registry: ModelRegistry) -> None:
    with pytest.raises(UnknownVersionError, match="no champion"):
        registry.resolve(CHAMPION)
    save(registry, 1)
    with pytest.raises(UnknownVersionError, match="nope"):
        registry.load("nope")
