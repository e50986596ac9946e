"""Rally and drawdown: distance from window extremes, largest drawdown and run-up inside a window,
time since the extreme, and the same moves in units of realised volatility."""

from __future__ import annotations

import math

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import Array, blank_before, lead, sdiv

KINDS = KindTable()


def _dd(ctx: Ctx, w: int) -> Array:
    return ctx.memo(f"dd:{w}", lambda: ctx.tail(ctx.lc) - ctx.rmax(ctx.lc, w))


def _ru(ctx: Ctx, w: int) -> Array:
    return ctx.memo(f"ru:{w}", lambda: ctx.tail(ctx.lc) - ctx.rmin(ctx.lc, w))


@KINDS.register
def dd(ctx: Ctx, *, w: int) -> Array:
    """log(close / highest close of ``w`` bars), <= 0."""
    return _dd(ctx, w)


@KINDS.register
def ru(ctx: Ctx, *, w: int) -> Array:
    """log(close / lowest close of ``w`` bars), >= 0."""
    return _ru(ctx, w)


@KINDS.register
def mdd(ctx: Ctx, *, w: int) -> Array:
    """Largest peak-to-trough log fall inside the last ``w`` closes (<= 0)."""
    view = ctx.win(ctx.lc, w)
    fall: Array = (view - np.maximum.accumulate(view, axis=-1)).min(axis=-1)
    return fall


@KINDS.register
def mru(ctx: Ctx, *, w: int) -> Array:
    """Largest trough-to-peak log rise inside the last ``w`` closes (>= 0)."""
    view = ctx.win(ctx.lc, w)
    rise: Array = (view - np.minimum.accumulate(view, axis=-1)).max(axis=-1)
    return rise


def _since(ctx: Ctx, x: Array, w: int, high: bool) -> Array:
    """Bars since the most recent extreme of the last ``w + 1`` bars, as a fraction of ``w``."""
    view = ctx.win(x, w + 1)[..., ::-1]
    pos = view.argmax(axis=-1) if high else view.argmin(axis=-1)
    return blank_before(pos.astype(np.float64) * (1.0 / w), lead(x) + w, ctx.s)


@KINDS.register
def since_high(ctx: Ctx, *, w: int) -> Array:
    return _since(ctx, ctx.h, w, True)


@KINDS.register
def since_low(ctx: Ctx, *, w: int) -> Array:
    return _since(ctx, ctx.l, w, False)


@KINDS.register
def dd_z(ctx: Ctx, *, w: int, vol_w: int) -> Array:
    return sdiv(_dd(ctx, w), ctx.rv(vol_w) * math.sqrt(w), 0.0)


@KINDS.register
def ru_z(ctx: Ctx, *, w: int, vol_w: int) -> Array:
    return sdiv(_ru(ctx, w), ctx.rv(vol_w) * math.sqrt(w), 0.0)
