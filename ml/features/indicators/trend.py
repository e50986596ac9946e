"""Trend: moving averages, MACD, ADX, Parabolic SAR, Ichimoku, Aroon, Vortex, regression, TRIX, KST."""

from __future__ import annotations

import numpy as np

from ml.features.context import Ctx
from ml.features.indicators.registry import KindTable
from ml.features.kernels import (
    TIE,
    Array,
    Kernel,
    blank_before,
    compose,
    lead,
    sdiv,
    slope_kernel,
    span_kernel,
    subtract,
    wilder_kernel,
)
from ml.features.psar import psar_windowed

KINDS = KindTable()


# -- moving averages --------------------------------------------------------------------------------


@KINDS.register
def sma_dist(ctx: Ctx, *, n: int) -> Array:
    return ctx.rmean(ctx.c, n) / ctx.tail(ctx.c) - 1.0


@KINDS.register
def ema_dist(ctx: Ctx, *, span: int, taps: int) -> Array:
    return ctx.fir(ctx.c, span_kernel(span, taps)) / ctx.tail(ctx.c) - 1.0


@KINDS.register
def sma_slope(ctx: Ctx, *, n: int, k: int) -> Array:
    sm = ctx.full(ctx.rmean(ctx.c, n, max(0, ctx.s - k)))
    return ctx.tail(sm) / ctx.lag(sm, k) - 1.0


@KINDS.register
def sma_cross(ctx: Ctx, *, fast: int, slow: int) -> Array:
    return ctx.rmean(ctx.c, fast) / ctx.rmean(ctx.c, slow) - 1.0


@KINDS.register
def ema_cross(ctx: Ctx, *, fast: int, slow: int, taps_fast: int, taps_slow: int) -> Array:
    return ctx.fir(ctx.c, span_kernel(fast, taps_fast)) / ctx.fir(ctx.c, span_kernel(slow, taps_slow)) - 1.0


def _macd_kernels(
    fast: int, slow: int, signal: int, taps_fast: int, taps_slow: int, taps_signal: int
) -> tuple[Kernel, Kernel]:
    line = subtract(span_kernel(fast, taps_fast), span_kernel(slow, taps_slow))
    return line, compose(span_kernel(signal, taps_signal), line)


@KINDS.register
def macd(ctx: Ctx, **p: int) -> Array:
    """MACD line / close. The line is one linear filter (fast EMA kernel minus slow EMA kernel)."""
    line, _ = _macd_kernels(**p)
    return ctx.memo(f"macd:{sorted(p.items())}", lambda: ctx.fir(ctx.c, line) / ctx.tail(ctx.c))


@KINDS.register
def macd_signal(ctx: Ctx, **p: int) -> Array:
    """Signal / close: the signal EMA of a linear filter is the convolution of the two kernels."""
    _, sig = _macd_kernels(**p)
    return ctx.memo(f"macd_signal:{sorted(p.items())}", lambda: ctx.fir(ctx.c, sig) / ctx.tail(ctx.c))


@KINDS.register
def macd_hist(ctx: Ctx, **p: int) -> Array:
    return macd(ctx, **p) - macd_signal(ctx, **p)


# -- ADX ---------------------------------------------------------------------------------------------------


def _directional(ctx: Ctx, n: int, taps_di: int) -> tuple[Array, Array]:
    """+DI and -DI (fractions, full length) from Wilder-smoothed directional movement and true range."""

    def make() -> tuple[Array, Array]:
        move_up = ctx.h - ctx.lag(ctx.h, 1, 0)
        move_dn = ctx.lag(ctx.l, 1, 0) - ctx.l
        # Equal moves (within TIE of the price) are a tie: neither direction gets the movement.
        # 0 * move keeps column 0 NaN (no previous bar) instead of a finite 0.
        gap = move_up - move_dn
        tol = TIE * ctx.c
        dmp = np.where((gap > tol) & (move_up > 0), move_up, 0.0 * move_up)
        dmn = np.where((gap < -tol) & (move_dn > 0), move_dn, 0.0 * move_dn)
        s_tr, s_p, s_n = ctx.fir_many([ctx.tr, dmp, dmn], wilder_kernel(n, taps_di), 0)
        return sdiv(s_p, s_tr, 0.0), sdiv(s_n, s_tr, 0.0)

    return ctx.memo_any(f"di:{n}:{taps_di}", make)  # type: ignore[return-value]


@KINDS.register
def adx(ctx: Ctx, *, n: int, taps_di: int, taps_adx: int) -> Array:
    dip, din = _directional(ctx, n, taps_di)
    dx = sdiv(np.abs(dip - din), dip + din, 0.0)
    return ctx.fir(dx, wilder_kernel(n, taps_adx))


