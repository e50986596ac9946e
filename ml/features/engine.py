"""The feature engine: one vectorised core for training (long histories) and live use (96 rows).

The core computes the newest ``context`` rows of a batch of equally long bar windows
(``[series, warmup + context]``) for all features at once. A long history is cut into such windows
(blocks of ``context`` rows, each with the ``warmup`` bars before it) and goes through the very
same core, so a training row and a live row of the same bars are the same computation.

Bad bars (incomplete, non-finite, non-positive prices, negative volume) are replaced by finite
values before the core runs and every feature whose declared window ``[t - warmup, t]`` contains
one is set to NaN afterwards: warm-up rows and rows next to a gap are NaN, never zero-filled.
"""

from __future__ import annotations

from datetime import tzinfo

import numpy as np
import numpy.typing as npt
import pandas as pd
from threadpoolctl import ThreadpoolController

from core.errors import DataValidationError
from data.bars import BAR_FIELDS
from ml.features.context import Ctx
from ml.features.indicators import REGISTRY
from ml.features.kernels import Array
from ml.features.spec import FEATURE_SPEC, FeatureSpec

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

# Many small matrix products: BLAS threads only add synchronisation (and, on a busy 2-core box,
# stall behind other processes); parallelism comes from running several workers.
_THREADPOOLS = ThreadpoolController()

# Series per pass of the core: the intermediates of one pass stay alive until it ends (about
# 1 MB per series), and beyond ~100 series a larger batch is no faster per series.
_ROWS_PER_CALL = 128
# Blocks of a long history per compute_window call (each is cut into passes as above).
_BLOCKS_PER_CALL = 1024


class FeatureInputError(DataValidationError, ValueError):
    """The bars handed to ``compute`` are malformed (columns, index, order, time zone)."""


def bad_bars(o: Array, h: Array, l: Array, c: Array, v: Array) -> BoolArray:  # noqa: E741
    """Bars no feature may read: any non-finite field, a price <= 0 or a negative volume."""
    with np.errstate(invalid="ignore"):
        ok = (o > 0) & (h > 0) & (l > 0) & (c > 0) & (v >= 0) & np.isfinite(o + h + l + c + v)
    return ~ok


def _fill_bad(arrays: list[Array], bad: BoolArray) -> list[Array]:
    """Replace bad bars by the last good close (or the next one), zero volume; masked later."""
    if not bad.any():
        return arrays
    o, h, l, c, v = arrays  # noqa: E741
    n, T = c.shape
    good = ~bad
    cols = np.broadcast_to(np.arange(T), (n, T))
    last = np.maximum.accumulate(np.where(good, cols, -1), axis=1)
    first = good.argmax(axis=1)
    src = np.where(last < 0, first[:, None], last)
    fill = np.take_along_axis(c, src, axis=1)
    fill = np.where(np.isfinite(fill) & (fill > 0), fill, 1.0)
    c = np.where(bad, fill, c)
    return [np.where(bad, c, o), np.where(bad, c, h), np.where(bad, c, l), c, np.where(bad, 0.0, v)]


