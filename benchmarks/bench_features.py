"""Benchmark of the live feature path: 1, 50 and 500 symbols, against a pure ta/pandas baseline.

Run: ``.venv/bin/python benchmarks/bench_features.py`` (add ``--runs N`` for more repetitions).

The live path takes the anchored bars of every symbol (96 + 200 bars each) and returns the scaled
float32 tensor ``[symbols, 96, 240]``. The baseline computes a comparable set of ~240 columns
with ``ta`` and pandas for one symbol at a time over the same bars, as the system this project
replaces did. The baseline is measured at the sizes up to ``--baseline-symbols`` (default 3, so at
1 symbol); above that its time and the speed-up are estimates (per-symbol time x symbols), marked
``~`` and ``estimate*`` in the table, because ta over 500 symbols takes minutes per run.
Budgets (DESIGN §8, issue): 500 symbols in <= 2 s, one symbol in <= 10 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ta

from core.timegrid import MINUTE_MS
from data.bars import BarPanel, panel_from_candles, resample_anchored
from data.sources.simulator import SimulatedMarket
from ml.features import FEATURE_SPEC, build_live_batch, compute
from ml.scaling import RobustScaler

DAY_MS = 86_400_000
START_MS = 1_704_067_200_000  # 2024-01-01 UTC
ANCHOR_MS = START_MS + 9 * DAY_MS + 7 * MINUTE_MS
BAR_MINUTES = 15
SIZES = (1, 50, 500)
BASELINE_SYMBOLS = 3


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm-up: kernel matrices, caches, first-touch allocations
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _subset(panel: BarPanel, n: int) -> BarPanel:
    return replace(
        panel,
        symbols=panel.symbols[:n],
        open=panel.open[:n],
        high=panel.high[:n],
        low=panel.low[:n],
        close=panel.close[:n],
        volume=panel.volume[:n],
        complete=panel.complete[:n],
    )


@dataclass(frozen=True)
class Ohlcv:
    """One symbol's bar columns and log returns. Any: pandas-stubs type np.log(Series) as an ndarray."""

    o: Any
    h: Any
    l: Any  # noqa: E741
    c: Any
    v: Any
    r: Any


def _moving_averages_and_bands(cols: dict[str, Any], x: Ohlcv) -> None:
    """SMA, EMA, RSI, ATR, ADX, Donchian, MFI, CCI and Bollinger columns."""
    for n in (5, 10, 20, 50, 100, 200):
        cols[f"sma{n}"] = ta.trend.SMAIndicator(x.c, n).sma_indicator() / x.c - 1
    for n in (5, 9, 12, 20, 26, 50):
        cols[f"ema{n}"] = ta.trend.EMAIndicator(x.c, n).ema_indicator() / x.c - 1
    for n in (6, 28):
        cols[f"rsi{n}"] = ta.momentum.RSIIndicator(x.c, n).rsi()
    for n in (7, 28):
        cols[f"atr{n}"] = ta.volatility.AverageTrueRange(x.h, x.l, x.c, n).average_true_range() / x.c
        cols[f"wr{n}"] = ta.momentum.WilliamsRIndicator(x.h, x.l, x.c, n).williams_r()
    adx = ta.trend.ADXIndicator(x.h, x.l, x.c, 7)
    cols["adx7"] = adx.adx()
    for w in (55, 96, 192):
        d = ta.volatility.DonchianChannel(x.h, x.l, x.c, w)
        cols[f"dcp{w}"] = d.donchian_channel_pband()
        cols[f"dcw{w}"] = d.donchian_channel_wband()
    for w in (28,):
        cols[f"mfi{w}"] = ta.volume.MFIIndicator(x.h, x.l, x.c, x.v, w).money_flow_index()
    for w in (14, 40):
        cols[f"cci{w}"] = ta.trend.CCIIndicator(x.h, x.l, x.c, w).cci()
    for w in (50,):
        b = ta.volatility.BollingerBands(x.c, w)
        cols[f"bbp{w}"] = b.bollinger_pband()
        cols[f"bbw{w}"] = b.bollinger_wband()


