"""Momentum: RSI, Stochastic, StochRSI, Williams %R, ROC, CCI, Ultimate, MFI, Awesome, TSI, CMO.

Oscillators that ``ta`` reports in percent are fractions here (RSI 0.7, not 70).
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import TIE, Array, compose, sdiv, span_kernel, wilder_kernel

KINDS = KindTable()


def _rsi(ctx: Ctx, n: int, taps: int, start: int) -> Array:
    def make() -> Array:
        up = np.maximum(ctx.dc, 0.0)  # np.maximum keeps the NaN of column 0
        dn = np.maximum(-ctx.dc, 0.0)
        su, sd = ctx.fir_many([up, dn], wilder_kernel(n, taps), start)
        return sdiv(su, su + sd, 0.5)

    return ctx.memo(f"rsi:{n}:{taps}:{start}", make)


@KINDS.register
def rsi(ctx: Ctx, *, n: int, taps: int) -> Array:
    """Wilder's RSI: smoothed gains / (smoothed gains + smoothed losses)."""
    return _rsi(ctx, n, taps, ctx.s)


def _stoch(ctx: Ctx, w: int, start: int) -> Array:
    def make() -> Array:
        hh = ctx.rmax(ctx.h, w, start)
        ll = ctx.rmin(ctx.l, w, start)
        return sdiv(ctx.c[:, start:] - ll, hh - ll, 0.5)

    return ctx.memo(f"stoch:{w}:{start}", make)


@KINDS.register
def stoch_k(ctx: Ctx, *, w: int) -> Array:
    return _stoch(ctx, w, ctx.s)


@KINDS.register
def stoch_d(ctx: Ctx, *, w: int, smooth: int) -> Array:
    return ctx.rmean(ctx.full(_stoch(ctx, w, max(0, ctx.s - smooth + 1))), smooth)


def _stochrsi(ctx: Ctx, n: int, taps: int, w: int, smooth1: int, smooth2: int) -> tuple[Array, Array, Array]:
    def make() -> tuple[Array, Array, Array]:
        s = ctx.s
        back = smooth1 - 1 + smooth2 - 1
        r = ctx.full(_rsi(ctx, n, taps, max(0, s - back - w + 1)))
        st = max(0, s - back)
        lo = ctx.rmin(r, w, st)
        hi = ctx.rmax(r, w, st)
        srsi = ctx.full(sdiv(r[:, st:] - lo, hi - lo, 0.5))
        k = ctx.full(ctx.rmean(srsi, smooth1, max(0, s - smooth2 + 1)))
        return ctx.tail(srsi), ctx.tail(k), ctx.rmean(k, smooth2)

    return ctx.memo_any(f"stochrsi:{n}:{taps}:{w}:{smooth1}:{smooth2}", make)  # type: ignore[return-value]


@KINDS.register
def stochrsi(ctx: Ctx, *, n: int, taps: int, w: int, smooth1: int, smooth2: int) -> Array:
    return _stochrsi(ctx, n, taps, w, smooth1, smooth2)[0]


@KINDS.register
def stochrsi_k(ctx: Ctx, *, n: int, taps: int, w: int, smooth1: int, smooth2: int) -> Array:
    return _stochrsi(ctx, n, taps, w, smooth1, smooth2)[1]


@KINDS.register
def stochrsi_d(ctx: Ctx, *, n: int, taps: int, w: int, smooth1: int, smooth2: int) -> Array:
    return _stochrsi(ctx, n, taps, w, smooth1, smooth2)[2]


@KINDS.register
def willr(ctx: Ctx, *, w: int) -> Array:
    """Williams %R as a fraction in [-1, 0]."""
    hh = ctx.rmax(ctx.h, w)
    ll = ctx.rmin(ctx.l, w)
    return -sdiv(hh - ctx.tail(ctx.c), hh - ll, 0.5)


@KINDS.register
def roc(ctx: Ctx, *, n: int) -> Array:
    return ctx.tail(ctx.c) / ctx.lag(ctx.c, n) - 1.0


@KINDS.register
def cci(ctx: Ctx, *, w: int) -> Array:
    """Commodity channel index / 100: (tp - SMA) / (0.015 · mean absolute deviation)."""
    view = ctx.win(ctx.tp, w)
    mean = view.mean(axis=-1)
    mad = np.abs(view - mean[..., None]).mean(axis=-1)
    return sdiv(ctx.tail(ctx.tp) - mean, 0.015 * mad, 0.0) * 0.01


@KINDS.register
def uo(ctx: Ctx, *, w1: int, w2: int, w3: int) -> Array:
    """Ultimate oscillator (weights 4, 2, 1) as a fraction."""
    bp = ctx.c - np.minimum(ctx.l, ctx.c_prev)
    total = np.zeros((ctx.n, ctx.m))
    for weight, w in ((4.0, w1), (2.0, w2), (1.0, w3)):
        total += weight * sdiv(ctx.rsum(bp, w), ctx.rsum(ctx.tr, w), 0.5)
    return total / 7.0


@KINDS.register
def mfi(ctx: Ctx, *, w: int) -> Array:
    """Money flow index as a fraction: up-flow / (up-flow + down-flow) of typical price × volume."""

    def flows() -> tuple[Array, Array]:
        # A typical price within TIE of the previous one is unchanged: its flow counts neither
        # way (ta lets float noise decide, which also makes the result depend on the price scale).
        tp = ctx.tp
        step = tp - ctx.lag(tp, 1, 0)
        tol = TIE * tp
        flow = tp * ctx.v
        zero = 0.0 * step
        return np.where(step > tol, flow, zero), np.where(step < -tol, flow, zero)

    pos, neg = cast(tuple[Array, Array], ctx.memo_any("money_flow", flows))
    p = ctx.rsum(pos, w)
    q = ctx.rsum(neg, w)
    return sdiv(p, p + q, 0.5)


@KINDS.register
def ao(ctx: Ctx, *, fast: int, slow: int) -> Array:
    """Awesome oscillator / close: SMA(fast) - SMA(slow) of the median price."""
    mp = ctx.memo("median_price", lambda: (ctx.h + ctx.l) * 0.5)
    return (ctx.rmean(mp, fast) - ctx.rmean(mp, slow)) / ctx.tail(ctx.c)


@KINDS.register
def tsi(ctx: Ctx, *, slow: int, fast: int, taps_slow: int, taps_fast: int) -> Array:
    """True strength index as a fraction; the double EMA is one composed kernel."""
    k = compose(span_kernel(slow, taps_slow), span_kernel(fast, taps_fast))
    num, den = ctx.fir_many([ctx.dc, np.abs(ctx.dc)], k)
    return sdiv(num, den, 0.0)


@KINDS.register
def mom_z(ctx: Ctx, *, k: int, vol_w: int) -> Array:
    """k-bar log return in units of the ``vol_w``-bar realised volatility scaled to k bars."""
    ret = ctx.tail(ctx.lc) - ctx.lag(ctx.lc, k)
    return sdiv(ret, ctx.rv(vol_w) * math.sqrt(k), 0.0)


@KINDS.register
def cmo(ctx: Ctx, *, w: int) -> Array:
    """Chande momentum oscillator: (gains - losses) / (gains + losses) over plain sums."""
    up = ctx.memo("gain", lambda: np.maximum(ctx.dc, 0.0))
    dn = ctx.memo("loss", lambda: np.maximum(-ctx.dc, 0.0))
    su = ctx.rsum(up, w)
    sd = ctx.rsum(dn, w)
    return sdiv(su - sd, su + sd, 0.0)
