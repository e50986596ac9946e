"""Feature drift: the training distribution of every feature as quantile bins, and the population
stability index (PSI) of live rows against it.

Bins. For each of the 240 features, ``bins`` quantile bins of the version's *scaled* training rows
(the newest bar of every training sample, ``ml.jobs``): the interior edges are the quantiles
``1/B … (B-1)/B``. A discrete feature (a flag, a clipped tail, a count) repeats quantiles; repeated
edges are merged, so such a feature has fewer bins, and its mass points each fall in one bin. Bin
``k`` holds the values ``v`` with ``edge[k-1] < v <= edge[k]`` (the first and last bins are open), and
each stored edge is nudged up by ``EDGE_TOLERANCE`` (relative, at least absolute): a live value one
float32 rounding above a mass point (the training and live feature engines are separate code) still
falls in the mass point's bin. Stored per version as ``feature_bins.npz`` (``ml.registry``): the
edges padded to ``B - 1`` with ``+inf`` (a padded bin receives nothing), the training proportion of
each bin (0 in padded bins) and the feature names.

PSI. With ``e_k`` the training proportion and ``a_k`` the live proportion of bin ``k``::

    PSI = sum_k (a_k - e_k) * ln(a_k / e_k),   a_k, e_k floored at PSI_FLOOR (1e-4)

The floor keeps an empty bin finite: a live value in a bin that held no training row (below the
training minimum, say) costs about ``a * ln(a / 1e-4)``, large but finite; bins empty on both sides
(padding) add exactly 0. The proportions are not renormalised after flooring (the usual practice).
Conventional reading: below 0.1 stable, 0.1 to 0.25 moderate, 0.25 and above major.

Numpy only: the drift pass (``quality.drift``) and the training job both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FORMAT = "mlsignals.feature_bins"
FORMAT_VERSION = 1
DEFAULT_BINS = 10
PSI_FLOOR = 1e-4
# Edges are nudged up by this, relative to |edge| (absolute below 1): see the module docstring.
EDGE_TOLERANCE = 1e-6
# The conventional PSI cut-offs: "moderate" from here; "major" from quality.drift_alert_psi (0.25).
MODERATE_PSI = 0.1
# Rows compared at once in ``counts``: [chunk, F, B - 1] booleans stay a few MB.
_CHUNK_ROWS = 4096


def psi(expected: npt.ArrayLike, counts: npt.ArrayLike, floor: float = PSI_FLOOR) -> npt.NDArray[np.float64]:
    """PSI per feature of live bin ``counts`` ``[F, B]`` against training proportions ``[F, B]``.

    A feature without any live count gets NaN (nothing to compare)."""
    e = np.asarray(expected, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if e.shape != c.shape or e.ndim != 2:
        raise ValueError(f"expected proportions {e.shape} and counts {c.shape} must both be [F, B]")
    total = c.sum(axis=1, keepdims=True)
    a = np.maximum(np.divide(c, total, out=np.zeros_like(c), where=total > 0), floor)
    e = np.maximum(e, floor)
    out: npt.NDArray[np.float64] = ((a - e) * np.log(a / e)).sum(axis=1)
    out[total[:, 0] == 0] = np.nan
    return out


def status(value: float | None, alert_psi: float) -> str:
    """``major`` at or above ``alert_psi``, ``moderate`` from ``MODERATE_PSI``, else ``ok``."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if value >= alert_psi:
        return "major"
    return "moderate" if value >= MODERATE_PSI else "ok"


