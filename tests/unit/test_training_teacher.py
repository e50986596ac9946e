"""The linear teacher used for distillation: its inputs are the model's normalised newest row and
RevIN statistics, computed without materialising windows; it recovers a planted linear signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.dataset import Dataset, DatasetSpec, build_dataset
from ml.model import ModelConfig, build_model
from ml.teacher import fit_teacher, window_features
from ml.training import load_linear_path
from tests.support.feature_fixtures import candles

SYMBOLS = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "XRP/USDT:USDT"]


@pytest.fixture(scope="module")
def ds() -> Dataset:
    spec = DatasetSpec(train_fraction=0.5, val_fraction=0.25, purge_bars=48 + 96)
    return build_dataset({s: candles(s, 10) for s in SYMBOLS}, ModelConfig(), spec)


def test_window_features_equal_revin_of_the_window(ds: Dataset) -> None:
    idx = ds.indices("train")[::37]
    w = ds.windows(idx).astype(np.float64)
    mean, var = w.mean(axis=1), w.var(axis=1)
    z, stats = window_features(ds, idx, 1e-5)
    np.testing.assert_allclose(z, (w[:, -1] - mean) / np.sqrt(var + 1e-5), rtol=0, atol=1e-7)
    np.testing.assert_allclose(stats[:, :240], mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats[:, 240:], 0.5 * np.log(var + 1e-5), rtol=0, atol=1e-7)


def test_teacher_recovers_a_planted_linear_signal(ds: Dataset) -> None:
    idx = ds.indices("train")
    z, _ = window_features(ds, idx, 1e-5)
    rng = np.random.default_rng(0)
    target = np.stack([0.3 * z[:, 5] - 0.2 * z[:, 40] + rng.normal(scale=0.05, size=idx.size)] * 4, axis=1)
    teacher, ret, probs = fit_teacher(ds, idx, target, eps=1e-5, ridge=1.0, l2=1.0)
    assert teacher.returns_coef[5, 0] == pytest.approx(0.3, abs=0.02)
    assert teacher.returns_coef[40, 0] == pytest.approx(-0.2, abs=0.02)
    assert np.corrcoef(ret[:, 0], target[:, 0])[0, 1] > 0.95
    assert probs.shape == (idx.size, 4, 3)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0)
    ret2, probs2 = teacher.predict(ds, idx)
    np.testing.assert_allclose(ret2, ret)
    np.testing.assert_allclose(probs2, probs)


def test_the_models_linear_path_reproduces_the_linear_fit(ds: Dataset) -> None:
    """With the linear fit loaded and the transformer heads still at their zero start, the model's
    outputs are the fit's: ridge returns (through tanh) and logistic class probabilities."""
    idx = ds.indices("train")
    rng = np.random.default_rng(1)
    target = rng.normal(scale=0.05, size=(idx.size, 4)) + 0.1 * window_features(ds, idx, 1e-5)[0][:, [3]]
    teacher, _, _ = fit_teacher(ds, idx, target, eps=1e-5, ridge=1.0, l2=1.0)
    model = build_model(ModelConfig(linear_path=True)).eval()
    load_linear_path(model, teacher)
    assert model.linear is not None
    assert not any(p.requires_grad for p in model.linear.parameters())
    some = idx[::53]
    with torch.inference_mode():
        out = model(torch.from_numpy(ds.windows(some))).double().numpy()
    ret, probs = teacher.predict(ds, some)
    np.testing.assert_allclose(out[:, :4], np.tanh(ret), atol=2e-4)
    logits = out[:, 4:16].reshape(-1, 4, 3)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(axis=-1, keepdims=True), probs, atol=2e-4)
    assert np.abs(ret).max() > 0.01  # the fit is not trivially zero
