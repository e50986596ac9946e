"""Finite-memory building blocks on ``[series, time]`` float64 arrays.

Conventions shared by every function here and in the indicator modules:

* A *full* series is ``[n, T]``; its first columns are NaN where its look-back is not yet filled
  (its "lead"). Every row of one call has the same lead, because the engine fills bad bars with
  finite values and masks them afterwards.
* ``start`` asks for output columns ``start..T-1`` only (the live path needs the newest 96 rows);
  the result is ``[n, T - start]``. Columns whose look-back reaches into the input's lead are NaN,
  so a feature's leading NaN count is exactly its warm-up (a test checks this).
* Recursive smoothers are truncated, renormalised finite-impulse filters (``Kernel``): the value at
  ``t`` is a function of a bounded window, which is what makes a long training history and the
  96 + warm-up live window give the same numbers.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

Array = npt.NDArray[np.float64]

NAN = float("nan")

# Two computed prices closer than this (relative) are a tie. Prices are decimals on a tick of
# at least 1e-6 of their level, so nothing real is that close, while arithmetic on the same
# decimals (h + l + c, differences) leaves noise of ~1e-16 whose sign depends on the scale.
TIE = 1e-10


def lead(x: Array) -> int:
    """Number of leading NaN columns (the same for every row by construction)."""
    if x.shape[1] and math.isfinite(x[0, 0]):
        return 0
    finite = np.isfinite(x[0])
    return int(finite.argmax()) if finite.any() else int(x.shape[1])


def sdiv(a: Array, b: Array, fill: float) -> Array:
    """``a / b`` with ``fill`` where ``b == 0``; NaN in ``a`` or ``b`` still propagates."""
    zero = b == 0
    if zero.any():
        return np.where(zero, fill + 0.0 * a, a / np.where(zero, 1.0, b))
    return a / b


def nan_block(n: int, m: int) -> Array:
    return np.full((n, m), NAN)


# -- filters -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """FIR weights: ``y[t] = sum_k weights[k] * x[t - k]``. ``key`` names it for caching."""

    key: str
    weights: tuple[float, ...]

    @property
    def taps(self) -> int:
        return len(self.weights)

    def array(self) -> Array:
        return np.asarray(self.weights, dtype=np.float64)


def ema_taps(alpha: float, tail: float = 1e-4, cap: int = 200) -> int:
    """Taps needed for the dropped tail weight ``(1 - alpha)**taps`` to fall below ``tail``."""
    return min(math.ceil(math.log(tail) / math.log(1.0 - alpha)), cap)


@cache
def ema_kernel(alpha: float, taps: int) -> Kernel:
    """Exponential weights ``alpha (1 - alpha)^k`` for ``k < taps``, divided by their sum."""
    k = np.arange(taps, dtype=np.float64)
    w = alpha * (1.0 - alpha) ** k
    w /= w.sum()
    return Kernel(f"ema({alpha!r},{taps})", tuple(float(x) for x in w))


def span_kernel(span: int, taps: int) -> Kernel:
    """The EMA of ``pandas.ewm(span=...)`` (alpha = 2 / (span + 1)), truncated."""
    return ema_kernel(2.0 / (span + 1.0), taps)


def wilder_kernel(n: int, taps: int) -> Kernel:
    """Wilder's smoothing (alpha = 1 / n), as in RSI, ATR and ADX, truncated."""
    return ema_kernel(1.0 / n, taps)


# A composed kernel's far taps are products of several tails; those whose combined weight is
# below this share of the total are dropped, so that the declared warm-up is a real dependence.
COMPOSE_TRIM = 1e-10


@cache
def compose(*kernels: Kernel) -> Kernel:
    """The filter that applies each kernel in turn (their convolution), far negligible taps dropped."""
    w = np.array([1.0])
    for k in kernels:
        w = np.convolve(w, k.array())
    mass = np.abs(w)
    tail = np.cumsum(mass[::-1])[::-1]  # tail[i]: weight of taps i and beyond
    keep = int(np.flatnonzero(tail > COMPOSE_TRIM * mass.sum())[-1]) + 1
    return Kernel("*".join(k.key for k in kernels), tuple(float(x) for x in w[:keep]))


@cache
def subtract(a: Kernel, b: Kernel) -> Kernel:
    n = max(a.taps, b.taps)
    w = np.zeros(n)
    w[: a.taps] += a.array()
    w[: b.taps] -= b.array()
    return Kernel(f"({a.key}-{b.key})", tuple(float(x) for x in w))


@cache
def increments_kernel(k: Kernel) -> Kernel:
    """Kernel on increments ``m`` equal to ``k`` applied to their running sum, when ``sum(k) == 0``.

    ``sum_j k_j S_{t-j}`` with ``S_{t-j} = S_t - sum_{i<j} m_{t-i}`` is ``-sum_i m_{t-i} sum_{j>i} k_j``:
    a zero-sum filter of a cumulative series (A/D line, OBV) has finite memory in the increments.
    """
    w = k.array()
    tail = -(np.cumsum(w[::-1])[::-1][1:])
    return Kernel(f"inc({k.key})", tuple(float(x) for x in tail))


