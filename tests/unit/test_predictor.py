"""The predictor: loads a version once, batched deterministic inference, device and threads, hot reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from core.settings import Settings
from ml.features import FEATURE_SPEC, FeatureSpecMismatchError, LiveBatch
from ml.predictor import Predictor, select_device
from ml.registry import Registry
from tests.support.model_fixtures import make_registry


def _settings(tmp_path: Path, **model: object) -> Settings:
    return Settings(model={"registry_dir": tmp_path, "device": "cpu", **model})


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return make_registry(tmp_path, 2)[0]


def test_batch_equals_single_rows_and_is_deterministic(registry: Registry, tmp_path: Path) -> None:
    predictor = Predictor.load(registry, "champion", _settings(tmp_path))
    x = np.random.default_rng(0).normal(size=(9, 96, 240)).astype(np.float32)
    batch = predictor.predict(x)
    assert batch.shape == (9, 20)
    assert batch.dtype == np.float32
    singles = np.concatenate([predictor.predict(x[i : i + 1]) for i in range(9)])
    # Different batch sizes take different BLAS blockings: equal up to float32 rounding.
    np.testing.assert_allclose(batch, singles, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(predictor.predict(x), batch)  # same input, same bits
    assert predictor.predict(np.empty((0, 96, 240), np.float32)).shape == (0, 20)


def test_inputs_of_the_wrong_shape_or_type_are_refused(registry: Registry, tmp_path: Path) -> None:
    predictor = Predictor.load(registry, "champion", _settings(tmp_path))
    with pytest.raises(FeatureSpecMismatchError, match=r"\[batch, 96, 240\]"):
        predictor.predict(np.zeros((2, 240, 96), np.float32))  # transposed
    with pytest.raises(FeatureSpecMismatchError):
        predictor.predict(np.zeros((2, 96, 239), np.float32))
    with pytest.raises(ValueError, match="float32"):
        predictor.predict(np.zeros((2, 96, 240), np.float64))


def test_live_batches_of_another_spec_are_refused(registry: Registry, tmp_path: Path) -> None:
    predictor = Predictor.load(registry, "champion", _settings(tmp_path))
    tensor = np.zeros((1, 96, 240), np.float32)
    ok = LiveBatch(tensor, ["A"], {}, np.zeros(96, np.int64), 0, FEATURE_SPEC.hash)
    prediction = predictor.predict_batch(ok)
    assert prediction.version == predictor.version
    assert prediction.temperature == pytest.approx(1.3, rel=1e-6)
    with pytest.raises(FeatureSpecMismatchError):
        predictor.predict_batch(LiveBatch(tensor, ["A"], {}, np.zeros(96, np.int64), 0, "f" * 64))


def test_decode_uses_the_versions_temperature(registry: Registry, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    predictor = Predictor.load(registry, "champion", settings)
    out = predictor.predict(np.random.default_rng(1).normal(size=(2, 96, 240)).astype(np.float32))
    signals = predictor.decode(out, [10.0, 20.0], settings)
    assert len(signals) == 2
    assert all(0.0 <= s.confidence <= 1.0 for s in signals)


def test_thread_count_comes_from_settings(registry: Registry, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        Predictor.load(registry, "champion", _settings(tmp_path, torch_threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_refresh_follows_a_promotion_and_a_rollback(registry: Registry, tmp_path: Path) -> None:
    predictor = Predictor.load(registry, "champion", _settings(tmp_path))
    first = predictor.version
    x = np.random.default_rng(2).normal(size=(2, 96, 240)).astype(np.float32)
    before = predictor.predict(x)
    assert predictor.refresh_if_changed() is False
    registry.promote("challenger")
    assert predictor.refresh_if_changed() is True
    assert predictor.version != first
    assert not np.array_equal(predictor.predict(x), before)
    registry.rollback()
    assert predictor.refresh_if_changed() is True
    assert predictor.version == first
    np.testing.assert_array_equal(predictor.predict(x), before)


def test_cuda_without_a_device_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    with pytest.raises(ConfigError, match="cuda"):
        select_device("cuda")
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")


def test_auto_device_is_cuda_exactly_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected


def _input_devices(model: torch.nn.Module) -> tuple[list[torch.device], torch.utils.hooks.RemovableHandle]:
    """The device of every input the model's forward pass receives, from now on."""
    seen: list[torch.device] = []

    def record(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].device)

    return seen, model.register_forward_pre_hook(record)


def test_cpu_predictor_runs_on_the_cpu(registry: Registry, tmp_path: Path) -> None:
    predictor = Predictor.load(registry, "champion", _settings(tmp_path))
    assert predictor.device == torch.device("cpu")
    model = predictor.loaded.model
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    seen, hook = _input_devices(model)
    x = np.random.default_rng(3).normal(size=(4, 96, 240)).astype(np.float32)
    try:
        out = predictor.predict(x)
    finally:
        hook.remove()
    assert [d.type for d in seen] == ["cpu"]
    assert out.shape == (4, 20)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_outputs_match_cpu(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Plain float32 on the GPU: TF32 matmuls/convolutions would only agree to ~1e-3.
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu = Predictor.load(registry, "champion", _settings(tmp_path))
    gpu = Predictor.load(registry, "champion", _settings(tmp_path, device="cuda"))
    assert gpu.device.type == "cuda"
    assert cpu.version == gpu.version
    model = gpu.loaded.model
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.device.type for p in cpu.loaded.model.parameters()} == {"cpu"}  # a copy of its own
    x = np.random.default_rng(3).normal(size=(64, 96, 240)).astype(np.float32)
    seen, hook = _input_devices(model)
    try:
        on_gpu = gpu.predict(x)
    finally:
        hook.remove()
    assert [d.type for d in seen] == ["cuda"]  # the batch itself went to the GPU
    on_cpu = cpu.predict(x)
    assert on_gpu.dtype == np.float32
    assert on_gpu.shape == on_cpu.shape == (64, 20)
    # Different kernels and summation orders: equal up to float32 rounding through the network. On an
    # H200 (torch 2.11, CUDA 13) 36 of 1,280 outputs differed by more than 1e-4, the largest by 2.1e-4
    # (a near-zero return); a batch on the wrong device or with wrong weights is off by 1e-1 and more.
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3, atol=1e-3)
