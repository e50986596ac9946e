"""The statistics of ml/evaluation.py on cases with known answers: Newey-West error bars, the paired
difference, calibration, macro-F1, JSON output; and one period's report on a synthetic dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ml.decoding import DecodeRules
from ml.evaluation import (
    CALIBRATION_BINS,
    calibration,
    evaluate_outputs,
    ic_series,
    json_ready,
    lag_steps,
    macro_f1,
    mean_ci,
    naive_se,
    newey_west_se,
    paired_difference,
    spearman,
    summarize,
    without_series,
)
from ml.model.config import ModelConfig
from ml.model.schema import OutputSchema
from ml.plots import write_plots
from tests.unit.test_baselines import synthetic_dataset


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_newey_west_widens_the_error_bar_of_an_autocorrelated_series() -> None:
    phi, n = 0.7, 40_000
    x = _ar1(n, phi, seed=1)
    naive = naive_se(x)
    nw = newey_west_se(x, lag=40)
    # The long-run variance of an AR(1) is (1 + phi) / (1 - phi) times its variance; the Bartlett
    # kernel at lag 40 gets most of it (about 0.96 of the ratio of standard errors).
    theory = math.sqrt((1 + phi) / (1 - phi))
    assert nw / naive == pytest.approx(0.96 * theory, rel=0.1)
    assert naive == pytest.approx(x.std() / math.sqrt(n))
    white = np.random.default_rng(2).normal(size=n)
    assert newey_west_se(white, 40) == pytest.approx(naive_se(white), rel=0.1)
    assert math.isnan(newey_west_se(np.array([1.0]), 3))


def test_mean_ci_skips_missing_values() -> None:
    x = np.array([0.1, np.nan, 0.3, 0.2, np.nan])
    out = mean_ci(x, lag=0)
    assert out["times"] == 3
    assert out["mean"] == pytest.approx(0.2)
    assert out["ci_high"] - out["mean"] == pytest.approx(1.959963984540054 * out["se"])


def test_paired_difference_cancels_what_both_series_share() -> None:
    rng = np.random.default_rng(3)
    common = rng.normal(scale=0.1, size=2000)
    a = 0.02 + common + rng.normal(scale=0.01, size=2000)
    b = common + rng.normal(scale=0.01, size=2000)
    b[::10] = np.nan  # times the baseline has no value are left out of the pairing
    diff = paired_difference(a, b, lag=4)
    assert diff["times"] == 1800
    assert diff["difference"] == pytest.approx(0.02, abs=0.002)
    # The shared part cancels: the SE is that of the two independent noises, far below either's own.
    assert diff["se"] == pytest.approx(math.sqrt(2) * 0.01 / math.sqrt(1800), rel=0.15)
    assert diff["se"] < 0.2 * mean_ci(a, 4)["se"]
    assert diff["beats"]
    assert not paired_difference(b, a, lag=4)["beats"]


def test_lag_counts_anchor_times_per_horizon() -> None:
    bar = 15 * 60_000
    one_phase = np.repeat(np.arange(50, dtype=np.int64) * bar, 3)
    assert lag_steps(one_phase, 4, bar) == 4
    three_phases = np.arange(150, dtype=np.int64) * 5 * 60_000
    assert lag_steps(three_phases, 4, bar) == 12


def test_ic_series_keeps_every_time_in_order() -> None:
    times = np.array([30, 10, 10, 10, 10, 10, 20, 20], dtype=np.int64)
    pred = np.array([1.0, 1, 2, 3, 4, 5, 1, 2])
    real = pred.copy()
    t, v = ic_series(pred, real, times)
    assert t.tolist() == [10, 20, 30]
    assert v[0] == pytest.approx(1.0)
    assert np.isnan(v[1:]).all()  # fewer than 5 symbols


@pytest.mark.parametrize("seed", range(5))
def test_ic_series_matches_spearman_time_by_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    times = rng.integers(0, 40, size=600).astype(np.int64)
    pred = np.round(rng.normal(size=600), 1)  # ties
    real = 0.3 * pred + rng.normal(size=600)
    real[rng.choice(600, 30, replace=False)] = np.nan
    pred[times == 3] = 0.5  # constant at one time
    t, v = ic_series(pred, real, times)
    for when, value in zip(t, v, strict=True):
        sel = times == when
        expected = spearman(pred[sel], real[sel]) if sel.sum() >= 5 else float("nan")
        if np.isnan(expected):
            assert np.isnan(value)
        else:
            assert value == pytest.approx(expected, abs=1e-12)


def test_calibration_on_known_probabilities() -> None:
    # 40 rows at confidence 0.75 of which 30 right; 20 rows at 0.95 of which 10 right.
    probs = np.vstack([np.tile([0.75, 0.15, 0.10], (40, 1)), np.tile([0.02, 0.95, 0.03], (20, 1))])
    labels = np.array([0] * 30 + [2] * 10 + [1] * 10 + [0] * 10)
    out = calibration(probs, labels)
    assert len(out["bins"]) == CALIBRATION_BINS
    b7, b9 = out["bins"][7], out["bins"][9]
    assert (b7["count"], b7["mean_confidence"], b7["accuracy"]) == (40, pytest.approx(0.75), 0.75)
    assert (b9["count"], b9["mean_confidence"], b9["accuracy"]) == (20, pytest.approx(0.95), 0.5)
    assert sum(b["count"] for b in out["bins"]) == 60
    assert out["ece"] == pytest.approx(20 / 60 * 0.45)
    expected = -(30 * math.log(0.75) + 10 * math.log(0.10) + 10 * math.log(0.95) + 10 * math.log(0.02)) / 60
    assert out["log_loss"] == pytest.approx(expected)
    freq = np.array([40, 10, 10]) / 60
    assert out["class_frequency_log_loss"] == pytest.approx(-(freq * np.log(freq)).sum())
    # A confidence of exactly 1 falls into the last bin.
    assert calibration(np.array([[1.0, 0.0, 0.0]]), np.array([0]))["bins"][9]["count"] == 1


def test_macro_f1_by_hand() -> None:
    # rows: true LONG, SHORT, FLAT; columns: predicted
    confusion = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]])
    f_long = 2 * 5 / (2 * 5 + 2 + 1)  # FP 2 (true SHORT), FN 1
    f_short = 2 * 3 / (2 * 3 + 1 + 3)  # FP 1, FN 3
    f_flat = 0.0  # predicted once (FP 1), never true
    assert macro_f1(confusion) == pytest.approx((f_long + f_short + f_flat) / 3)
    only_two = np.array([[4, 0, 0], [1, 5, 0], [0, 0, 0]])  # FLAT neither true nor predicted
    assert macro_f1(only_two) == pytest.approx((2 * 4 / 9 + 2 * 5 / 11) / 2)


def test_json_ready_gives_plain_types_and_null_for_nan() -> None:
    doc = {
        "a": np.float64(np.nan),
        "b": [np.int64(3), np.bool_(True), float("inf")],
        "c": np.array([[1.5, np.nan]]),
        1: (np.float32(0.5),),
    }
    out = json_ready(doc)
    assert out == {"a": None, "b": [3, True, None], "c": [[1.5, None]], "1": [0.5]}
    json.dumps(out, allow_nan=False)


@pytest.fixture(scope="module")
def report() -> dict:  # type: ignore[type-arg]
    """A period in which the network's returns head is the planted signal plus a little noise and
    the one baseline is noise: the network must beat it, and its signals must pay."""
    ds = synthetic_dataset(n_symbols=10, n_times=200, train_share=0.0)
    idx = ds.indices("test")
    rng = np.random.default_rng(5)
    schema = OutputSchema.from_config(ModelConfig())
    outputs = rng.normal(scale=0.1, size=(idx.size, schema.n_outputs))
    scaled = ds.neutral_returns[idx] / np.asarray(schema.return_scales)
    outputs[:, :4] = scaled * 3 + rng.normal(scale=0.01, size=scaled.shape)
    # Direction logits that agree with the sign of the predicted return.
    outputs[:, 4:16] = 0.0
    outputs[:, 4:16:3] = 50 * outputs[:, :4]
    outputs[:, 5:16:3] = -50 * outputs[:, :4]
    noise = {"noise": rng.normal(size=(idx.size, 4))}
    rules = DecodeRules(confidence_threshold=0.0, round_trip_cost=0.0015, edge_margin=0.0)
    return evaluate_outputs(outputs, 1.0, schema, ds, idx, rules, baselines=noise)


def test_a_period_report_holds_every_figure(report: dict) -> None:  # type: ignore[type-arg]
    assert report["baselines"] == ["noise"]
    for h in report["horizons"]:
        ic = h["ic"]
        assert ic["se_method"] == "newey_west"
        assert ic["lag"] == h["horizon_bars"]
        assert ic["network"]["mean"] > 0.8
        assert ic["network"]["ci_low"] < ic["network"]["mean"] < ic["network"]["ci_high"]
        assert abs(ic["noise"]["mean"]) < 0.1
        assert ic["best_baseline"] == "noise"
        assert ic["vs_best_baseline"]["beats_best_baseline"]
        assert 0 <= h["calibration"]["ece"] <= 1
        assert 0 <= h["macro_f1"] <= 1
    sig = report["signals"]
    assert sig["actionable"] == sig["long"] + sig["short"] > 0
    assert sig["long_share"] + sig["short_share"] == pytest.approx(1.0)
    assert sig["realised_up_share"] + sig["realised_down_share"] <= 1.0
    for d in ("LONG", "SHORT"):
        neutral = sig["by_direction"][d]["neutral"]
        assert neutral["hit_rate"] > 0.9
        assert neutral["mean_net"] == pytest.approx(neutral["mean_gross"] - 0.0015)
    bt = report["backtest"]
    assert bt["periods"] == 50  # 200 anchor times, rebalanced every 4 bars
    assert bt["neutral"]["sharpe"] > 0
    summary = summarize(report, 1)
    assert summary["horizon_bars"] == 4
    assert summary["best_baseline"] == "noise"
    assert summary["beats_best_baseline"]
    assert set(summary["ece"]) == {"1", "4", "16", "48"}
    assert set(summary["net_return"]) == {"LONG", "SHORT"}
    stored = without_series({"test": report, "evaluated_at_ms": 1})
    assert "series" not in stored["test"]
    assert "series" in report
    text = json.dumps(json_ready({"test": report}), allow_nan=False)
    assert json.loads(text)["test"]["horizons"][0]["horizon_bars"] == 1


def test_plots_write_non_empty_pngs(report: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    written = write_plots({"test": report, "holdout": {"available": False}}, tmp_path / "plots", "v1")
    assert sorted(p.name for p in written) == ["test_equity.png", "test_ic.png", "test_reliability.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG")
        assert len(data) > 1000
