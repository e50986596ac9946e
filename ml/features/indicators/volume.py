"""Volume: relative volume, OBV and A/D as windowed flows, CMF, Chaikin, force index, PVO, VPT.

Raw volume differs by a factor of a million across symbols, so every feature is a ratio of volumes
or a flow divided by the volume that carried it. Cumulative lines (OBV, A/D, VPT) have infinite
memory; their changes over a window are the same numbers without it.
"""

from __future__ import annotations

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import Array, increments_kernel, sdiv, span_kernel, subtract

KINDS = KindTable()


@KINDS.register
def vol_ratio(ctx: Ctx, *, fast: int, slow: int) -> Array:
    return sdiv(ctx.vol_mean(fast), ctx.vol_mean(slow), 1.0)


@KINDS.register
def vol_z(ctx: Ctx, *, w: int) -> Array:
    mean = ctx.vol_mean(w)
    v2 = ctx.memo("v*v", lambda: ctx.v * ctx.v)
    std = np.sqrt(np.maximum(ctx.rmean(v2, w) - mean * mean, 0.0))
    return sdiv(ctx.tail(ctx.v) - mean, std, 0.0)


@KINDS.register
def obv_slope(ctx: Ctx, *, w: int) -> Array:
    """OBV change over ``w`` bars / volume over those bars, in [-1, 1] (``ta``'s sign rule:
    volume counts as selling only when the close fell)."""
    signed = ctx.memo("obv_flow", lambda: np.where(ctx.c < ctx.c_prev, -ctx.v, ctx.v) + 0.0 * ctx.c_prev)
    return sdiv(ctx.rsum(signed, w), ctx.rsum(ctx.v, w), 0.0)


def _ad_flow(ctx: Ctx) -> Array:
    """Accumulation/distribution increment: close location value × volume."""
    return ctx.memo("ad_flow", lambda: ctx.clv * ctx.v)


@KINDS.register
def cmf(ctx: Ctx, *, w: int) -> Array:
    """Chaikin money flow: A/D line change over ``w`` bars / volume over those bars."""
    return sdiv(ctx.rsum(_ad_flow(ctx), w), ctx.rsum(ctx.v, w), 0.0)


@KINDS.register
def chaikin_osc(ctx: Ctx, *, fast: int, slow: int, taps_fast: int, taps_slow: int, vol_w: int) -> Array:
    """EMA(fast) - EMA(slow) of the A/D line / mean volume, as a finite filter of its increments."""
    k = increments_kernel(subtract(span_kernel(fast, taps_fast), span_kernel(slow, taps_slow)))
    return sdiv(ctx.fir(_ad_flow(ctx), k), ctx.vol_mean(vol_w), 0.0)


@KINDS.register
def force(ctx: Ctx, *, span: int, taps: int, vol_w: int) -> Array:
    """Force index (EMA of price change × volume) / (close × mean volume)."""
    flow = ctx.memo("dc*v", lambda: ctx.dc * ctx.v)
    fi = ctx.fir(flow, span_kernel(span, taps))
    return sdiv(fi, ctx.tail(ctx.c) * ctx.vol_mean(vol_w), 0.0)


def _pvo_line(ctx: Ctx, fast: int, slow: int, taps_fast: int, taps_slow: int, start: int) -> Array:
    ks = span_kernel(slow, taps_slow)
    diff = subtract(span_kernel(fast, taps_fast), ks)
    return ctx.memo(
        f"pvo:{fast}:{slow}:{start}",
        lambda: sdiv(ctx.fir(ctx.v, diff, start), ctx.fir(ctx.v, ks, start), 0.0),
    )


@KINDS.register
def pvo(
    ctx: Ctx,
    *,
    fast: int,
    slow: int,
    signal: int,  # noqa: ARG001 - see the docstring
    taps_fast: int,
    taps_slow: int,
    taps_signal: int,  # noqa: ARG001 - see the docstring
) -> Array:
    """Percentage volume oscillator as a fraction: (EMA fast - EMA slow) / EMA slow of volume.

    The signal parameters belong to the family's one parameter set (passed by keyword and hashed
    into the spec); only pvo_signal and pvo_hist use them."""
    return _pvo_line(ctx, fast, slow, taps_fast, taps_slow, ctx.s)


def _pvo_signal(
    ctx: Ctx, fast: int, slow: int, signal: int, taps_fast: int, taps_slow: int, taps_signal: int
) -> Array:
    def make() -> Array:
        line = ctx.full(_pvo_line(ctx, fast, slow, taps_fast, taps_slow, max(0, ctx.s - taps_signal + 1)))
        return ctx.fir(line, span_kernel(signal, taps_signal))

    return ctx.memo(f"pvo_signal:{fast}:{slow}:{signal}", make)


@KINDS.register
def pvo_signal(
    ctx: Ctx, *, fast: int, slow: int, signal: int, taps_fast: int, taps_slow: int, taps_signal: int
) -> Array:
    return _pvo_signal(ctx, fast, slow, signal, taps_fast, taps_slow, taps_signal)


@KINDS.register
def pvo_hist(
    ctx: Ctx, *, fast: int, slow: int, signal: int, taps_fast: int, taps_slow: int, taps_signal: int
) -> Array:
    line = _pvo_line(ctx, fast, slow, taps_fast, taps_slow, ctx.s)
    return line - _pvo_signal(ctx, fast, slow, signal, taps_fast, taps_slow, taps_signal)


@KINDS.register
def vpt_slope(ctx: Ctx, *, w: int) -> Array:
    """Volume-price trend change over ``w`` bars / volume: the volume-weighted mean simple return."""
    flow = ctx.memo("vpt_flow", lambda: (ctx.c / ctx.c_prev - 1.0) * ctx.v)
    return sdiv(ctx.rsum(flow, w), ctx.rsum(ctx.v, w), 0.0)


@KINDS.register
def flow_imbalance(ctx: Ctx, *, w: int) -> Array:
    """sum(volume × return) / sum(volume × |return|) over ``w`` bars, in [-1, 1]: whether the
    volume came with the up moves or the down moves, weighted by their size (OBV counts signs only)."""
    flow = ctx.memo("v*r1", lambda: ctx.v * ctx.r1)
    gross = ctx.memo("v*|r1|", lambda: ctx.v * ctx.abs_r1)
    return sdiv(ctx.rsum(flow, w), ctx.rsum(gross, w), 0.0)


@KINDS.register
def vol_absret_corr(ctx: Ctx, *, w: int) -> Array:
    """Correlation over ``w`` bars of |one-bar return| with volume."""
    x, y = ctx.abs_r1, ctx.v
    xy = ctx.memo("absr*v", lambda: x * y)
    y2 = ctx.memo("v*v", lambda: y * y)
    inv = 1.0 / w
    mx, my = ctx.rsum(x, w) * inv, ctx.rsum(y, w) * inv
    cov = ctx.rsum(xy, w) * inv - mx * my
    vx = np.maximum(ctx.rsum(ctx.r1_sq, w) * inv - mx * mx, 0.0)
    vy = np.maximum(ctx.rsum(y2, w) * inv - my * my, 0.0)
    return np.clip(sdiv(cov, np.sqrt(vx * vy), 0.0), -1.0, 1.0)
