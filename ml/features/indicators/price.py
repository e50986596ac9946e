"""Price and volume basics: log returns, bar shape, relative range, distance to VWAP."""

from __future__ import annotations

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import Array, sdiv

KINDS = KindTable()


@KINDS.register
def ret(ctx: Ctx, *, k: int) -> Array:
    return ctx.tail(ctx.lc) - ctx.lag(ctx.lc, k)


@KINDS.register
def body_frac(ctx: Ctx) -> Array:
    """(close - open) / (high - low): signed share of the range the bar's body covers; 0 if no range.

    Not log(close / open): with 1-minute candles the open is (almost) the previous close, so that
    would repeat ret_1.
    """
    o, h, l, c = ctx.tail(ctx.o), ctx.tail(ctx.h), ctx.tail(ctx.l), ctx.tail(ctx.c)  # noqa: E741
    return sdiv(c - o, h - l, 0.0)


@KINDS.register
def range_hl(ctx: Ctx) -> Array:
    return ctx.tail(ctx.hl)


@KINDS.register
def wick_up(ctx: Ctx) -> Array:
    return np.log(ctx.tail(ctx.h) / np.maximum(ctx.tail(ctx.o), ctx.tail(ctx.c)))


@KINDS.register
def wick_dn(ctx: Ctx) -> Array:
    return np.log(np.minimum(ctx.tail(ctx.o), ctx.tail(ctx.c)) / ctx.tail(ctx.l))


@KINDS.register
def clv(ctx: Ctx) -> Array:
    return ctx.tail(ctx.clv)


@KINDS.register
def range_rel(ctx: Ctx, *, w: int) -> Array:
    return sdiv(ctx.tail(ctx.hl), ctx.rmean(ctx.hl, w), 1.0)


@KINDS.register
def vwap_dist(ctx: Ctx, *, w: int) -> Array:
    """log(close / VWAP) over ``w`` bars (typical price); 0 when the window traded nothing."""
    pv = ctx.memo("tp*v", lambda: ctx.tp * ctx.v)
    num = ctx.rsum(pv, w)
    den = ctx.rsum(ctx.v, w)
    return np.log(sdiv(ctx.tail(ctx.c) * den, num, 1.0))
