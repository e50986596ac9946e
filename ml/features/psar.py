"""Parabolic SAR as a vectorised path kernel (Wilder's rules as ``ta.trend.PSARIndicator`` applies them).

The SAR is path dependent: its state at bar ``t`` depends on every bar since the series began. To
keep finite memory, the feature restarts the path ``window`` bars back for every output row and
runs all rows at once (arrays ``[series, rows]``, one loop over the ``window`` steps). The same
runner also follows one path over a whole series, which the reference test checks against ``ta``.

State is kept in "signed" form: a down-trend is handled as an up-trend of the negated prices, so
one set of rules serves both directions and every step is a fixed sequence of in-place ufuncs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ml.features.kernels import Array, nan_block

BoolArray = npt.NDArray[np.bool_]
Recorder = Callable[[int, Array, BoolArray, Array], None]


def _run(
    high: Array,
    low: Array,
    close: Array,
    step: float,
    max_step: float,
    k: int,
    steps: int,
    record: Recorder | None = None,
) -> tuple[Array, BoolArray, Array]:
    """Run ``k`` paths per row; path ``i`` starts at bar ``i`` and takes ``steps`` bars.

    Like ``ta``: the SAR of the first two bars is their close, the first trend is up from the
    first bar's high. Returns the signed SAR, the trend (True = up) and the acceleration after
    the last step.
    """
    n, T = close.shape
    up = np.ones((n, k), dtype=bool)
    af = np.full((n, k), step)
    eps = high[:, 0:k].copy()  # extreme point, signed: +high in an up-trend, -low in a down-trend
    ps = close[:, 1 : 1 + k].copy()  # SAR, signed the same way
    # Per bar j >= 2, stacked so that one masked copy picks them for every path: the favourable
    # extreme of bar j and the adverse extremes of bars j, j-1, j-2, for an up- and a down-trend.
    ups = np.stack([high[:, 2:], low[:, 2:], low[:, 1 : T - 1], low[:, : T - 2]])
    downs = np.stack([-low[:, 2:], -high[:, 2:], -high[:, 1 : T - 1], -high[:, : T - 2]])
    sel = np.empty((4, n, k))
    fav, adv, a1, a2 = sel[0], sel[1], sel[2], sel[3]
    p, tmp = np.empty((n, k)), np.empty((n, k))
    rev, keep, flag = (np.empty((n, k), dtype=bool) for _ in range(3))
    for j in range(2, steps):
        np.copyto(sel, downs[:, :, j - 2 : j - 2 + k])
        np.copyto(sel, ups[:, :, j - 2 : j - 2 + k], where=up)
        # SAR moves towards the extreme point by the acceleration factor.
        np.subtract(eps, ps, out=p)
        p *= af
        p += ps
        np.less(adv, p, out=rev)
        np.logical_not(rev, out=keep)
        # No reversal: a new extreme raises the acceleration (up to max_step) ...
        np.greater(fav, eps, out=flag)
        np.add(af, step, out=tmp)
        np.minimum(tmp, max_step, out=tmp)
        np.copyto(af, tmp, where=flag)
        np.maximum(eps, fav, out=fav)
        # ... and the SAR may not pass the previous two bars (ta's order: bar j-2 first).
        np.minimum(a1, p, out=tmp)
        np.less(a2, p, out=flag)
        np.copyto(tmp, a2, where=flag)
        # Reversal: the SAR jumps to the old extreme; the new extreme is this bar's adverse one.
        np.negative(eps, out=ps)
        np.copyto(ps, tmp, where=keep)
        np.negative(adv, out=eps)
        np.copyto(eps, fav, where=keep)
        np.copyto(af, step, where=rev)
        np.logical_xor(up, rev, out=up)
        if record is not None:
            record(j, ps, up, af)
    return ps, up, af


def psar_path(
    high: Array, low: Array, close: Array, step: float = 0.02, max_step: float = 0.2
) -> tuple[Array, BoolArray, Array]:
    """SAR, trend (True = up) and acceleration along one path per row over ``[n, T]`` bars."""
    n, T = close.shape
    psar = close.copy()
    trend = np.ones((n, T), dtype=bool)
    accel = np.full((n, T), step)

    def record(j: int, ps: Array, up: BoolArray, af: Array) -> None:
        psar[:, j] = np.where(up[:, 0], ps[:, 0], -ps[:, 0])
        trend[:, j] = up[:, 0]
        accel[:, j] = af[:, 0]

    if T > 2:
        _run(high, low, close, step, max_step, 1, T, record)
    return psar, trend, accel


def psar_windowed(
    high: Array, low: Array, close: Array, step: float, max_step: float, window: int, start: int
) -> tuple[Array, Array, Array]:
    """SAR, trend (+1 / -1) and acceleration at columns ``start..T-1``, each from its own path over
    the ``window`` bars ending there. Columns whose window reaches before column 0 are NaN."""
    n, T = close.shape
    m = T - start
    first = max(start, window - 1)
    if first >= T:
        return nan_block(n, m), nan_block(n, m), nan_block(n, m)
    b = first - window + 1  # first bar of the path of column ``first``
    ps, up, af = _run(high[:, b:], low[:, b:], close[:, b:], step, max_step, T - first, window)
    sign = np.where(up, 1.0, -1.0)
    outs = (ps * sign, sign, af)
    if first == start:
        return outs
    padded = []
    for x in outs:
        y = nan_block(n, m)
        y[:, first - start :] = x
        padded.append(y)
    return padded[0], padded[1], padded[2]
