"""The linear baselines (ml/baselines.py): shapes, a planted linear signal recovered, the past-return
feature's fitted sign, and the round trip through the registry's ``baselines.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.baselines import BASELINE_NAMES, Baselines, fit_baselines, past_return_feature
from ml.dataset import TEST, TRAIN, Dataset, SplitBounds, cross_sectional_demean
from ml.evaluation import ic_per_time
from ml.features import FEATURE_SPEC
from ml.labels import direction_classes
from ml.model.config import ModelConfig
from ml.registry import ModelIntegrityError, Registry
from ml.training import TrainingRecipe
from tests.support.model_fixtures import random_model, random_scaler

T0 = 1_704_067_200_000
BAR_MS = 15 * 60_000
SIGNAL = "vol_z_96"  # any feature other than the past return one


def synthetic_dataset(
    n_symbols: int = 8,
    n_times: int = 240,
    *,
    seed: int = 0,
    signal: str | None = SIGNAL,
    past_return_coef: float = 0.0,
    strength: float = 0.01,
    noise: float = 0.003,
    train_share: float = 0.6,
    phases: int = 1,
) -> Dataset:
    """Scaled feature rows drawn i.i.d. normal; each sample's 4 horizon returns are ``strength`` times
    the ``signal`` feature of its newest row (plus ``past_return_coef`` times the past-return
    feature) plus noise. The first ``train_share`` of the anchor times are TRAIN, the rest TEST."""
    config = ModelConfig()
    rng = np.random.default_rng(seed)
    context, n_f = config.context, config.n_features
    per_series = context - 1 + n_times
    n_series = n_symbols * phases
    x = rng.normal(size=(n_series * per_series, n_f)).astype(np.float32)
    rows, anchors, symbols, phase = [], [], [], []
    for k in range(n_series):
        sym, ph = divmod(k, phases)
        t = np.arange(n_times)
        rows.append(k * per_series + context - 1 + t)
        anchors.append(T0 + t * BAR_MS + ph * 60_000)
        symbols.append(np.full(n_times, sym, np.int32))
        phase.append(np.full(n_times, ph, np.int16))
    row = np.concatenate(rows).astype(np.int64)
    anchor_ms = np.concatenate(anchors).astype(np.int64)
    newest = x[row].astype(np.float64)
    base = np.zeros(row.shape[0])
    if signal is not None:
        base += strength * newest[:, FEATURE_SPEC.index(signal)]
    past = past_return_feature(config.bar_minutes)
    base += past_return_coef * newest[:, FEATURE_SPEC.index(past)]
    returns = base[:, None] * np.array([1.0, 1.5, 2.0, 2.5]) + noise * rng.normal(size=(row.shape[0], 4))
    returns += 0.002 * rng.normal(size=(n_times,))[(anchor_ms - T0) // BAR_MS][:, None]  # market moves
    neutral = cross_sectional_demean(returns, anchor_ms)
    classes = direction_classes(neutral, np.asarray(config.direction_thresholds))
    cut = T0 + int(n_times * train_share) * BAR_MS
    part = np.where(anchor_ms < cut, TRAIN, TEST).astype(np.int8)
    split = SplitBounds(T0, cut, cut, cut, cut, int(anchor_ms.max()), 0)
    return Dataset(
        x=x,
        row=row,
        anchor_ms=anchor_ms,
        symbol=np.concatenate(symbols),
        phase=np.concatenate(phase),
        close=np.full(row.shape[0], 100.0) + rng.random(row.shape[0]),
        returns=returns,
        classes=classes,
        risk=np.abs(rng.normal(scale=0.005, size=(row.shape[0], 4))),
        part=part,
        symbols=[f"S{i}/USDT:USDT" for i in range(n_symbols)],
        split=split,
        scaler=random_scaler(),
        context=context,
    )


RECIPE = TrainingRecipe(teacher_ridge=100.0, teacher_l2=10.0)


@pytest.fixture(scope="module")
def planted() -> tuple[Dataset, Baselines]:
    ds = synthetic_dataset(past_return_coef=-0.01)
    return ds, fit_baselines(ds, ds.indices("train"), RECIPE, max_iter=30)


def test_past_return_feature_is_one_hour() -> None:
    assert past_return_feature(15) == "ret_4"
    assert past_return_feature(5) == "ret_12"
    assert past_return_feature(60) == "ret_1"


def test_predictions_have_one_score_per_sample_and_horizon(planted: tuple[Dataset, Baselines]) -> None:
    ds, baselines = planted
    test = ds.indices("test")
    scores = baselines.predict(ds, test)
    assert set(scores) == set(BASELINE_NAMES)
    for values in scores.values():
        assert values.shape == (test.size, 4)
        assert np.isfinite(values).all()
    empty = baselines.predict(ds, np.empty(0, np.int64))
    assert all(v.shape == (0, 4) for v in empty.values())


def test_a_planted_linear_signal_is_recovered_out_of_sample(planted: tuple[Dataset, Baselines]) -> None:
    ds, baselines = planted
    test = ds.indices("test")
    scores = baselines.predict(ds, test)
    real = ds.neutral_returns[test]
    for h in range(4):
        ridge, _ = ic_per_time(scores["ridge"][:, h], real[:, h], ds.anchor_ms[test])
        logistic, _ = ic_per_time(scores["logistic"][:, h], real[:, h], ds.anchor_ms[test])
        past, _ = ic_per_time(scores["past_return"][:, h], real[:, h], ds.anchor_ms[test])
        assert ridge > 0.6, (h, ridge)
        assert logistic > 0.4, (h, logistic)
        # The past-return feature carries half the signal, with a negative sign (reversal).
        assert past > 0.3, (h, past)
    assert baselines.feature == "ret_4"
    np.testing.assert_array_equal(baselines.signs, -1.0)


def test_momentum_sign_is_positive() -> None:
    ds = synthetic_dataset(signal=None, past_return_coef=0.01, n_times=120, n_symbols=6)
    baselines = fit_baselines(ds, ds.indices("train"), RECIPE, max_iter=5)
    np.testing.assert_array_equal(baselines.signs, 1.0)


def test_arrays_round_trip_through_the_registry(planted: tuple[Dataset, Baselines], tmp_path: Path) -> None:
    ds, baselines = planted
    test = ds.indices("test")
    registry = Registry(tmp_path)
    old, _ = registry.register(random_model(0), random_scaler(0), {"symbols": []}, {})
    new, _ = registry.register(
        random_model(1), random_scaler(1), {"symbols": []}, {}, baselines=baselines.to_arrays()
    )
    assert registry.load(old).baselines is None
    stored = registry.load(new).baselines
    assert stored is not None
    again = Baselines.from_arrays(stored)
    for name, values in baselines.predict(ds, test).items():
        np.testing.assert_array_equal(again.predict(ds, test)[name], values)
    # Re-signing the manifest (new metrics) keeps the optional file signed.
    registry.update_metrics(new, {"note": 1})
    assert registry.load(new).baselines is not None
    (tmp_path / "versions" / new / "baselines.npz").write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match=r"baselines\.npz does not match"):
        registry.load(new)
    # A baselines file the manifest does not list is refused too.
    (tmp_path / "versions" / old / "baselines.npz").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError, match="unexpected files"):
        registry.load(old)


def test_from_arrays_refuses_another_format(planted: tuple[Dataset, Baselines]) -> None:
    arrays = dict(planted[1].to_arrays())
    arrays["format_version"] = np.array(99)
    with pytest.raises(ValueError, match=r"mlsignals\.baselines"):
        Baselines.from_arrays(arrays)
