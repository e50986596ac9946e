"""Per-call state of the engine: the bars of one batch of series and memoised intermediates."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ml.features import kernels as K  # noqa: N812
from ml.features.kernels import Array, Kernel


class Ctx:
    """Bars ``[n, T]`` (finite everywhere, prices divided by a per-series reference) and caches.

    Feature functions return the output columns ``s..T-1`` (``[n, T - s]``); intermediates that a
    later window consumes are computed from an earlier column (``s - lookback``) or in full.
    Prices are divided by the series' newest close and volumes by their mean over the block: every
    feature is scale-free, so this changes nothing but rounding, and it keeps sums of squares and
    the division guards well conditioned for a coin at 90,000 and one at 0.0001 alike.
    """

    def __init__(
        self,
        o: Array,
        h: Array,
        l: Array,  # noqa: E741
        c: Array,
        v: Array,
        end_ms: npt.NDArray[np.int64],
        start: int,
    ) -> None:
        self.n, self.T = c.shape
        self.s = start
        self.m = self.T - start
        # Unnormalised prices for the Parabolic SAR: its path turns on comparisons of prices with
        # a computed SAR, so it runs on the same numbers as ta (the reference test is exact).
        self.raw_h, self.raw_l, self.raw_c = h, l, c
        ref = c[:, -1:]
        self.o = o / ref
        self.h = h / ref
        self.l = l / ref
        self.c = c / ref
        vref = v.mean(axis=1, keepdims=True)
        self.v = v / np.where(vref > 0, vref, 1.0)
        self.end_ms = end_ms
        self._memo: dict[str, object] = {}
        self._cums: dict[int, tuple[Array, K.Cumsum]] = {}
        self._tables: dict[tuple[int, str], tuple[Array, K.SparseTable]] = {}

    # -- memo -------------------------------------------------------------------------------------------

    def memo(self, key: str, fn: Callable[[], Array]) -> Array:
        hit = self._memo.get(key)
        if hit is None:
            hit = fn()
            self._memo[key] = hit
        return hit  # type: ignore[return-value]

    def memo_any(self, key: str, fn: Callable[[], object]) -> object:
        hit = self._memo.get(key)
        if hit is None:
            hit = fn()
            self._memo[key] = hit
        return hit

    # -- windows ------------------------------------------------------------------------------------

    def _st(self, start: int | None) -> int:
        return self.s if start is None else start

    def tail(self, x: Array) -> Array:
        return x[:, self.s :]

    def lag(self, x: Array, k: int, start: int | None = None) -> Array:
        return K.shift(x, k, self._st(start))

    def rsum(self, x: Array, w: int, start: int | None = None) -> Array:
        hit = self._cums.get(id(x))
        if hit is None:
            hit = (x, K.Cumsum(x))
            self._cums[id(x)] = hit
        return hit[1].window_sum(w, self._st(start))

    def rmean(self, x: Array, w: int, start: int | None = None) -> Array:
        return self.rsum(x, w, start) * (1.0 / w)

    def _table(self, x: Array, op: np.ufunc) -> K.SparseTable:
        key = (id(x), op.__name__)
        hit = self._tables.get(key)
        if hit is None:
            hit = (x, K.SparseTable(x, op))
            self._tables[key] = hit
        return hit[1]

    def rmax(self, x: Array, w: int, start: int | None = None) -> Array:
        return self._table(x, np.maximum).query(w, self._st(start))

    def rmin(self, x: Array, w: int, start: int | None = None) -> Array:
        return self._table(x, np.minimum).query(w, self._st(start))

    def fir(self, x: Array, kernel: Kernel, start: int | None = None) -> Array:
        return K.fir(x, kernel, self._st(start))

    def fir_many(self, xs: list[Array], kernel: Kernel, start: int | None = None) -> list[Array]:
        """One matrix product for several series with the same kernel and the same lead."""
        stacked = K.fir(np.concatenate(xs, axis=0), kernel, self._st(start))
        return list(np.split(stacked, len(xs), axis=0))

    def win(self, x: Array, w: int, start: int | None = None) -> npt.NDArray[np.float64]:
        return K.windows(x, w, self._st(start))

    def full(self, x: Array) -> Array:
        """Pad a tail ``[n, m]`` back to ``[n, T]`` with NaN for windows over a derived tail."""
        if x.shape[1] == self.T:
            return x
        out = np.full((self.n, self.T), np.nan)
        out[:, self.T - x.shape[1] :] = x
        return out

    # -- base series ----------------------------------------------------------------------------------

    @property
    def lc(self) -> Array:
        """log close."""
        return self.memo("lc", lambda: np.log(self.c))

    @property
    def r1(self) -> Array:
        """One-bar log return (NaN in column 0)."""

        def make() -> Array:
            lc = self.lc
            out = np.empty_like(lc)
            out[:, 0] = np.nan
            np.subtract(lc[:, 1:], lc[:, :-1], out=out[:, 1:])
            return out

        return self.memo("r1", make)

    @property
    def c_prev(self) -> Array:
        return self.memo("c_prev", lambda: K.shift(self.c, 1, 0))

    @property
    def dc(self) -> Array:
        """Close-to-close change in (normalised) price units."""
        return self.memo("dc", lambda: self.c - self.c_prev)

    @property
    def tr(self) -> Array:
        """True range (needs the previous close, so NaN in column 0)."""
        return self.memo("tr", lambda: np.maximum(self.h, self.c_prev) - np.minimum(self.l, self.c_prev))

    @property
    def tp(self) -> Array:
        """Typical price."""
        return self.memo("tp", lambda: (self.h + self.l + self.c) * (1.0 / 3.0))

    @property
    def hl(self) -> Array:
        """log(high / low)."""
        return self.memo("hl", lambda: np.log(self.h / self.l))

    @property
    def clv(self) -> Array:
        """Close location value in [-1, 1]; 0 on a bar without range."""
        return self.memo("clv", lambda: K.sdiv((self.c - self.l) - (self.h - self.c), self.h - self.l, 0.0))

    @property
    def abs_r1(self) -> Array:
        return self.memo("abs_r1", lambda: np.abs(self.r1))

    @property
    def r1_sq(self) -> Array:
        return self.memo("r1_sq", lambda: self.r1 * self.r1)

    def vol_mean(self, w: int, start: int | None = None) -> Array:
        """Mean volume over ``w`` bars (the scale-free denominator of the volume features)."""
        st = self._st(start)
        return self.memo(f"vmean:{w}:{st}", lambda: self.rmean(self.v, w, st))

    def rv(self, w: int, start: int | None = None) -> Array:
        """Realised volatility: root mean square one-bar log return over ``w`` bars."""
        st = self._st(start)
        return self.memo(f"rv:{w}:{st}", lambda: np.sqrt(self.rmean(self.r1_sq, w, st)))
