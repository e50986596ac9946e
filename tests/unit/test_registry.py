"""The model registry: round trip, integrity checks, feature-spec check, aliases, promote/rollback."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.features import FEATURE_SPEC, FeatureSpec, FeatureSpecMismatchError
from ml.registry import FILES, MANIFEST, ModelIntegrityError, Registry, RegistryError
from tests.support.model_fixtures import make_registry, random_model


def _resign(registry: Registry, version: str) -> None:
    """What a careless tool (not an attacker who also fixes digests) would not do: rebuild the manifest."""
    folder = registry.versions_dir / version
    manifest = json.loads((folder / MANIFEST).read_text())
    registry._write_manifest(folder, version, manifest["created"])


def test_round_trip_restores_the_model_exactly(tmp_path: Path) -> None:
    registry, (version,) = make_registry(tmp_path)
    original = random_model(0)
    loaded = registry.load(version)
    assert loaded.version == version
    assert loaded.feature_spec_hash == FEATURE_SPEC.hash
    assert loaded.temperature == pytest.approx(1.3, rel=1e-6)
    assert loaded.config == original.config
    assert not loaded.model.training
    x = torch.randn(3, 96, 240)
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), original(x))
    assert loaded.training["seed"] == 0
    assert loaded.metrics == {"note": 0}
    folder = registry.versions_dir / version
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, MANIFEST])
    spec_doc = json.loads((folder / "feature_spec.json").read_text())
    assert spec_doc["hash"] == FEATURE_SPEC.hash
    assert spec_doc["names"] == list(FEATURE_SPEC.names)
    manifest = json.loads((folder / MANIFEST).read_text())
    for name in FILES:
        assert manifest["files"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_versions_and_aliases_are_readable_by_other_users(tmp_path: Path) -> None:
    """Trainer and inference workers may run as different users over one registry volume."""
    registry, (version,) = make_registry(tmp_path)
    folder = registry.versions_dir / version
    assert folder.stat().st_mode & 0o555 == 0o555
    for path in [*folder.iterdir(), registry.aliases_path]:
        assert path.stat().st_mode & 0o444 == 0o444, path.name


def test_version_ids_are_time_and_weights_based(tmp_path: Path) -> None:
    _, (version,) = make_registry(tmp_path)
    stamp, short = version.split("-")
    assert len(stamp) == 16
    assert stamp.endswith("Z")
    assert stamp[8] == "T"
    assert len(short) == 8


@pytest.mark.parametrize("name", [*FILES, MANIFEST])
def test_tampering_with_any_file_is_detected(tmp_path: Path, name: str) -> None:
    registry, (version,) = make_registry(tmp_path)
    path = registry.versions_dir / version / name
    data = bytearray(path.read_bytes())
    # Flip one byte in the middle (for JSON, a digit or letter: still plausible content).
    i = len(data) // 2
    data[i] = data[i] ^ 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=version) as err:
        registry.load(version)
    assert name in str(err.value) or "manifest" in str(err.value)


def test_missing_and_extra_files_are_detected(tmp_path: Path) -> None:
    registry, (a, b) = make_registry(tmp_path, 2)
    (registry.versions_dir / a / "scaler.json").unlink()
    with pytest.raises(ModelIntegrityError, match=r"missing files \['scaler.json'\]"):
        registry.load(a)
    (registry.versions_dir / b / "notes.txt").write_text("hi")
    with pytest.raises(ModelIntegrityError, match="unexpected files"):
        registry.verify(b)


def test_a_model_of_another_feature_spec_is_refused(tmp_path: Path) -> None:
    registry, (version,) = make_registry(tmp_path)
    path = registry.versions_dir / version / "feature_spec.json"
    doc = json.loads(path.read_text())
    doc["hash"] = "0" * 64
    path.write_text(json.dumps(doc))
    _resign(registry, version)  # even a consistently signed artefact is refused
    with pytest.raises(FeatureSpecMismatchError, match="trained on feature spec 000000000000"):
        registry.load(version)


def test_a_changed_engine_spec_refuses_the_stored_model(tmp_path: Path) -> None:
    registry, (version,) = make_registry(tmp_path)
    changed = FeatureSpec(version="9.9.9", features=FEATURE_SPEC.features)
    with pytest.raises(FeatureSpecMismatchError, match="train a new model"):
        registry.load(version, spec=changed)


def test_weights_are_loaded_without_unpickling_code(tmp_path: Path) -> None:
    registry, (version,) = make_registry(tmp_path)
    buffer = io.BytesIO()
    torch.save({"patch.weight": np.float64}, buffer)  # a global: only a full unpickler accepts it
    (registry.versions_dir / version / "weights.pt").write_bytes(buffer.getvalue())
    _resign(registry, version)
    with pytest.raises(ModelIntegrityError, match=r"weights.pt cannot be loaded"):
        registry.load(version)


def test_a_version_stored_before_per_horizon_calibration_still_loads(tmp_path: Path) -> None:
    """Older weights have no ``horizon_log_temperature``: they load with every horizon at T = 1."""
    registry, (version,) = make_registry(tmp_path)
    path = registry.versions_dir / version / "weights.pt"
    state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    del state["horizon_log_temperature"]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    _resign(registry, version)
    loaded = registry.load(version)
    assert loaded.model.horizon_temperatures == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert loaded.temperature == pytest.approx(1.3, rel=1e-6)


def test_first_version_is_champion_then_challengers(tmp_path: Path) -> None:
    registry, (a, b, c) = make_registry(tmp_path, 3)
    aliases = registry.aliases()
    assert aliases["champion"] == a
    assert aliases["challenger"] == c
    assert registry.resolve("champion") == a
    assert registry.resolve(b) == b
    assert [e["action"] for e in aliases["history"]] == ["register"] * 3


def test_promote_and_rollback_move_the_champion(tmp_path: Path) -> None:
    registry, (a, b, c) = make_registry(tmp_path, 3)
    assert registry.promote("challenger") == c
    assert registry.resolve("champion") == c
    assert registry.aliases()["challenger"] is None
    registry.promote(b)
    assert registry.resolve("champion") == b
    assert registry.rollback() == c
    assert registry.resolve("champion") == c
    assert registry.resolve("challenger") == b  # the demoted champion waits as challenger
    assert registry.rollback() == a
    assert registry.resolve("champion") == a
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback()
    actions = [e["action"] for e in registry.aliases()["history"]]
    assert actions[-4:] == ["promote", "promote", "rollback", "rollback"]
    # Written atomically: no temporary files are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".aliases.lock", "aliases.json", "versions"]


def test_promote_refuses_a_tampered_version(tmp_path: Path) -> None:
    registry, (a, b) = make_registry(tmp_path, 2)
    (registry.versions_dir / b / "config.json").write_text("{}")
    with pytest.raises(ModelIntegrityError):
        registry.promote(b)
    assert registry.resolve("champion") == a


def test_unknown_refs_are_clear_errors(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(RegistryError, match="no champion"):
        registry.resolve("champion")
    with pytest.raises(RegistryError, match=r"unknown model version 'nope'"):
        registry.load("nope")
    assert registry.versions() == []


def test_update_metrics_re_signs_but_never_launders_tampering(tmp_path: Path) -> None:
    registry, (version,) = make_registry(tmp_path)
    registry.update_metrics(version, {"test": {"ic": float("nan"), "acc": 0.5}})
    loaded = registry.load(version)
    assert loaded.metrics == {"test": {"ic": None, "acc": 0.5}}  # JSON has no NaN
    (registry.versions_dir / version / "training.json").write_text('{"forged": true}')
    with pytest.raises(ModelIntegrityError, match=r"training\.json"):
        registry.update_metrics(version, {"test": {}})
    with pytest.raises(ModelIntegrityError):
        registry.load(version)