def compute_window(
    o: Array,
    h: Array,
    l: Array,  # noqa: E741
    c: Array,
    v: Array,
    end_ms: IntArray,
    *,
    bad: BoolArray | None = None,
    start: int | None = None,
    spec: FeatureSpec = FEATURE_SPEC,
    mask: bool = True,
) -> Array:
    """Features of the output columns ``start..T-1`` of ``[n, T]`` bar arrays: ``[n, T - start, F]``.

    ``end_ms`` is the bar end time (ms) of the output columns, ``[n, T - start]`` or ``[T - start]``.
    ``start`` defaults to ``spec.warmup``; a feature's value is NaN where its window reaches a bad
    bar or column 0 minus one (not enough history). ``mask=False`` skips that step and shows what
    the computation itself leaves NaN (the tests compare it with the declared warm-ups).
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (o, h, l, c, v)]
    n, T = arrays[3].shape
    s = spec.warmup if start is None else start
    if not 0 <= s < T:
        raise ValueError(f"start {s} outside the {T} bars")
    m = T - s
    if n == 0:
        return np.empty((0, m, spec.n_features))
    if bad is None:
        bad = bad_bars(*arrays)
    ends = np.broadcast_to(np.asarray(end_ms, dtype=np.int64), (n, m))
    o, h, l, c, v = _fill_bad(arrays, bad)  # noqa: E741
    result = np.empty((n, m, spec.n_features))
    with np.errstate(all="ignore"), _THREADPOOLS.limit(limits=1, user_api="blas"):
        for r0 in range(0, n, _ROWS_PER_CALL):
            rows = slice(r0, min(n, r0 + _ROWS_PER_CALL))
            ctx = Ctx(o[rows], h[rows], l[rows], c[rows], v[rows], ends[rows], s)
            out = np.empty((spec.n_features, ctx.n, m))
            for i, feature in enumerate(spec.features):
                out[i] = REGISTRY[feature.kind](ctx, **feature.params)
            result[rows] = out.transpose(1, 2, 0)
    if mask:
        _mask_windows(result, bad, s, spec)
    return result


def _mask_windows(result: Array, bad: BoolArray, s: int, spec: FeatureSpec) -> None:
    """NaN where a feature's window ``[t - warmup, t]`` holds a bad bar or starts before column 0."""
    m = result.shape[1]
    warmups = np.array([f.warmup for f in spec.features], dtype=np.int64)
    rows = np.flatnonzero(bad.any(axis=1) | (s < warmups.max()))
    if rows.size == 0:
        return
    counts = np.zeros((rows.size, bad.shape[1] + 1), dtype=np.int64)
    np.cumsum(bad[rows], axis=1, out=counts[:, 1:])
    t = s + np.arange(m)
    lo = t[:, None] - warmups[None, :]  # [m, F] first bar of each window
    inside = counts[:, t + 1][:, :, None] - counts[:, np.maximum(lo, 0)]
    invalid = (inside > 0) | (lo < 0)[None, :, :]
    sub = result[rows]
    sub[invalid] = np.nan
    result[rows] = sub