def _returns_and_volatility(cols: dict[str, Any], x: Ohlcv) -> None:
    """Returns, realised and range volatilities, rolling moments, drawdowns within a window."""
    for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192):
        cols[f"ret{k}"] = np.log(x.c / x.c.shift(k))
    for w in (4, 8, 16, 32, 48, 96, 192):
        cols[f"rv{w}"] = np.sqrt((x.r * x.r).rolling(w).mean())
    hl = np.log(x.h / x.l)
    oc = np.log(x.c / x.o)
    for w in (16, 48, 96):
        cols[f"park{w}"] = np.sqrt((hl * hl).rolling(w).mean() / (4 * np.log(2)))
        cols[f"gk{w}"] = np.sqrt((0.5 * hl * hl - (2 * np.log(2) - 1) * oc * oc).rolling(w).mean())
        cols[f"vwap{w}"] = np.log(x.c / ((x.h + x.l + x.c) / 3 * x.v).rolling(w).sum() * x.v.rolling(w).sum())
        cols[f"lr{w}"] = (
            np.log(x.c).rolling(w).apply(lambda y: np.polyfit(np.arange(len(y)), y, 1)[0], raw=True)
        )
    for w in (48, 96):
        cols[f"skew{w}"] = x.r.rolling(w).skew()
        cols[f"kurt{w}"] = x.r.rolling(w).kurt()
        cols[f"ac{w}"] = x.r.rolling(w).corr(x.r.shift(1))
        cols[f"vc{w}"] = x.r.abs().rolling(w).corr(x.v)
        cols[f"mdd{w}"] = (
            np.log(x.c).rolling(w).apply(lambda y: (y - np.maximum.accumulate(y)).min(), raw=True)
        )
        cols[f"mru{w}"] = (
            np.log(x.c).rolling(w).apply(lambda y: (y - np.minimum.accumulate(y)).max(), raw=True)
        )
        cols[f"dvol{w}"] = np.sqrt((x.r.clip(upper=0) ** 2).rolling(w).mean())
        cols[f"uvol{w}"] = np.sqrt((x.r.clip(lower=0) ** 2).rolling(w).mean())


def _drawdowns_and_flow(cols: dict[str, Any], x: Ohlcv) -> None:
    """Drawdowns, swing ages, efficiency, variance ratios and flow columns."""
    for w in (16, 48, 96, 192):
        cols[f"dd{w}"] = np.log(x.c / x.c.rolling(w).max())
        cols[f"ru{w}"] = np.log(x.c / x.c.rolling(w).min())
        cols[f"vr{w}"] = x.v.rolling(w).mean() / x.v.rolling(96).mean()
    for w in (96, 192):
        cols[f"sh{w}"] = x.h.rolling(w + 1).apply(lambda y: len(y) - 1 - np.argmax(y[::-1]), raw=True)
        cols[f"sl{w}"] = x.l.rolling(w + 1).apply(lambda y: len(y) - 1 - np.argmin(y[::-1]), raw=True)
    for w in (10, 32, 96):
        cols[f"eff{w}"] = (np.log(x.c / x.c.shift(w))).abs() / x.r.abs().rolling(w).sum()
    for k in (2, 4, 8):
        rk = np.log(x.c / x.c.shift(k))
        cols[f"varratio{k}"] = rk.rolling(96).var() / (k * x.r.rolling(96).var())
    for w in (16, 96):
        cols[f"amihud{w}"] = x.r.abs().rolling(w).mean() / (x.v.rolling(w).mean() / x.v.rolling(96).mean())
        cols[f"ddz{w}"] = cols[f"dd{w}"] / (cols["rv96"] * np.sqrt(w))
        cols[f"ruz{w}"] = cols[f"ru{w}"] / (cols["rv96"] * np.sqrt(w))
    for w in (32, 96):
        cols[f"roll{w}"] = 2 * np.sqrt((-x.r.rolling(w).cov(x.r.shift(1))).clip(lower=0))
    for w in (16, 48):
        cols[f"upfrac{w}"] = (x.r > 0).astype(float).rolling(w).mean()
        cols[f"rs{w}"] = np.sqrt(
            (np.log(x.h / x.c) * np.log(x.h / x.o) + np.log(x.l / x.c) * np.log(x.l / x.o)).rolling(w).mean()
        )
        cols[f"flow{w}"] = (x.v * x.r).rolling(w).sum() / (x.v * x.r.abs()).rolling(w).sum()
    for k in (4, 16, 48):
        cols[f"momz{k}"] = np.log(x.c / x.c.shift(k)) / (cols["rv96"] * np.sqrt(k))


