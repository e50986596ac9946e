"""The information coefficient's Spearman correlation (ml/evaluation.py) on SciPy.

``spearman`` calls ``scipy.stats.spearmanr``; these tests hold it to the hand-written ranking it
replaced (kept below as the reference): average ranks for ties, NaNs equal to each other and ranked
above every number (a NaN does not make the correlation NaN), NaN below two samples or for a
constant side, and no warning on any of those inputs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from ml.evaluation import MIN_CROSS_SECTION, ic_per_time, spearman

SEEDS = range(20)


def reference_rankdata(x: np.ndarray) -> np.ndarray:
    """The former ml/evaluation.py ranking: ranks 0..n-1, ties sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.shape[0], dtype=np.float64)
    ranks[order] = np.arange(x.shape[0], dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if counts.max(initial=1) > 1:
        sums = np.bincount(inverse, weights=ranks)
        ranks = sums[inverse] / counts[inverse]
    return ranks


def reference_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """The former ml/evaluation.py correlation."""
    if a.shape[0] < 2:
        return float("nan")
    ra = reference_rankdata(a) - (a.shape[0] - 1) / 2
    rb = reference_rankdata(b) - (b.shape[0] - 1) / 2
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def assert_same(actual: float, expected: float) -> None:
    if np.isnan(expected):
        assert np.isnan(actual)
    else:
        assert actual == pytest.approx(expected, rel=0, abs=1e-12)


def sample(seed: int, n: int, *, ties: bool, nans: int, infs: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = 0.3 * a + rng.normal(size=n)
    if ties:  # a coarse grid: many equal values, -0.0 and 0.0 among them
        a = np.round(a * 2) / 2
        b = np.round(b)
    for x in (a, b):
        x[rng.choice(n, size=nans, replace=False)] = np.nan
        x[rng.choice(n, size=infs, replace=False)] = rng.choice([np.inf, -np.inf], size=infs)
    return a, b


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [2, 3, 5, 50, 400])
def test_matches_scipy_and_the_former_ranking_on_distinct_values(seed: int, n: int) -> None:
    a, b = sample(seed, n, ties=False, nans=0, infs=0)
    expected = reference_spearman(a, b)
    assert_same(spearman(a, b), expected)
    assert_same(float(stats.spearmanr(a, b).statistic), expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("ties", "nans", "infs"), [(True, 0, 0), (True, 2, 0), (False, 3, 2), (True, 1, 1)])
def test_ties_nans_and_infinities_rank_as_before(seed: int, ties: bool, nans: int, infs: int) -> None:
    a, b = sample(seed, 40, ties=ties, nans=nans, infs=infs)
    expected = reference_spearman(a, b)
    assert np.isfinite(expected)
    assert_same(spearman(a, b), expected)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([], []),
        ([1.0], [2.0]),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]),  # constant side
        ([1.0, 2.0, 3.0], [np.nan, np.nan, np.nan]),  # all NaN: one tie, so constant
        ([0.0, -0.0, 0.0], [1.0, 2.0, 3.0]),  # -0.0 == 0.0
        ([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]),  # NaN ranked last: (1, 3, 2)
        ([np.inf, np.nan, -np.inf, 0.0], [4.0, 3.0, 1.0, 2.0]),
        ([1.0, 2.0], [2.0, 1.0]),
    ],
)
def test_edge_cases_match_and_do_not_warn(a: list[float], b: list[float]) -> None:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        actual = spearman(x, y)
    assert_same(actual, reference_spearman(x, y))


def test_ic_per_time_averages_the_cross_sections_as_before() -> None:
    rng = np.random.default_rng(11)
    # 30 anchor times of 8 symbols, the last one at the minimum size (5)
    times = np.repeat(np.arange(30, dtype=np.int64) * 60_000, 8)[: 30 * 8 - 3]
    rng.shuffle(times)
    pred = np.round(rng.normal(size=times.shape[0]), 1)
    real = 0.2 * pred + rng.normal(size=times.shape[0])
    real[::17] = np.nan
    pred[times == 0] = 1.0  # a constant section: skipped
    ic, counted = ic_per_time(pred, real, times)
    expected = [
        v
        for t in np.unique(times)
        if (times == t).sum() >= MIN_CROSS_SECTION
        and np.isfinite(v := reference_spearman(pred[times == t], real[times == t]))
    ]
    assert counted == len(expected) == 29
    assert ic == pytest.approx(float(np.mean(expected)), rel=0, abs=1e-12)