def compute_series(
    o: Array,
    h: Array,
    l: Array,  # noqa: E741
    c: Array,
    v: Array,
    end_ms: IntArray,
    bad: BoolArray | None = None,
    spec: FeatureSpec = FEATURE_SPEC,
) -> Array:
    """Features of every row of one long series (1-D arrays of length N): ``[N, F]``.

    The series is cut into blocks of ``spec.context`` rows aligned to end at the newest bar, each
    with the ``spec.warmup`` bars before it; missing history before the first bar counts as bad.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (o, h, l, c, v)]
    N = arrays[3].shape[0]
    F, W, m = spec.n_features, spec.warmup, spec.context
    if N == 0:
        return np.empty((0, F))
    if bad is None:
        bad = bad_bars(*arrays)
    nb = -(-N // m)
    pad = W + nb * m - N

    def padded(x: npt.NDArray[np.generic], fill: object) -> npt.NDArray[np.generic]:
        out = np.full(pad + N, fill, dtype=x.dtype)
        out[pad:] = x
        return out

    cols: list[Array] = [padded(x, np.nan) for x in arrays]  # type: ignore[misc]
    pbad: BoolArray = padded(np.asarray(bad, dtype=bool), True)  # type: ignore[assignment]
    pend: IntArray = padded(np.asarray(end_ms, dtype=np.int64), 0)  # type: ignore[assignment]
    out = np.empty((nb * m, F))
    offsets = np.arange(W + m)
    for b0 in range(0, nb, _BLOCKS_PER_CALL):
        b1 = min(nb, b0 + _BLOCKS_PER_CALL)
        idx = (np.arange(b0, b1) * m)[:, None] + offsets[None, :]
        blocks = [col[idx] for col in cols]
        res = compute_window(
            blocks[0],
            blocks[1],
            blocks[2],
            blocks[3],
            blocks[4],
            pend[idx[:, W:]],
            bad=pbad[idx],
            start=W,
            spec=spec,
        )
        out[b0 * m : b1 * m] = res.reshape(-1, F)
    return out[nb * m - N :]


def _is_utc(tz: tzinfo) -> bool:
    """UTC under any spelling (pytz, zoneinfo, dateutil, datetime.timezone): no offset, summer or winter."""
    return all(
        pd.Timestamp(day, tz=tz).utcoffset() == pd.Timedelta(0) for day in ("2024-01-15", "2024-07-15")
    )


def epoch_ms(index: pd.DatetimeIndex) -> IntArray:
    """Milliseconds since the epoch of a UTC index."""
    return index.to_numpy(dtype="datetime64[ms]").astype(np.int64)


def _validate(bars: pd.DataFrame) -> pd.DatetimeIndex:
    if not isinstance(bars, pd.DataFrame):
        raise FeatureInputError("bad_input", f"bars must be a DataFrame, got {type(bars).__name__}")
    missing = [col for col in BAR_FIELDS if col not in bars.columns]
    if missing:
        raise FeatureInputError("missing_columns", f"bars lack columns {missing}")
    index = bars.index
    if not isinstance(index, pd.DatetimeIndex):
        raise FeatureInputError(
            "index_not_datetime", f"bars need a DatetimeIndex, got {type(index).__name__}"
        )
    if index.tz is None or not _is_utc(index.tz):
        raise FeatureInputError("index_not_utc", f"bars need a UTC index, got time zone {index.tz!r}")
    if index.has_duplicates:
        raise FeatureInputError("duplicate_index", "bars have duplicate timestamps")
    if not index.is_monotonic_increasing:
        raise FeatureInputError("index_not_monotonic", "bar timestamps must be strictly ascending")
    return index


def _bar_ms(index: pd.DatetimeIndex, bar_minutes: int | None, allow_irregular: bool) -> int:
    steps = np.diff(epoch_ms(index))
    if bar_minutes is not None:
        bar = int(bar_minutes) * 60_000
    elif steps.size:
        values, counts = np.unique(steps, return_counts=True)
        bar = int(values[counts.argmax()])
    else:
        raise FeatureInputError("bar_length_unknown", "one bar: pass bar_minutes to compute()")
    if not allow_irregular and steps.size and (steps != bar).any():
        first = int(np.flatnonzero(steps != bar)[0])
        raise FeatureInputError(
            "irregular_index",
            f"bars are not evenly spaced ({bar // 60_000} min): gap after {index[first]}; "
            "resample onto the regular grid (incomplete bars as NaN) or pass allow_irregular=True",
        )
    return bar


def compute(
    bars: pd.DataFrame, *, bar_minutes: int | None = None, allow_irregular: bool = False
) -> pd.DataFrame:
    """The spec's features for every bar: a DataFrame with the same index and the spec's columns.

    ``bars`` is indexed by ascending UTC bar open times and has ``open, high, low, close, volume``
    (and optionally ``complete``, as ``data.bars.resample_anchored`` returns). Rows are consecutive
    bars; by default the index must be evenly spaced (``bar_minutes``, else its most common step).
    Rows inside a feature's warm-up, or whose window holds an incomplete bar, are NaN.
    """
    index = _validate(bars)
    spec = FEATURE_SPEC
    if len(bars) == 0:
        return pd.DataFrame(np.empty((0, spec.n_features)), index=index, columns=list(spec.names))
    bar = _bar_ms(index, bar_minutes, allow_irregular)
    arrays = [bars[col].to_numpy(dtype=np.float64) for col in BAR_FIELDS]
    bad = bad_bars(*arrays)
    if "complete" in bars.columns:
        bad |= ~bars["complete"].to_numpy(dtype=bool)
    o, h, l, c, v = arrays  # noqa: E741
    values = compute_series(o, h, l, c, v, epoch_ms(index) + bar, bad=bad, spec=spec)
    return pd.DataFrame(values, index=index, columns=list(spec.names))
