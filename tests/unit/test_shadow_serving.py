"""The shadow challenger in the model server (ml/serving.py): its inputs rescaled from the champion's
scaling to its own, its background load, a failed load, hot reload when the aliases move."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from core.settings import Settings
from ml import serving
from ml.features import FEATURE_SPEC
from ml.predictor import Predictor
from ml.registry import Registry
from ml.scaling import RobustScaler
from ml.serving import ChallengerUnavailableError, RegistryModelServer, rescale, rescale_tensor
from tests.support.model_fixtures import random_model
from tests.support.models import register_challenger, shifted_scaler, untrained_registry

SHAPE = (FEATURE_SPEC.context, FEATURE_SPEC.n_features)


def raw_features(batch: int, scaler: RobustScaler, seed: int = 0, spread: float = 3.0) -> np.ndarray:
    """Unscaled features that ``scaler`` maps to within ``±spread`` of its scale (nothing clipped)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-spread, spread, size=(batch, *SHAPE))
    return z * scaler.scale + scaler.center


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, model={"registry_dir": tmp_path / "models", "device": "cpu"})


@pytest.fixture
def registry(settings: Settings) -> Registry:
    """A champion with random heads (its outputs depend on its input) and a non-identity scaler."""
    registry = Registry(settings.model.registry_dir)
    registry.register(random_model(0), shifted_scaler(7), {"note": "champion"}, {})
    return registry


def challenger_of(registry: Registry) -> str:
    """A challenger with other random heads and another scaler (``shifted_scaler(1)``)."""
    return register_challenger(registry, model=random_model(1), scaler=shifted_scaler(1))


def test_rescale_gives_the_target_scaling_of_unclipped_values_and_keeps_clipped_ones_at_the_bound() -> None:
    champion, challenger = shifted_scaler(7), shifted_scaler(1)
    raw = raw_features(4, champion)
    mapped = rescale(champion.transform(raw), champion, challenger)
    own = challenger.transform(raw)
    assert mapped.dtype == np.float32
    assert mapped.flags.c_contiguous
    unclipped = np.abs(own) < challenger.clip
    np.testing.assert_allclose(mapped[unclipped], own[unclipped], rtol=1e-5, atol=1e-5)
    # Only values the challenger itself clips can differ: there the map clips at the same bound.
    np.testing.assert_allclose(mapped[~unclipped], own[~unclipped], rtol=1e-5, atol=1e-5)

    # A value the champion clipped is known only to lie beyond its bound: the challenger sees that
    # bound on its own scale, not its own clip of the true value (the documented loss).
    far = champion.center + 50.0 * champion.scale  # 50 scale units out: clipped at +10 by the champion
    seen = rescale(champion.transform(far[None, None, :]), champion, challenger)[0, 0]
    bound = (champion.center + champion.clip * champion.scale - challenger.center) / challenger.scale
    np.testing.assert_allclose(seen, np.clip(bound, -challenger.clip, challenger.clip), rtol=1e-5, atol=1e-5)


def test_rescale_is_the_identity_for_one_scaler() -> None:
    scaler = shifted_scaler(3)
    tensor = scaler.transform(raw_features(2, scaler))
    assert rescale(tensor, scaler, scaler) is tensor


