"""Realised-volatility regimes: close-to-close and range-based estimators, their ratios and ranks,
semi-deviations, higher moments, volatility of volatility, jumps."""

from __future__ import annotations

import math

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import Array, blank_before, lead, sdiv, wilder_kernel

KINDS = KindTable()

_LN2 = math.log(2.0)


@KINDS.register
def rv(ctx: Ctx, *, w: int) -> Array:
    return ctx.rv(w)


@KINDS.register
def parkinson(ctx: Ctx, *, w: int) -> Array:
    hl2 = ctx.memo("hl^2", lambda: ctx.hl * ctx.hl)
    return np.sqrt(ctx.rmean(hl2, w) * (1.0 / (4.0 * _LN2)))


def _oc(ctx: Ctx) -> Array:
    return ctx.memo("log(c/o)", lambda: np.log(ctx.c / ctx.o))


@KINDS.register
def garman_klass(ctx: Ctx, *, w: int) -> Array:
    def make() -> Array:
        oc = _oc(ctx)
        return 0.5 * ctx.hl * ctx.hl - (2.0 * _LN2 - 1.0) * oc * oc

    return np.sqrt(np.maximum(ctx.rmean(ctx.memo("gk", make), w), 0.0))


def _rs_term(ctx: Ctx) -> Array:
    def make() -> Array:
        lh, ll = np.log(ctx.h), np.log(ctx.l)
        lo, lc = np.log(ctx.o), ctx.lc
        term: Array = (lh - lc) * (lh - lo) + (ll - lc) * (ll - lo)
        return term

    return ctx.memo("rs", make)


@KINDS.register
def rogers_satchell(ctx: Ctx, *, w: int) -> Array:
    return np.sqrt(np.maximum(ctx.rmean(_rs_term(ctx), w), 0.0))


@KINDS.register
def yang_zhang(ctx: Ctx, *, w: int) -> Array:
    """Yang-Zhang: overnight (open vs previous close) + k·open-to-close + (1-k)·Rogers-Satchell."""
    ro = ctx.memo("log(o/c_prev)", lambda: np.log(ctx.o / ctx.c_prev))
    rc = _oc(ctx)
    ro2 = ctx.memo("ro^2", lambda: ro * ro)
    rc2 = ctx.memo("rc^2", lambda: rc * rc)

    def sample_var(x: Array, x2: Array) -> Array:
        s1 = ctx.rsum(x, w)
        return np.maximum(ctx.rsum(x2, w) - s1 * s1 * (1.0 / w), 0.0) * (1.0 / (w - 1))

    k = 0.34 / (1.34 + (w + 1.0) / (w - 1.0))
    var_o = sample_var(ro, ro2)
    var_c = sample_var(rc, rc2)
    # The overnight term needs the previous close, so every term uses the same w bars from t-w+1.
    rs = ctx.rmean(_rs_term(ctx), w)
    return np.sqrt(np.maximum(var_o + k * var_c + (1.0 - k) * rs, 0.0))


@KINDS.register
def rv_ratio(ctx: Ctx, *, fast: int, slow: int) -> Array:
    return sdiv(ctx.rv(fast), ctx.rv(slow), 1.0)


def _pct_rank(ctx: Ctx, x: Array, w: int) -> Array:
    """Share of the last ``w`` values (the current one included) strictly below the current one."""
    view = ctx.win(x, w)
    cur = ctx.tail(x)
    out = (view < cur[..., None]).mean(axis=-1)
    return blank_before(out, lead(x) + w - 1, ctx.s)


@KINDS.register
def rv_pct(ctx: Ctx, *, rv_w: int, w: int) -> Array:
    rvf = ctx.full(ctx.rv(rv_w, max(0, ctx.s - w + 1)))
    return _pct_rank(ctx, rvf, w)


@KINDS.register
def range_pct(ctx: Ctx, *, w: int) -> Array:
    return _pct_rank(ctx, ctx.hl, w)


@KINDS.register
def downside_vol(ctx: Ctx, *, w: int) -> Array:
    neg = ctx.memo("r1-^2", lambda: np.minimum(ctx.r1, 0.0) ** 2)
    return np.sqrt(ctx.rmean(neg, w))


@KINDS.register
def upside_vol(ctx: Ctx, *, w: int) -> Array:
    pos = ctx.memo("r1+^2", lambda: np.maximum(ctx.r1, 0.0) ** 2)
    return np.sqrt(ctx.rmean(pos, w))


def _moments(ctx: Ctx, w: int) -> tuple[Array, Array, Array]:
    """Central moments 2, 3, 4 of one-bar log returns over ``w`` bars."""

    def make() -> tuple[Array, Array, Array]:
        r = ctx.r1
        r3 = ctx.memo("r1^3", lambda: ctx.r1_sq * r)
        r4 = ctx.memo("r1^4", lambda: ctx.r1_sq * ctx.r1_sq)
        inv = 1.0 / w
        mu = ctx.rsum(r, w) * inv
        e2 = ctx.rsum(ctx.r1_sq, w) * inv
        e3 = ctx.rsum(r3, w) * inv
        e4 = ctx.rsum(r4, w) * inv
        mu2 = mu * mu
        m2 = np.maximum(e2 - mu2, 0.0)
        m3 = e3 - 3.0 * mu * e2 + 2.0 * mu2 * mu
        m4 = e4 - 4.0 * mu * e3 + 6.0 * mu2 * e2 - 3.0 * mu2 * mu2
        return m2, m3, m4

    return ctx.memo_any(f"moments:{w}", make)  # type: ignore[return-value]


@KINDS.register
def skew(ctx: Ctx, *, w: int) -> Array:
    m2, m3, _ = _moments(ctx, w)
    return sdiv(m3, m2 * np.sqrt(m2), 0.0)


@KINDS.register
def kurt(ctx: Ctx, *, w: int) -> Array:
    """Excess kurtosis."""
    m2, _, m4 = _moments(ctx, w)
    return sdiv(m4, m2 * m2, 3.0) - 3.0


@KINDS.register
def vol_of_vol(ctx: Ctx, *, rv_w: int, w: int) -> Array:
    """Coefficient of variation of the ``rv_w``-bar realised volatility over ``w`` bars."""
    rvf = ctx.full(ctx.rv(rv_w, max(0, ctx.s - w + 1)))
    mean = ctx.rmean(rvf, w)
    var = np.maximum(ctx.rmean(rvf * rvf, w) - mean * mean, 0.0)
    return sdiv(np.sqrt(var), mean, 0.0)


@KINDS.register
def jump_ratio(ctx: Ctx, *, w: int) -> Array:
    """Bipower variation / realised variance: below 1 when a few jumps carry the variance."""
    bp = ctx.memo("|r1||r1_prev|", lambda: ctx.abs_r1 * ctx.lag(ctx.abs_r1, 1, 0))
    return sdiv(ctx.rmean(bp, w) * (math.pi / 2.0), ctx.rmean(ctx.r1_sq, w), 1.0)


@KINDS.register
def atr_ratio(ctx: Ctx, *, fast: int, slow: int, taps_fast: int, taps_slow: int) -> Array:
    fast_atr = ctx.memo(f"atr:{fast}:{taps_fast}", lambda: ctx.fir(ctx.tr, wilder_kernel(fast, taps_fast)))
    slow_atr = ctx.memo(f"atr:{slow}:{taps_slow}", lambda: ctx.fir(ctx.tr, wilder_kernel(slow, taps_slow)))
    return sdiv(fast_atr, slow_atr, 1.0)