def _oscillators_and_volume(cols: dict[str, Any], x: Ohlcv) -> None:
    """ROC, CMF, Aroon, stochastic, Ichimoku, Yang-Zhang, OBV and rank columns."""
    for n in (10, 20):
        cols[f"roc{n}"] = ta.momentum.ROCIndicator(x.c, n).roc()
    for w in (10, 50):
        cols[f"cmf{w}"] = ta.volume.ChaikinMoneyFlowIndicator(x.h, x.l, x.c, x.v, w).chaikin_money_flow()
    for w in (25, 50):
        ar = ta.trend.AroonIndicator(x.h, x.l, w)
        cols[f"aroonu{w}"] = ar.aroon_up()
        cols[f"aroond{w}"] = ar.aroon_down()
    st5 = ta.momentum.StochasticOscillator(x.h, x.l, x.c, 5, 3)
    cols["stoch5"], cols["stochd5"] = st5.stoch(), st5.stoch_signal()
    cols["ulcer48"] = ta.volatility.UlcerIndex(x.c, 48).ulcer_index()
    cols["volz96"] = (x.v - x.v.rolling(96).mean()) / x.v.rolling(96).std(ddof=0)
    cols["atrratio"] = cols["atr7"] / cols["atr28"]
    cols["jump48"] = (
        (np.pi / 2) * (x.r.abs() * x.r.abs().shift(1)).rolling(48).mean() / (x.r * x.r).rolling(48).mean()
    )
    cols["vov"] = cols["rv16"].rolling(96).std(ddof=0) / cols["rv16"].rolling(96).mean()
    ichi = ta.trend.IchimokuIndicator(x.h, x.l, 9, 26, 52)
    cols["ichi_a_lag"] = ichi.ichimoku_a().shift(26) / x.c - 1
    cols["ichi_b_lag"] = ichi.ichimoku_b().shift(26) / x.c - 1
    for w in (16, 48):
        ro, rc = np.log(x.o / x.c.shift(1)), np.log(x.c / x.o)
        yz_k = 0.34 / (1.34 + (w + 1) / (w - 1))
        rs = (np.log(x.h / x.c) * np.log(x.h / x.o) + np.log(x.l / x.c) * np.log(x.l / x.o)).rolling(w).mean()
        cols[f"yz{w}"] = np.sqrt(ro.rolling(w).var() + yz_k * rc.rolling(w).var() + (1 - yz_k) * rs)
        cols[f"bodyeff{w}"] = ((x.c - x.o).abs() / (x.h - x.l)).rolling(w).mean()
        cols[f"clvmean{w}"] = (((x.c - x.l) - (x.h - x.c)) / (x.h - x.l)).rolling(w).mean()
        cols[f"wick{w}"] = ((x.h - np.maximum(x.o, x.c)) - (np.minimum(x.o, x.c) - x.l)).rolling(w).sum() / (
            x.h - x.l
        ).rolling(w).sum()
    for w in (14, 48, 96):
        obv = ta.volume.OnBalanceVolumeIndicator(x.c, x.v).on_balance_volume()
        cols[f"obv{w}"] = obv.diff(w) / x.v.rolling(w).sum()
    cols["rvpct"] = cols["rv16"].rolling(96).rank(pct=True)
    cols["rngpct"] = np.log(x.h / x.l).rolling(96).rank(pct=True)


