"""Microstructure proxies from bars: illiquidity, spread estimators, price impact, efficiency,
variance ratios, return autocorrelation, candle anatomy."""

from __future__ import annotations

import math

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import Array, sdiv

KINDS = KindTable()

_CS_K = 3.0 - 2.0 * math.sqrt(2.0)


def corr(ctx: Ctx, x: Array, y: Array, xy: Array, x2: Array, y2: Array, w: int) -> Array:
    """Pearson correlation over ``w`` bars from running sums (inputs of comparable, small scale)."""
    inv = 1.0 / w
    mx, my = ctx.rsum(x, w) * inv, ctx.rsum(y, w) * inv
    cov = ctx.rsum(xy, w) * inv - mx * my
    vx = np.maximum(ctx.rsum(x2, w) * inv - mx * mx, 0.0)
    vy = np.maximum(ctx.rsum(y2, w) * inv - my * my, 0.0)
    return np.clip(sdiv(cov, np.sqrt(vx * vy), 0.0), -1.0, 1.0)


@KINDS.register
def amihud(ctx: Ctx, *, w: int, vol_w: int) -> Array:
    """Amihud illiquidity: mean |return| per unit of relative volume (volume / its ``vol_w`` mean)."""
    rel = sdiv(ctx.vol_mean(w), ctx.vol_mean(vol_w), 0.0)
    return sdiv(ctx.rmean(ctx.abs_r1, w), rel, 0.0)


@KINDS.register
def roll_spread(ctx: Ctx, *, w: int) -> Array:
    """Roll's spread: 2·sqrt(-cov(r_t, r_t-1)) when the autocovariance is negative, else 0."""
    r_prev = ctx.memo("r1_prev", lambda: ctx.lag(ctx.r1, 1, 0))
    prod = ctx.memo("r1*r1_prev", lambda: ctx.r1 * r_prev)
    inv = 1.0 / w
    cov = ctx.rsum(prod, w) * inv - (ctx.rsum(ctx.r1, w) * inv) * (ctx.rsum(r_prev, w) * inv)
    return 2.0 * np.sqrt(np.maximum(-cov, 0.0))


@KINDS.register
def cs_spread(ctx: Ctx, *, w: int) -> Array:
    """Corwin-Schultz high-low spread estimator (two-bar), floored at 0, averaged over ``w`` bars."""

    def make() -> Array:
        hl2 = ctx.hl * ctx.hl
        beta = hl2 + ctx.lag(hl2, 1, 0)
        hi = np.maximum(ctx.h, ctx.lag(ctx.h, 1, 0))
        lo = np.minimum(ctx.l, ctx.lag(ctx.l, 1, 0))
        gamma = np.log(hi / lo) ** 2
        alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / _CS_K - np.sqrt(gamma / _CS_K)
        ea = np.exp(alpha)
        return np.maximum(2.0 * (ea - 1.0) / (1.0 + ea), 0.0)

    return ctx.rmean(ctx.memo("cs_spread", make), w)


@KINDS.register
def kyle_lambda(ctx: Ctx, *, w: int) -> Array:
    """Slope of return on signed volume over ``w`` bars, times the window's mean volume (so that it
    reads as the return per average bar's volume, whatever the symbol's volume unit)."""
    x = ctx.memo("signed_v", lambda: np.sign(ctx.r1) * ctx.v)
    xy = ctx.memo("signed_v*r1", lambda: x * ctx.r1)
    x2 = ctx.memo("signed_v^2", lambda: x * x)
    inv = 1.0 / w
    mx, my = ctx.rsum(x, w) * inv, ctx.rsum(ctx.r1, w) * inv
    cov = ctx.rsum(xy, w) * inv - mx * my
    vx = np.maximum(ctx.rsum(x2, w) * inv - mx * mx, 0.0)
    return sdiv(cov, vx, 0.0) * ctx.vol_mean(w)


@KINDS.register
def efficiency(ctx: Ctx, *, w: int) -> Array:
    """Kaufman efficiency ratio: |net log move| / sum of |one-bar log moves| over ``w`` bars."""
    net = np.abs(ctx.tail(ctx.lc) - ctx.lag(ctx.lc, w))
    return sdiv(net, ctx.rsum(ctx.abs_r1, w), 0.0)


@KINDS.register
def body_eff(ctx: Ctx, *, w: int) -> Array:
    """Mean over ``w`` bars of |close - open| / (high - low)."""
    ratio = ctx.memo("body/range", lambda: sdiv(np.abs(ctx.c - ctx.o), ctx.h - ctx.l, 0.0))
    return ctx.rmean(ratio, w)


@KINDS.register
def var_ratio(ctx: Ctx, *, k: int, w: int) -> Array:
    """Lo-MacKinlay variance ratio: var of overlapping k-bar returns / (k · var of 1-bar returns)."""
    rk = ctx.lc - ctx.lag(ctx.lc, k, 0)
    inv = 1.0 / w
    mk = ctx.rsum(rk, w) * inv
    vk = ctx.rsum(rk * rk, w) * inv - mk * mk
    m1 = ctx.rsum(ctx.r1, w) * inv
    v1 = ctx.rsum(ctx.r1_sq, w) * inv - m1 * m1
    return sdiv(np.maximum(vk, 0.0), k * np.maximum(v1, 0.0), 1.0)


@KINDS.register
def autocorr(ctx: Ctx, *, lag: int, w: int) -> Array:
    y = ctx.memo(f"r1_lag{lag}", lambda: ctx.lag(ctx.r1, lag, 0))
    xy = ctx.memo(f"r1*r1_lag{lag}", lambda: ctx.r1 * y)
    return corr(ctx, ctx.r1, y, xy, ctx.r1_sq, y * y, w)


@KINDS.register
def up_frac(ctx: Ctx, *, w: int) -> Array:
    up = ctx.memo("up", lambda: (ctx.r1 > 0) + 0.0 * ctx.r1)
    return ctx.rmean(up, w)


@KINDS.register
def wick_ratio(ctx: Ctx, *, w: int) -> Array:
    """(upper wicks - lower wicks) / ranges, summed over ``w`` bars: rejection of highs vs lows."""

    def make() -> Array:
        top = np.maximum(ctx.o, ctx.c)
        bottom = np.minimum(ctx.o, ctx.c)
        return (ctx.h - top) - (bottom - ctx.l)

    net = ctx.memo("wick_net", make)
    rng = ctx.memo("h-l", lambda: ctx.h - ctx.l)
    return sdiv(ctx.rsum(net, w), ctx.rsum(rng, w), 0.0)


@KINDS.register
def clv_mean(ctx: Ctx, *, w: int) -> Array:
    return ctx.rmean(ctx.clv, w)
