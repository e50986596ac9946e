"""Benchmark of the live feature path: 1, 50 and 500 symbols, against a pure ta/pandas baseline.

Run: ``.venv/bin/python benchmarks/bench_features.py`` (add ``--runs N`` for more repetitions).

The live path takes the anchored bars of every symbol (96 + 200 bars each) and returns the scaled
float32 tensor ``[symbols, 96, 240]``. The baseline computes a comparable set of ~240 columns
with ``ta`` and pandas for one symbol at a time over the same bars, as the system this project
replaces did. Budgets (DESIGN §8, issue): 500 symbols in <= 2 s, one symbol in <= 10 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
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


def ta_baseline(bars: pd.DataFrame) -> pd.DataFrame:
    """About 240 columns the way a ta/pandas pipeline computes them, one symbol at a time."""
    # Any: pandas-stubs type np.log(Series) as an ndarray, which it is not.
    o: Any = bars["open"]
    h: Any = bars["high"]
    l: Any = bars["low"]  # noqa: E741
    c: Any = bars["close"]
    v: Any = bars["volume"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ta.add_all_ta_features(bars.copy(), "open", "high", "low", "close", "volume", fillna=False)
        cols: dict[str, pd.Series] = {}
        r = np.log(c).diff()
        for n in (5, 10, 20, 50, 100, 200):
            cols[f"sma{n}"] = ta.trend.SMAIndicator(c, n).sma_indicator() / c - 1
        for n in (5, 9, 12, 20, 26, 50):
            cols[f"ema{n}"] = ta.trend.EMAIndicator(c, n).ema_indicator() / c - 1
        for n in (6, 28):
            cols[f"rsi{n}"] = ta.momentum.RSIIndicator(c, n).rsi()
        for n in (7, 28):
            cols[f"atr{n}"] = ta.volatility.AverageTrueRange(h, l, c, n).average_true_range() / c
            cols[f"wr{n}"] = ta.momentum.WilliamsRIndicator(h, l, c, n).williams_r()
        adx = ta.trend.ADXIndicator(h, l, c, 7)
        cols["adx7"] = adx.adx()
        for w in (55, 96, 192):
            d = ta.volatility.DonchianChannel(h, l, c, w)
            cols[f"dcp{w}"] = d.donchian_channel_pband()
            cols[f"dcw{w}"] = d.donchian_channel_wband()
        for w in (28,):
            cols[f"mfi{w}"] = ta.volume.MFIIndicator(h, l, c, v, w).money_flow_index()
        for w in (14, 40):
            cols[f"cci{w}"] = ta.trend.CCIIndicator(h, l, c, w).cci()
        for w in (50,):
            b = ta.volatility.BollingerBands(c, w)
            cols[f"bbp{w}"] = b.bollinger_pband()
            cols[f"bbw{w}"] = b.bollinger_wband()
        for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192):
            cols[f"ret{k}"] = np.log(c / c.shift(k))
        for w in (4, 8, 16, 32, 48, 96, 192):
            cols[f"rv{w}"] = np.sqrt((r * r).rolling(w).mean())
        hl = np.log(h / l)
        oc = np.log(c / o)
        for w in (16, 48, 96):
            cols[f"park{w}"] = np.sqrt((hl * hl).rolling(w).mean() / (4 * np.log(2)))
            cols[f"gk{w}"] = np.sqrt((0.5 * hl * hl - (2 * np.log(2) - 1) * oc * oc).rolling(w).mean())
            cols[f"vwap{w}"] = np.log(c / ((h + l + c) / 3 * v).rolling(w).sum() * v.rolling(w).sum())
            cols[f"lr{w}"] = (
                np.log(c).rolling(w).apply(lambda y: np.polyfit(np.arange(len(y)), y, 1)[0], raw=True)
            )
        for w in (48, 96):
            cols[f"skew{w}"] = r.rolling(w).skew()
            cols[f"kurt{w}"] = r.rolling(w).kurt()
            cols[f"ac{w}"] = r.rolling(w).corr(r.shift(1))
            cols[f"vc{w}"] = r.abs().rolling(w).corr(v)
            cols[f"mdd{w}"] = (
                np.log(c).rolling(w).apply(lambda y: (y - np.maximum.accumulate(y)).min(), raw=True)
            )
            cols[f"mru{w}"] = (
                np.log(c).rolling(w).apply(lambda y: (y - np.minimum.accumulate(y)).max(), raw=True)
            )
            cols[f"dvol{w}"] = np.sqrt((r.clip(upper=0) ** 2).rolling(w).mean())
            cols[f"uvol{w}"] = np.sqrt((r.clip(lower=0) ** 2).rolling(w).mean())
        for w in (16, 48, 96, 192):
            cols[f"dd{w}"] = np.log(c / c.rolling(w).max())
            cols[f"ru{w}"] = np.log(c / c.rolling(w).min())
            cols[f"vr{w}"] = v.rolling(w).mean() / v.rolling(96).mean()
        for w in (96, 192):
            cols[f"sh{w}"] = h.rolling(w + 1).apply(lambda y: len(y) - 1 - np.argmax(y[::-1]), raw=True)
            cols[f"sl{w}"] = l.rolling(w + 1).apply(lambda y: len(y) - 1 - np.argmin(y[::-1]), raw=True)
        for w in (10, 32, 96):
            cols[f"eff{w}"] = (np.log(c / c.shift(w))).abs() / r.abs().rolling(w).sum()
        for k in (2, 4, 8):
            rk = np.log(c / c.shift(k))
            cols[f"varratio{k}"] = rk.rolling(96).var() / (k * r.rolling(96).var())
        for w in (16, 96):
            cols[f"amihud{w}"] = r.abs().rolling(w).mean() / (v.rolling(w).mean() / v.rolling(96).mean())
            cols[f"ddz{w}"] = cols[f"dd{w}"] / (cols["rv96"] * np.sqrt(w))
            cols[f"ruz{w}"] = cols[f"ru{w}"] / (cols["rv96"] * np.sqrt(w))
        for w in (32, 96):
            cols[f"roll{w}"] = 2 * np.sqrt((-r.rolling(w).cov(r.shift(1))).clip(lower=0))
        for w in (16, 48):
            cols[f"upfrac{w}"] = (r > 0).astype(float).rolling(w).mean()
            cols[f"rs{w}"] = np.sqrt(
                (np.log(h / c) * np.log(h / o) + np.log(l / c) * np.log(l / o)).rolling(w).mean()
            )
            cols[f"flow{w}"] = (v * r).rolling(w).sum() / (v * r.abs()).rolling(w).sum()
        for k in (4, 16, 48):
            cols[f"momz{k}"] = np.log(c / c.shift(k)) / (cols["rv96"] * np.sqrt(k))
        for n in (10, 20):
            cols[f"roc{n}"] = ta.momentum.ROCIndicator(c, n).roc()
        for w in (10, 50):
            cols[f"cmf{w}"] = ta.volume.ChaikinMoneyFlowIndicator(h, l, c, v, w).chaikin_money_flow()
        for w in (25, 50):
            ar = ta.trend.AroonIndicator(h, l, w)
            cols[f"aroonu{w}"] = ar.aroon_up()
            cols[f"aroond{w}"] = ar.aroon_down()
        st5 = ta.momentum.StochasticOscillator(h, l, c, 5, 3)
        cols["stoch5"], cols["stochd5"] = st5.stoch(), st5.stoch_signal()
        cols["ulcer48"] = ta.volatility.UlcerIndex(c, 48).ulcer_index()
        cols["volz96"] = (v - v.rolling(96).mean()) / v.rolling(96).std(ddof=0)
        cols["atrratio"] = cols["atr7"] / cols["atr28"]
        cols["jump48"] = (
            (np.pi / 2) * (r.abs() * r.abs().shift(1)).rolling(48).mean() / (r * r).rolling(48).mean()
        )
        cols["vov"] = cols["rv16"].rolling(96).std(ddof=0) / cols["rv16"].rolling(96).mean()
        ichi = ta.trend.IchimokuIndicator(h, l, 9, 26, 52)
        cols["ichi_a_lag"] = ichi.ichimoku_a().shift(26) / c - 1
        cols["ichi_b_lag"] = ichi.ichimoku_b().shift(26) / c - 1
        for w in (16, 48):
            ro, rc = np.log(o / c.shift(1)), np.log(c / o)
            yz_k = 0.34 / (1.34 + (w + 1) / (w - 1))
            rs = (np.log(h / c) * np.log(h / o) + np.log(l / c) * np.log(l / o)).rolling(w).mean()
            cols[f"yz{w}"] = np.sqrt(ro.rolling(w).var() + yz_k * rc.rolling(w).var() + (1 - yz_k) * rs)
            cols[f"bodyeff{w}"] = ((c - o).abs() / (h - l)).rolling(w).mean()
            cols[f"clvmean{w}"] = (((c - l) - (h - c)) / (h - l)).rolling(w).mean()
            cols[f"wick{w}"] = ((h - np.maximum(o, c)) - (np.minimum(o, c) - l)).rolling(w).sum() / (
                h - l
            ).rolling(w).sum()
        for w in (14, 48, 96):
            obv = ta.volume.OnBalanceVolumeIndicator(c, v).on_balance_volume()
            cols[f"obv{w}"] = obv.diff(w) / v.rolling(w).sum()
        cols["rvpct"] = cols["rv16"].rolling(96).rank(pct=True)
        cols["rngpct"] = hl.rolling(96).rank(pct=True)
        end: Any = bars.index + pd.Timedelta(minutes=BAR_MINUTES)
        frac = (end.hour + end.minute / 60) / 24
        for name, f in (("sin", np.sin), ("cos", np.cos)):
            cols[f"tod_{name}"] = pd.Series(f(2 * np.pi * frac), index=bars.index)
            cols[f"dow_{name}"] = pd.Series(f(2 * np.pi * (end.dayofweek + frac) / 7), index=bars.index)
    return pd.concat([out, pd.DataFrame(cols)], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
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

    base = _timed(
        lambda: [ta_baseline(panel.frame(s)) for s in symbols[:BASELINE_SYMBOLS]], max(2, args.runs // 3)
    )
    base_ms = statistics.median(base) / BASELINE_SYMBOLS * 1e3
    n_cols = ta_baseline(panel.frame(symbols[0])).shape[1]
    print(
        f"ta/pandas baseline: {n_cols} columns, {base_ms:.1f} ms per symbol (median of "
        f"{BASELINE_SYMBOLS} symbols x {len(base)} runs)\n"
    )

    header = ("symbols", "live path", "best", "per symbol", "ta baseline", "speed-up")
    print("{:>8} {:>12} {:>9} {:>11} {:>12} {:>9}  budget".format(*header))
    for n in SIZES:
        times = _timed(_live(_subset(panel, n), scaler), args.runs)
        ms, best = statistics.median(times) * 1e3, min(times) * 1e3
        budget = {1: 10.0, 500: 2000.0}.get(n)
        verdict = "" if budget is None else f"<= {budget:g} ms: {'ok' if ms <= budget else 'MISSED'}"
        print(
            f"{n:>8} {ms:>9.1f} ms {best:>6.1f} ms {ms / n:>8.2f} ms {base_ms * n:>9.0f} ms "
            f"{base_ms * n / ms:>8.0f}x  {verdict}"
        )
    print(
        f"\n(live path: median and best of {args.runs} runs after one warm-up call, features and scaling "
        "included; the baseline for 50 and 500 symbols is its per-symbol time multiplied out)"
    )


def _live(panel: BarPanel, scaler: RobustScaler) -> Callable[[], object]:
    return lambda: build_live_batch(panel, scaler)


if __name__ == "__main__":
    main()
