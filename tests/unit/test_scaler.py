"""Robust scaling: fitted on the rows it is given, saved as JSON bit for bit, refuses other specs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.features import FEATURE_SPEC, FeatureSpecMismatchError
from ml.scaling import DEFAULT_CLIP, RobustScaler

F = FEATURE_SPEC.n_features


def _rows(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(-9, 1, F))  # features span returns (1e-4) to ratios (1)
    return rng.standard_t(4, (n, F)) * scales + rng.normal(0, 1, F) * scales


def test_fit_is_median_and_interquartile_range_of_the_given_rows() -> None:
    rows = _rows()
    scaler = RobustScaler.fit(rows)
    q25, med, q75 = np.percentile(rows, [25, 50, 75], axis=0)
    np.testing.assert_array_equal(scaler.center, med)
    np.testing.assert_array_equal(scaler.scale, q75 - q25)
    assert scaler.n_rows == 2000
    assert scaler.spec_hash == FEATURE_SPEC.hash
    assert scaler.names == FEATURE_SPEC.names


def test_fit_uses_only_the_training_rows() -> None:
    rows = _rows(3000)
    train, later = rows[:2000], rows[2000:] * 3.0 + 1.0  # later rows come from another regime
    fitted = RobustScaler.fit(train)
    np.testing.assert_array_equal(fitted.center, RobustScaler.fit(train.copy()).center)
    assert not np.allclose(fitted.center, RobustScaler.fit(np.vstack([train, later])).center)
    # Applying it to later rows uses the training statistics, whatever those rows look like.
    expected = np.clip((later - np.median(train, axis=0)) / fitted.scale, -10, 10).astype(np.float32)
    np.testing.assert_array_equal(fitted.transform(later), expected)


def test_transform_clips_keeps_nan_and_returns_contiguous_float32() -> None:
    rows = _rows()
    scaler = RobustScaler.fit(rows)
    x = np.broadcast_to(scaler.center, (3, 96, F)).copy()
    x[0, 0] += 1e6 * scaler.scale
    x[1, 1, 5] = np.nan
    y = scaler.transform(x)
    assert y.dtype == np.float32
    assert y.flags.c_contiguous
    assert y.shape == (3, 96, F)
    assert (y[0, 0] == DEFAULT_CLIP).all()
    assert np.isnan(y[1, 1, 5])
    assert np.isfinite(np.delete(y.reshape(-1), 96 * F + F + 5)).all()
    assert (y[2] == 0).all()


def test_degenerate_columns_never_divide_by_zero() -> None:
    rows = _rows()
    rows[:, 0] = 0.25  # constant
    rows[:, 1] = 0.0
    rows[:50, 1] = np.linspace(-1, 1, 50)  # mostly one value: IQR 0, but not constant
    scaler = RobustScaler.fit(rows)
    assert scaler.scale[0] == 1.0
    assert scaler.scale[1] == pytest.approx(rows[:, 1].std() * 1.349)
    assert np.isfinite(scaler.transform(rows)).all()


def test_json_round_trip_is_bit_exact() -> None:
    scaler = RobustScaler.fit(_rows(), clip=7.5)
    text = scaler.to_json()
    doc = json.loads(text)
    assert doc["spec_hash"] == FEATURE_SPEC.hash
    assert len(doc["center"]) == F
    back = RobustScaler.from_json(text)
    assert back.center.view(np.uint64).tolist() == scaler.center.view(np.uint64).tolist()
    assert back.scale.view(np.uint64).tolist() == scaler.scale.view(np.uint64).tolist()
    assert (back.clip, back.n_rows, back.names, back.spec_hash) == (7.5, 2000, scaler.names, scaler.spec_hash)
    x = _rows(500, seed=3)
    np.testing.assert_array_equal(back.transform(x), scaler.transform(x))
    assert back.to_json() == text


def test_fit_refuses_non_finite_rows_and_wrong_widths() -> None:
    rows = _rows()
    rows[10, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        RobustScaler.fit(rows)
    with pytest.raises(FeatureSpecMismatchError, match="240"):
        RobustScaler.fit(_rows()[:, :239])


def test_apply_refuses_another_feature_count_or_spec() -> None:
    scaler = RobustScaler.fit(_rows())
    with pytest.raises(FeatureSpecMismatchError, match="240 features"):
        scaler.transform(np.zeros((4, 241)))
    with pytest.raises(FeatureSpecMismatchError):
        scaler.transform(np.zeros((4, F)), spec_hash="0" * 64)
    doc = scaler.to_dict()
    doc["spec_hash"] = "0" * 64
    with pytest.raises(FeatureSpecMismatchError, match="feature spec"):
        RobustScaler.from_dict(doc)
    doc = scaler.to_dict()
    doc["scale"] = [0.0] * F
    with pytest.raises(ValueError, match="positive"):
        RobustScaler.from_dict(doc)
