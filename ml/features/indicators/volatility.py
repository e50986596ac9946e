"""Volatility: normalised ATR, Bollinger, Keltner, Donchian, Ulcer index."""

from __future__ import annotations

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import Array, sdiv, wilder_kernel

KINDS = KindTable()


def atr(ctx: Ctx, n: int, taps: int) -> Array:
    """Wilder's average true range (normalised price units) at the output columns."""
    return ctx.memo(f"atr:{n}:{taps}", lambda: ctx.fir(ctx.tr, wilder_kernel(n, taps)))


@KINDS.register
def natr(ctx: Ctx, *, n: int, taps: int) -> Array:
    return atr(ctx, n, taps) / ctx.tail(ctx.c)


def _bollinger(ctx: Ctx, w: int) -> tuple[Array, Array]:
    """Window mean and population standard deviation of the close, by two passes over the window
    (a running sum of squares would lose digits to cancellation on a flat price)."""

    def make() -> tuple[Array, Array]:
        view = ctx.win(ctx.c, w)
        mean = view.mean(axis=-1)
        dev = view - mean[..., None]
        std = np.sqrt(np.einsum("ijk,ijk->ij", dev, dev) * (1.0 / w))
        return mean, std

    return ctx.memo_any(f"bb:{w}", make)  # type: ignore[return-value]


@KINDS.register
def bb_pband(ctx: Ctx, *, w: int, dev: int) -> Array:
    mean, std = _bollinger(ctx, w)
    return sdiv(ctx.tail(ctx.c) - (mean - dev * std), 2.0 * dev * std, 0.5)


@KINDS.register
def bb_wband(ctx: Ctx, *, w: int, dev: int) -> Array:
    mean, std = _bollinger(ctx, w)
    return 2.0 * dev * std / mean


def _keltner(ctx: Ctx, w: int) -> tuple[Array, Array, Array]:
    """The original Keltner channel as ``ta`` computes it (``original_version=True``)."""

    def make() -> tuple[Array, Array, Array]:
        mid = ctx.rmean(ctx.tp, w)
        hb = ctx.rmean((4.0 * ctx.h - 2.0 * ctx.l + ctx.c) * (1.0 / 3.0), w)
        lb = ctx.rmean((-2.0 * ctx.h + 4.0 * ctx.l + ctx.c) * (1.0 / 3.0), w)
        return mid, hb, lb

    return ctx.memo_any(f"kc:{w}", make)  # type: ignore[return-value]


@KINDS.register
def kc_pband(ctx: Ctx, *, w: int) -> Array:
    _, hb, lb = _keltner(ctx, w)
    return sdiv(ctx.tail(ctx.c) - lb, hb - lb, 0.5)


@KINDS.register
def kc_wband(ctx: Ctx, *, w: int) -> Array:
    mid, hb, lb = _keltner(ctx, w)
    return (hb - lb) / mid


@KINDS.register
def bb_kc_squeeze(ctx: Ctx, *, w: int, dev: int) -> Array:
    """Bollinger width / Keltner width: below 1 the bands are inside the channel (a squeeze)."""
    _, std = _bollinger(ctx, w)
    _, hb, lb = _keltner(ctx, w)
    return sdiv(2.0 * dev * std, hb - lb, 1.0)


def _donchian(ctx: Ctx, w: int) -> tuple[Array, Array]:
    return ctx.memo_any(  # type: ignore[return-value]
        f"dc:{w}", lambda: (ctx.rmax(ctx.h, w), ctx.rmin(ctx.l, w))
    )


@KINDS.register
def dc_pband(ctx: Ctx, *, w: int) -> Array:
    hh, ll = _donchian(ctx, w)
    return sdiv(ctx.tail(ctx.c) - ll, hh - ll, 0.5)


@KINDS.register
def dc_wband(ctx: Ctx, *, w: int) -> Array:
    hh, ll = _donchian(ctx, w)
    return (hh - ll) / ctx.rmean(ctx.c, w)


@KINDS.register
def ulcer(ctx: Ctx, *, w: int) -> Array:
    """Ulcer index as a fraction: RMS over ``w`` bars of the drawdown from the ``w``-bar high."""
    st = max(0, ctx.s - w + 1)
    dd = ctx.full(ctx.c[:, st:] / ctx.rmax(ctx.c, w, st) - 1.0)
    return np.sqrt(ctx.rmean(dd * dd, w))