def test_rescale_on_a_tensor_matches_the_array_map_bit_for_bit() -> None:
    champion, challenger = shifted_scaler(7), shifted_scaler(1)
    tensor = champion.transform(raw_features(3, champion, spread=12.0))  # some values clipped
    on_torch = rescale_tensor(torch.from_numpy(tensor), champion, challenger)
    # The reference: the map written out in NumPy (multiply, add, clip; float32 throughout).
    gain = (champion.scale / challenger.scale).astype(np.float32)
    offset = ((champion.center - challenger.center) / challenger.scale).astype(np.float32)
    expected = np.clip(
        np.multiply(tensor, gain, dtype=np.float32) + offset, -challenger.clip, challenger.clip
    )
    np.testing.assert_array_equal(on_torch.numpy(), expected)
    assert float(np.abs(tensor).max()) == champion.clip  # the input itself was left as it was


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_challenger_on_a_gpu_answers_as_on_the_cpu(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    challenger_of(registry)
    servers = {
        device: RegistryModelServer(
            settings.model_copy(update={"model": settings.model.model_copy(update={"device": device})})
        )
        for device in ("cpu", "cuda")
    }
    champion = servers["cpu"].champion_version()
    assert champion is not None
    tensor = servers["cpu"].scaler(champion).transform(raw_features(32, registry.load(champion).scaler))
    for server in servers.values():
        server.warm_up()
    on_cpu, on_gpu = (servers[d].predict_shadow(tensor, champion) for d in ("cpu", "cuda"))
    assert on_cpu is not None
    assert on_gpu is not None
    # The rescale ran on the GPU, then the pass: float32 rounding apart (tolerance as test_predictor's).
    np.testing.assert_allclose(on_gpu.outputs, on_cpu.outputs, rtol=1e-3, atol=1e-3)


def test_the_challenger_sees_its_own_scaling_of_the_raw_features(
    settings: Settings, registry: Registry
) -> None:
    challenger = challenger_of(registry)
    server = RegistryModelServer(settings)
    assert "shadow challenger" in server.warm_up()
    champion = server.champion_version()
    assert champion is not None
    raw = raw_features(6, registry.load(champion).scaler, spread=2.0)
    champion_scaled = server.scaler(champion).transform(raw)

    shadow = server.predict_shadow(champion_scaled, champion)
    assert shadow is not None
    assert shadow.version == challenger
    alone = Predictor.load(registry, challenger, settings)
    own = alone.predict(registry.load(challenger).scaler.transform(raw))
    np.testing.assert_allclose(shadow.outputs, own, rtol=1e-4, atol=1e-4)
    # The control: fed the champion's scaling unchanged, the challenger answers something else.
    unscaled = alone.predict(champion_scaled)
    assert np.abs(unscaled - own).max() > 1e-2
    # The champion's own outputs are untouched by the shadow pass.
    direct = Predictor.load(registry, champion, settings).predict(champion_scaled)
    np.testing.assert_array_equal(server.predict(champion_scaled, champion).outputs, direct)


def test_a_new_challenger_loads_in_the_background_and_serves_from_the_next_minute(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    server = RegistryModelServer(settings, on_load=loads.append)
    server.warm_up()  # champion only: no challenger yet
    champion = server.champion_version()
    assert champion is not None
    tensor = server.scaler(champion).transform(raw_features(3, server.scaler(champion)))
    assert server.predict_shadow(tensor, champion) is None

    challenger = challenger_of(registry)
    release = threading.Event()
    original = Predictor.load.__func__  # type: ignore[attr-defined]

    def slow_load(cls: type[Predictor], reg: Registry, ref: str, s: Settings) -> Predictor:
        release.wait(30)  # the load is held until the minute below has gone by
        return original(cls, reg, ref, s)  # type: ignore[no-any-return]

    monkeypatch.setattr(Predictor, "load", classmethod(slow_load))
    # The minute that finds a new challenger is not held up by its load: it is scored without it.
    assert server.predict_shadow(tensor, champion) is None
    assert server.predict(tensor, champion).version == champion
    release.set()
    assert server.wait_for_challenger(30)
    shadow = server.predict_shadow(tensor, champion)
    assert shadow is not None
    assert shadow.version == challenger
    assert loads == [champion, challenger]


def test_a_challenger_that_fails_to_load_is_reported_not_retried_and_never_stops_the_champion(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    challenger = challenger_of(registry)
    weights = registry.versions_dir / challenger / "weights.pt"
    good = weights.read_bytes()
    weights.write_bytes(b"not weights")  # the manifest disagrees
    server = RegistryModelServer(settings)
    description = server.warm_up()
    assert f"challenger {challenger} not loaded" in description
    champion = server.champion_version()
    assert champion is not None
    tensor = server.scaler(champion).transform(raw_features(2, server.scaler(champion)))
    server.predict(tensor, champion)
    attempts: list[str] = []
    original = Predictor.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Predictor], reg: Registry, ref: str, s: Settings) -> Predictor:
        attempts.append(ref)
        return original(cls, reg, ref, s)  # type: ignore[no-any-return]

    monkeypatch.setattr(Predictor, "load", classmethod(counted))
    for _ in range(3):  # every minute says why; no new load is started within LOAD_RETRY_S
        with pytest.raises(ChallengerUnavailableError, match=f"challenger {challenger} failed to load"):
            server.predict_shadow(tensor, champion)
        assert server.predict(tensor, champion).version == champion
    assert attempts == []

    # Repaired, it is tried again once LOAD_RETRY_S has passed, in the background.
    weights.write_bytes(good)
    monkeypatch.setattr(serving, "LOAD_RETRY_S", 0.0)
    assert server.predict_shadow(tensor, champion) is None
    assert server.wait_for_challenger(30)
    shadow = server.predict_shadow(tensor, champion)
    assert shadow is not None
    assert attempts == [challenger]


def test_promotion_and_rollback_swap_the_two_models_without_a_load(
    settings: Settings, registry: Registry
) -> None:
    challenger = challenger_of(registry)
    loads: list[str] = []
    server = RegistryModelServer(settings, on_load=loads.append)
    server.warm_up()
    champion = server.champion_version()
    assert champion is not None
    tensor = server.scaler(champion).transform(raw_features(2, server.scaler(champion)))
    assert server.predict_shadow(tensor, champion) is not None
    assert loads == [champion, challenger]

    registry.promote(challenger)  # the next minute runs with the new champion and no challenger
    assert server.champion_version() == challenger
    assert server.predict(tensor, challenger).version == challenger
    assert server.predict_shadow(tensor, challenger) is None
    assert loads == [champion, challenger]  # already held: no load

    registry.rollback()  # the demoted model is the challenger again
    assert server.challenger_version() == challenger
    assert server.predict(tensor, champion).version == champion
    shadow = server.predict_shadow(tensor, champion)
    assert shadow is not None
    assert shadow.version == challenger
    assert loads == [champion, challenger, champion]  # the old champion had been released, not the new one


def test_no_challenger_or_the_champion_itself_is_nothing_to_score(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, model={"registry_dir": tmp_path / "models", "device": "cpu"})
    untrained_registry(settings.model.registry_dir)
    server = RegistryModelServer(settings)
    champion = server.champion_version()
    assert champion is not None
    tensor = np.zeros((1, *SHAPE), dtype=np.float32)
    assert server.challenger_version() is None
    assert server.predict_shadow(tensor, champion) is None