@KINDS.register
def adx_pos(ctx: Ctx, *, n: int, taps_di: int) -> Array:
    return ctx.tail(_directional(ctx, n, taps_di)[0])


@KINDS.register
def adx_neg(ctx: Ctx, *, n: int, taps_di: int) -> Array:
    return ctx.tail(_directional(ctx, n, taps_di)[1])


@KINDS.register
def adx_diff(ctx: Ctx, *, n: int, taps_di: int) -> Array:
    dip, din = _directional(ctx, n, taps_di)
    return ctx.tail(dip) - ctx.tail(din)


# -- Parabolic SAR --------------------------------------------------------------------------------------


def _psar(ctx: Ctx, step: float, max_step: float, window: int) -> tuple[Array, Array, Array]:
    return ctx.memo_any(  # type: ignore[return-value]
        f"psar:{step}:{max_step}:{window}",
        lambda: psar_windowed(ctx.raw_h, ctx.raw_l, ctx.raw_c, step, max_step, window, ctx.s),
    )


@KINDS.register
def psar_dist(ctx: Ctx, *, step: float, max_step: float, window: int) -> Array:
    sar = _psar(ctx, step, max_step, window)[0]
    return 1.0 - sar / ctx.tail(ctx.raw_c)


@KINDS.register
def psar_trend(ctx: Ctx, *, step: float, max_step: float, window: int) -> Array:
    return _psar(ctx, step, max_step, window)[1]


@KINDS.register
def psar_af(ctx: Ctx, *, step: float, max_step: float, window: int) -> Array:
    return _psar(ctx, step, max_step, window)[2]


# -- Ichimoku ---------------------------------------------------------------------------------------------


def _mid(ctx: Ctx, w: int, lag: int) -> Array:
    """Midpoint of the ``w``-bar high and low, ``lag`` bars back, at the output columns."""

    def make() -> Array:
        st = max(0, ctx.s - lag)
        mid = ctx.full((ctx.rmax(ctx.h, w, st) + ctx.rmin(ctx.l, w, st)) * 0.5)
        return ctx.lag(mid, lag) if lag else ctx.tail(mid)

    return ctx.memo(f"mid:{w}:{lag}", make)


@KINDS.register
def hl_mid(ctx: Ctx, *, w: int, lag: int) -> Array:
    """Ichimoku conversion (w=9), base (26) and span B (52) lines / close - 1; ``lag`` bars back."""
    return _mid(ctx, w, lag) / ctx.tail(ctx.c) - 1.0


@KINDS.register
def ichi_a(ctx: Ctx, *, conv: int, base: int, lag: int) -> Array:
    """Span A, (conversion + base) / 2, as plotted ``lag`` bars ahead: the cloud above bar t was
    computed at t - lag, so reading it at t uses only the past."""
    return (_mid(ctx, conv, lag) + _mid(ctx, base, lag)) * 0.5 / ctx.tail(ctx.c) - 1.0


@KINDS.register
def ichi_tk(ctx: Ctx, *, conv: int, base: int) -> Array:
    return _mid(ctx, conv, 0) / _mid(ctx, base, 0) - 1.0


# -- Aroon and Vortex ------------------------------------------------------------------------------------


def _aroon(ctx: Ctx, w: int, high: bool) -> Array:
    """Position of the extreme in the last ``w + 1`` bars, 0 = oldest, as a fraction of ``w``.

    ``np.argmax`` returns the first (oldest) of tied extremes, as ``ta`` does.
    """

    def make() -> Array:
        x = ctx.h if high else ctx.l
        view = ctx.win(x, w + 1)
        pos = view.argmax(axis=-1) if high else view.argmin(axis=-1)
        out = pos.astype(np.float64) * (1.0 / w)
        return blank_before(out, lead(x) + w, ctx.s)

    return ctx.memo(f"aroon:{w}:{high}", make)


@KINDS.register
def aroon_up(ctx: Ctx, *, w: int) -> Array:
    return _aroon(ctx, w, True)


@KINDS.register
def aroon_down(ctx: Ctx, *, w: int) -> Array:
    return _aroon(ctx, w, False)


@KINDS.register
def aroon_osc(ctx: Ctx, *, w: int) -> Array:
    return _aroon(ctx, w, True) - _aroon(ctx, w, False)