@cache
def slope_kernel(w: int) -> Kernel:
    """Least-squares slope per bar of the last ``w`` values against time (newest at lag 0)."""
    x = np.arange(w, dtype=np.float64)[::-1]  # time of lag k, oldest = 0
    xc = x - x.mean()
    return Kernel(f"slope({w})", tuple(float(v) for v in xc / (xc * xc).sum()))


class _ToeplitzCache:
    """Banded matrices that apply a kernel to a slice of columns with one BLAS call (an LRU, safe
    to share between threads)."""

    def __init__(self, maxsize: int = 128) -> None:
        self._data: OrderedDict[tuple[str, int], Array] = OrderedDict()
        self._maxsize = maxsize
        self._lock = threading.Lock()

    def get(self, kernel: Kernel, m: int) -> Array:
        key = (kernel.key, m)
        with self._lock:
            mat = self._data.get(key)
            if mat is not None:
                self._data.move_to_end(key)
                return mat
        taps = kernel.taps
        rev = kernel.array()[::-1]
        mat = np.zeros((m + taps - 1, m))
        for j in range(m):
            mat[j : j + taps, j] = rev
        mat.flags.writeable = False
        with self._lock:
            self._data[key] = mat
            if len(self._data) > self._maxsize:
                self._data.popitem(last=False)
        return mat


TOEPLITZ = _ToeplitzCache()


def fir(x: Array, kernel: Kernel, start: int = 0, lead_x: int | None = None) -> Array:
    """Apply ``kernel`` along time; output columns ``start..T-1``."""
    n, T = x.shape
    a = lead(x) if lead_x is None else lead_x
    taps = kernel.taps
    first = max(start, a + taps - 1)
    if first >= T:
        return nan_block(n, T - start)
    mat = TOEPLITZ.get(kernel, T - first)
    y = x[:, first - taps + 1 :] @ mat
    if first == start:
        return y
    out = nan_block(n, T - start)
    out[:, first - start :] = y
    return out


# -- rolling windows -----------------------------------------------------------------------------------


def shift(x: Array, k: int, start: int = 0) -> Array:
    """``x[t - k]`` for output columns ``start..T-1``."""
    n, T = x.shape
    if start >= k:
        return x[:, start - k : T - k]
    out = nan_block(n, T - start)
    if k >= T:
        return out
    out[:, k - start :] = x[:, : T - k]
    return out


class Cumsum:
    """Prefix sums of a series from its first finite column, for any number of window sums."""

    __slots__ = ("a", "cs")

    def __init__(self, x: Array) -> None:
        self.a = lead(x)
        n = x.shape[0]
        cs = np.empty((n, x.shape[1] - self.a + 1))
        cs[:, 0] = 0.0
        np.cumsum(x[:, self.a :], axis=1, out=cs[:, 1:])
        self.cs = cs

    def window_sum(self, w: int, start: int = 0) -> Array:
        cs = self.cs
        n = cs.shape[0]
        T = cs.shape[1] - 1 + self.a
        first = max(start, self.a + w - 1)
        if first >= T:
            return nan_block(n, T - start)
        i = first + 1 - self.a
        y = cs[:, i:] - cs[:, i - w : T + 1 - self.a - w]
        if first == start:
            return y
        out = nan_block(n, T - start)
        out[:, first - start :] = y
        return out


class SparseTable:
    """Running max (or min) over power-of-two windows; any window is the max of two of them."""

    __slots__ = ("levels", "op")

    def __init__(self, x: Array, op: np.ufunc) -> None:
        self.op = op
        self.levels: list[Array] = [x]

    def _level(self, j: int) -> Array:
        while len(self.levels) <= j:
            prev = self.levels[-1]
            d = 1 << (len(self.levels) - 1)
            nxt = np.empty_like(prev)
            nxt[:, :d] = NAN
            self.op(prev[:, d:], prev[:, :-d], out=nxt[:, d:])
            self.levels.append(nxt)
        return self.levels[j]

    def query(self, w: int, start: int = 0) -> Array:
        j = w.bit_length() - 1
        k = 1 << j
        lev = self._level(j)
        if k == w:
            return lev[:, start:]
        combined: Array = self.op(lev[:, start:], shift(lev, w - k, start))
        return combined


def windows(x: Array, w: int, start: int = 0) -> npt.NDArray[np.float64]:
    """Read-only view ``[n, T - start, w]`` of each output column's trailing window (oldest first)."""
    n = x.shape[0]
    lo = start - w + 1
    if lo < 0:
        x = np.concatenate([np.full((n, -lo), NAN), x], axis=1)
        lo = 0
    return sliding_window_view(x[:, lo:], w, axis=1)


def blank_before(out: Array, first: int, start: int) -> Array:
    """Set output columns before absolute column ``first`` to NaN (for reductions that skip NaN)."""
    if first > start:
        out[:, : min(first - start, out.shape[1])] = NAN
    return out