def ta_baseline(bars: pd.DataFrame) -> pd.DataFrame:
    """About 240 columns the way a ta/pandas pipeline computes them, one symbol at a time."""
    c: Any = bars["close"]
    x = Ohlcv(bars["open"], bars["high"], bars["low"], c, bars["volume"], np.log(c).diff())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ta.add_all_ta_features(bars.copy(), "open", "high", "low", "close", "volume", fillna=False)
        cols: dict[str, Any] = {}
        for part in (
            _moving_averages_and_bands,
            _returns_and_volatility,
            _drawdowns_and_flow,
            _oscillators_and_volume,
        ):
            part(cols, x)
        end: Any = bars.index + pd.Timedelta(minutes=BAR_MINUTES)
        frac = (end.hour + end.minute / 60) / 24
        for name, f in (("sin", np.sin), ("cos", np.cos)):
            cols[f"tod_{name}"] = pd.Series(f(2 * np.pi * frac), index=bars.index)
            cols[f"dow_{name}"] = pd.Series(f(2 * np.pi * (end.dayofweek + frac) / 7), index=bars.index)
    return pd.concat([out, pd.DataFrame(cols)], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--baseline-symbols",
        type=int,
        default=BASELINE_SYMBOLS,
        help="symbols the ta baseline is timed on; larger sizes get an estimate (labelled)",
    )
    args = parser.parse_args()

    spec = FEATURE_SPEC
    print(
        f"feature spec {spec.version} ({spec.hash[:12]}): {spec.n_features} features, "
        f"{spec.context} rows + {spec.warmup} bars warm-up per symbol"
    )
    print(f"machine: {os.cpu_count()} CPUs, numpy {np.__version__}, pandas {pd.__version__}, ta 0.11")

    t0 = time.perf_counter()
    market = SimulatedMarket(seed=7, universe_size=max(SIZES))
    symbols = market.list_symbols()[: max(SIZES)]
    span_ms = (FEATURE_SPEC.window + 4) * BAR_MINUTES * MINUTE_MS
    candles = {s: market.fetch(s, ANCHOR_MS - span_ms, ANCHOR_MS) for s in symbols}
    panel = panel_from_candles(candles, ANCHOR_MS, FEATURE_SPEC.window, BAR_MINUTES)
    history = resample_anchored(market.fetch(symbols[0], START_MS, ANCHOR_MS), BAR_MINUTES)
    train = compute(history).to_numpy()
    scaler = RobustScaler.fit(train[np.isfinite(train).all(axis=1)])
    print(f"setup (simulated candles, anchored bars, scaler): {time.perf_counter() - t0:.1f} s\n")

    baseline_runs = max(2, args.runs // 3)

    def run_baseline(n: int) -> list[float]:
        return _timed(lambda: [ta_baseline(panel.frame(s)) for s in symbols[:n]], baseline_runs)

    n_cols = ta_baseline(panel.frame(symbols[0])).shape[1]
    per_symbol_ms = float("nan")
    if any(n > args.baseline_symbols for n in SIZES):
        per_symbol_ms = statistics.median(run_baseline(args.baseline_symbols)) / args.baseline_symbols * 1e3
        print(
            f"ta/pandas baseline: {n_cols} columns, {per_symbol_ms:.1f} ms per symbol (median of "
            f"{baseline_runs} runs over {args.baseline_symbols} symbols, after one warm-up run)\n"
        )

    header = ("symbols", "live path", "best", "per symbol", "ta baseline", "speed-up")
    print("{:>8} {:>12} {:>9} {:>11} {:>12} {:>9}  {:<9} budget".format(*header, "baseline"))
    for n in SIZES:
        times = _timed(_live(_subset(panel, n), scaler), args.runs)
        ms, best = statistics.median(times) * 1e3, min(times) * 1e3
        if n <= args.baseline_symbols:
            base_ms, mark, kind = statistics.median(run_baseline(n)) * 1e3, " ", "measured"
        else:
            base_ms, mark, kind = per_symbol_ms * n, "~", "estimate*"
        budget = {1: 10.0, 500: 2000.0}.get(n)
        verdict = "" if budget is None else f"<= {budget:g} ms: {'ok' if ms <= budget else 'MISSED'}"
        print(
            f"{n:>8} {ms:>9.1f} ms {best:>6.1f} ms {ms / n:>8.2f} ms {f'{mark}{base_ms:.0f}':>9} ms "
            f"{f'{mark}{base_ms / ms:.0f}':>8}x  {kind:<9} {verdict}".rstrip()
        )
    print(
        f"\n(live path: median and best of {args.runs} runs after one warm-up call, features and scaling "
        f"included; ta baseline: median of {baseline_runs} runs after one warm-up run)"
    )
    if any(n > args.baseline_symbols for n in SIZES):
        print(
            f"* estimate, not measured: symbols x {per_symbol_ms:.1f} ms, the ta baseline's median time per "
            f"symbol over the first {args.baseline_symbols} symbols; --baseline-symbols {max(SIZES)} "
            f"measures every size (about {per_symbol_ms * max(SIZES) * (baseline_runs + 1) / 6e4:.0f} "
            "min for the largest)"
        )


def _live(panel: BarPanel, scaler: RobustScaler) -> Callable[[], object]:
    return lambda: build_live_batch(panel, scaler)


if __name__ == "__main__":
    main()