def _vortex(ctx: Ctx, w: int) -> tuple[Array, Array]:
    def make() -> tuple[Array, Array]:
        vmp = np.abs(ctx.h - ctx.lag(ctx.l, 1, 0))
        vmm = np.abs(ctx.l - ctx.lag(ctx.h, 1, 0))
        trn = ctx.rsum(ctx.tr, w)
        return sdiv(ctx.rsum(vmp, w), trn, 1.0), sdiv(ctx.rsum(vmm, w), trn, 1.0)

    return ctx.memo_any(f"vortex:{w}", make)  # type: ignore[return-value]


@KINDS.register
def vortex_pos(ctx: Ctx, *, w: int) -> Array:
    return _vortex(ctx, w)[0]


@KINDS.register
def vortex_neg(ctx: Ctx, *, w: int) -> Array:
    return _vortex(ctx, w)[1]


@KINDS.register
def vortex_diff(ctx: Ctx, *, w: int) -> Array:
    vip, vin = _vortex(ctx, w)
    return vip - vin


# -- regression, TRIX, mass index, KST, DPO ---------------------------------------------------------------


def _slope(ctx: Ctx, w: int) -> Array:
    return ctx.memo(f"slope:{w}", lambda: ctx.fir(ctx.lc, slope_kernel(w)))


@KINDS.register
def lr_slope(ctx: Ctx, *, w: int) -> Array:
    """Least-squares slope of log close over ``w`` bars, times ``w``: the fitted log move."""
    return _slope(ctx, w) * float(w)


@KINDS.register
def lr_r2(ctx: Ctx, *, w: int) -> Array:
    """R² of that fit: slope² · Sxx / Syy, with Syy from a two-pass sum over the window."""
    view = ctx.win(ctx.lc, w)
    yc = view - view.mean(axis=-1, keepdims=True)
    syy = np.einsum("ijk,ijk->ij", yc, yc)
    sxx = w * (w * w - 1.0) / 12.0
    slope = _slope(ctx, w)
    return np.clip(sdiv(slope * slope * sxx, syy, 0.0), 0.0, 1.0)


@KINDS.register
def trix(ctx: Ctx, *, span: int, taps: int) -> Array:
    k = span_kernel(span, taps)
    e3 = ctx.full(ctx.fir(ctx.c, compose(k, k, k), max(0, ctx.s - 1)))
    return ctx.tail(e3) / ctx.lag(e3, 1) - 1.0


@KINDS.register
def mass_index(ctx: Ctx, *, fast: int, slow: int, taps: int) -> Array:
    """Mass index / ``slow``: mean over ``slow`` bars of EMA(range) / EMA(EMA(range))."""
    k = span_kernel(fast, taps)
    rng = ctx.memo("h-l", lambda: ctx.h - ctx.l)
    st = max(0, ctx.s - slow + 1)
    ratio = sdiv(ctx.fir(rng, k, st), ctx.fir(rng, compose(k, k), st), 1.0)
    return ctx.rmean(ctx.full(ratio), slow)


def _kst(ctx: Ctx, roc: tuple[int, ...], sma: tuple[int, ...], start: int) -> Array:
    def make() -> Array:
        total = np.zeros((ctx.n, ctx.T - start))
        for weight, (r, w) in enumerate(zip(roc, sma, strict=True), start=1):
            rate = ctx.c / ctx.lag(ctx.c, r, 0) - 1.0
            total += weight * ctx.rmean(rate, w, start)
        return total

    return ctx.memo(f"kst:{roc}:{sma}:{start}", make)


@KINDS.register
def kst(ctx: Ctx, *, roc: tuple[int, ...], sma: tuple[int, ...], signal: int) -> Array:  # noqa: ARG001
    """Know Sure Thing (fractions, not percent): weighted sum of smoothed rates of change.

    ``signal`` belongs to the family's parameters (the spec gives kst and kst_diff one set, and the
    engine passes a feature's parameters by keyword, so they are part of its hash); only kst_diff
    uses it."""
    return _kst(ctx, tuple(roc), tuple(sma), ctx.s)


@KINDS.register
def kst_diff(ctx: Ctx, *, roc: tuple[int, ...], sma: tuple[int, ...], signal: int) -> Array:
    full = ctx.full(_kst(ctx, tuple(roc), tuple(sma), max(0, ctx.s - signal + 1)))
    return ctx.tail(full) - ctx.rmean(full, signal)


@KINDS.register
def dpo(ctx: Ctx, *, w: int) -> Array:
    """Detrended price oscillator / close: the close ``w/2 + 1`` bars back minus the SMA."""
    return (ctx.lag(ctx.c, w // 2 + 1) - ctx.rmean(ctx.c, w)) / ctx.tail(ctx.c)