def worst(values: npt.ArrayLike, names: Sequence[str], top: int) -> list[tuple[str, float]]:
    """The ``top`` features of highest PSI, highest first (NaN never ranks; ties by spec order)."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(v))
    order = finite[np.argsort(-v[finite], kind="stable")][: max(0, top)]
    return [(names[i], float(v[i])) for i in order]


@dataclass(frozen=True, eq=False)
class FeatureBins:
    """Quantile bins of each feature's training distribution (see the module docstring)."""

    names: tuple[str, ...]
    edges: npt.NDArray[np.float64]  # [F, B - 1], ascending, +inf padded
    expected: npt.NDArray[np.float64]  # [F, B] training proportions, each row sums to 1
    rows: int  # training rows they were computed on

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def n_bins(self) -> int:
        return int(self.expected.shape[1])

    def bins_per_feature(self) -> npt.NDArray[np.int64]:
        """The bins each feature really has (fewer than ``n_bins`` for a discrete feature)."""
        edges: npt.NDArray[np.int64] = np.isfinite(self.edges).sum(axis=1).astype(np.int64)
        return edges + 1

    @classmethod
    def fit(cls, rows: npt.ArrayLike, names: Sequence[str], bins: int = DEFAULT_BINS) -> FeatureBins:
        """Bins of ``rows`` ``[n, F]`` (scaled training rows); rows with a non-finite value are left
        out, as the scaler's fit leaves them out."""
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[1] != len(names):
            raise ValueError(f"feature bins need rows of {len(names)} features, got shape {x.shape}")
        if bins < 2:
            raise ValueError(f"feature bins need at least 2 bins, got {bins}")
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            x = x[finite]
        if x.shape[0] < 2:
            raise ValueError(f"feature bins need at least 2 finite rows, got {x.shape[0]}")
        n_features = x.shape[1]
        levels = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        edges = np.full((n_features, bins - 1), np.inf)
        # A block of columns at a time in float64: the whole matrix in float64 would double its size.
        for j0 in range(0, n_features, 16):
            block = np.asarray(x[:, j0 : j0 + 16], dtype=np.float64)
            quantiles = np.quantile(block, levels, axis=0).T  # [block, B - 1]
            for k, q in enumerate(quantiles):
                distinct = _distinct_edges(q)
                edges[j0 + k, : distinct.size] = distinct
        shell = cls(tuple(names), edges, np.zeros((n_features, bins)), int(x.shape[0]))
        counts = shell.counts(x)
        expected = counts / counts.sum(axis=1, keepdims=True)
        return cls(tuple(names), edges, expected, int(x.shape[0]))

    def counts(self, rows: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """How many of ``rows`` ``[n, F]`` fall in each bin: ``[F, B]``. A non-finite value counts
        nowhere (for its feature only)."""
        x = np.asarray(rows)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"rows of {self.n_features} features expected, got shape {x.shape}")
        n_features, n_bins = self.n_features, self.n_bins
        offsets = np.arange(n_features, dtype=np.int64) * n_bins
        out = np.zeros(n_features * n_bins, dtype=np.int64)
        for i0 in range(0, x.shape[0], _CHUNK_ROWS):
            chunk = np.asarray(x[i0 : i0 + _CHUNK_ROWS], dtype=np.float64)
            # Bin k: the number of edges strictly below the value (edge[k-1] < v <= edge[k]).
            index = (chunk[:, :, None] > self.edges[None, :, :]).sum(axis=2) + offsets
            out += np.bincount(index[np.isfinite(chunk)], minlength=out.size)
        counts: npt.NDArray[np.int64] = out.reshape(n_features, n_bins)
        return counts

    def psi(self, counts: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return psi(self.expected, counts)

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Plain arrays for ``feature_bins.npz`` (no pickles)."""
        return {
            "format": np.array(FORMAT),
            "format_version": np.array(FORMAT_VERSION),
            "names": np.array(self.names, dtype=np.str_),
            "edges": self.edges.astype(np.float64),
            "expected": self.expected.astype(np.float64),
            "rows": np.array(self.rows, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> FeatureBins:
        """The inverse of ``to_arrays``; ``ValueError`` for anything else."""
        try:
            fmt = str(arrays["format"])
            version = int(arrays["format_version"])
            names = tuple(str(n) for n in np.asarray(arrays["names"]).tolist())
            edges = np.asarray(arrays["edges"], dtype=np.float64)
            expected = np.asarray(arrays["expected"], dtype=np.float64)
            rows = int(arrays["rows"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not {FORMAT} arrays: {exc!r}") from None
        if fmt != FORMAT or version != FORMAT_VERSION:
            raise ValueError(f"not {FORMAT} version {FORMAT_VERSION} arrays ({fmt} version {version})")
        f = len(names)
        if edges.ndim != 2 or expected.shape != (f, edges.shape[1] + 1) or edges.shape[0] != f:
            raise ValueError(
                f"{FORMAT}: edges {edges.shape} and proportions {expected.shape} do not fit {f} features"
            )
        if np.isnan(edges).any() or (edges[:, 1:] < edges[:, :-1]).any():
            raise ValueError(f"{FORMAT}: edges must be ascending")
        if not np.allclose(expected.sum(axis=1), 1.0, atol=1e-6) or (expected < 0).any():
            raise ValueError(f"{FORMAT}: each feature's proportions must be >= 0 and sum to 1")
        return cls(names, edges, expected, rows)


def _distinct_edges(quantiles: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Ascending quantiles without repeats (a discrete feature's), each nudged up by the tolerance;
    edges closer than the tolerance are merged."""
    kept: list[float] = []
    for q in np.unique(quantiles):
        tol = EDGE_TOLERANCE * max(1.0, abs(float(q)))
        if not kept or q - kept[-1] > tol:
            kept.append(float(q))
    values = np.asarray(kept, dtype=np.float64)
    return values + EDGE_TOLERANCE * np.maximum(1.0, np.abs(values))
