"""Every indicator that ``ta`` also computes is checked against ``ta`` on simulated and real data.

The comparison is made in feature units: ``ta``'s indicator goes through the same scale-free
transform as the feature (``sma / close - 1``, RSI / 100, ...). Rows before ``BURN_IN`` are skipped
because ``ta`` seeds its recursions at the first bar.

Tolerances, as a fraction of the standard deviation of the reference over the compared rows
(a wrong window, alpha or formula is off by 10 % to 100 % of it):

* ``EXACT`` 1e-7: windowed indicators (SMA, Bollinger, Donchian, Keltner, Stochastic, Williams %R,
  CCI, MFI, CMF, A/D, OBV, VPT, Aroon, ROC, Ultimate, Ichimoku, Vortex, KST, DPO, Ulcer, VWAP, AO).
  Only floating-point rounding separates them from ``ta``.
* ``TRUNCATED`` 5e-3: recursive smoothers that the engine truncates to a finite filter whose dropped
  tail weighs at most 1e-4 (EMA spans 5 to 35, Wilder 6 and 14, their compositions: MACD, TRIX 9,
  TSI, mass index, force index, PVO, Chaikin, StochRSI). The error is about the tail weight times
  the move of the input over the history; on these data sets it stays below 2.5e-3.
* ``LONG_TAIL`` 2e-2: smoothers whose tail weighs 2e-4 to 7e-4 because the 200-bar warm-up budget
  cuts them shorter (EMA 50, RSI 28, ATR 28, TRIX 15, the two-stage ADX); measured below 1e-2.

``ta`` resolves exact decimal ties (equal typical prices, equal up and down moves) by float noise;
the engine treats prices within 1e-10 as equal. Rows whose window holds such a tie are skipped
for MFI (30 bars) and ADX (200 bars, the reach of its two smoothing stages).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import pytest
import ta

from ml.features import compute
from ml.features.psar import psar_path, psar_windowed
from tests.support.feature_fixtures import real_bars, sim_bars

BURN_IN = 400
EXACT = 1e-7
TRUNCATED = 5e-3
LONG_TAIL = 2e-2
TIE = 1e-10

Reference = Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class Check:
    feature: str
    reference: Reference
    tolerance: float
    ties: str = ""  # "tp" or "dm": skip rows near an ambiguous tie


class _Add(Protocol):
    def __call__(
        self,
        feature: str,
        # Not ``Reference``: the lambdas bind their loop variables as defaulted parameters
        # (``lambda b, n=n: ...``), a shape mypy cannot infer against a one-parameter callable.
        reference: Callable[..., pd.Series],
        tolerance: float,
        ties: str = "",
    ) -> None: ...


def _moving_average_checks(add: _Add) -> None:
    """SMA and EMA distances and crosses, MACD."""
    for n in (5, 10, 20, 50, 100, 200):
        add(
            f"sma_dist_{n}",
            lambda b, n=n: ta.trend.SMAIndicator(b.close, n).sma_indicator() / b.close - 1,
            EXACT,
        )
    for fast, slow in ((5, 20), (10, 50), (20, 100), (50, 200)):
        add(
            f"sma_cross_{fast}_{slow}",
            lambda b, f=fast, s=slow: (
                ta.trend.SMAIndicator(b.close, f).sma_indicator()
                / ta.trend.SMAIndicator(b.close, s).sma_indicator()
                - 1
            ),
            EXACT,
        )
    for span in (5, 9, 12, 20, 26, 50):
        add(
            f"ema_dist_{span}",
            lambda b, n=span: ta.trend.EMAIndicator(b.close, n).ema_indicator() / b.close - 1,
            LONG_TAIL if span == 50 else TRUNCATED,
        )
    for fast, slow in ((5, 20), (20, 50)):
        add(
            f"ema_cross_{fast}_{slow}",
            lambda b, f=fast, s=slow: (
                ta.trend.EMAIndicator(b.close, f).ema_indicator()
                / ta.trend.EMAIndicator(b.close, s).ema_indicator()
                - 1
            ),
            LONG_TAIL if slow == 50 else TRUNCATED,
        )
    for fast, slow, sig in ((12, 26, 9), (5, 35, 5)):
        suffix = f"{fast}_{slow}_{sig}"

        def macd(b: pd.DataFrame, f: int = fast, s: int = slow, g: int = sig) -> ta.trend.MACD:
            return ta.trend.MACD(b.close, window_slow=s, window_fast=f, window_sign=g)

        add(f"macd_{suffix}", lambda b, m=macd: m(b).macd() / b.close, TRUNCATED)
        add(f"macd_signal_{suffix}", lambda b, m=macd: m(b).macd_signal() / b.close, TRUNCATED)
        add(f"macd_hist_{suffix}", lambda b, m=macd: m(b).macd_diff() / b.close, TRUNCATED)


def _trend_indicator_checks(add: _Add) -> None:
    """ADX, Ichimoku, Aroon, Vortex, TRIX, mass index, KST, DPO."""

    def adx(b: pd.DataFrame, n: int = 14) -> ta.trend.ADXIndicator:
        return ta.trend.ADXIndicator(b.high, b.low, b.close, n)

    add("adx_14", lambda b: adx(b).adx() / 100, LONG_TAIL, "dm")
    add("adx_pos_14", lambda b: adx(b).adx_pos() / 100, LONG_TAIL, "dm")
    add("adx_neg_14", lambda b: adx(b).adx_neg() / 100, LONG_TAIL, "dm")
    add("adx_diff_14", lambda b: (adx(b).adx_pos() - adx(b).adx_neg()) / 100, LONG_TAIL, "dm")
    add("adx_7", lambda b: adx(b, 7).adx() / 100, TRUNCATED, "dm")

    def ichi(b: pd.DataFrame) -> ta.trend.IchimokuIndicator:
        return ta.trend.IchimokuIndicator(b.high, b.low, 9, 26, 52)

    add("ichi_conv", lambda b: ichi(b).ichimoku_conversion_line() / b.close - 1, EXACT)
    add("ichi_base", lambda b: ichi(b).ichimoku_base_line() / b.close - 1, EXACT)
    add("ichi_a", lambda b: ichi(b).ichimoku_a() / b.close - 1, EXACT)
    add("ichi_b", lambda b: ichi(b).ichimoku_b() / b.close - 1, EXACT)
    add(
        "ichi_tk",
        lambda b: ichi(b).ichimoku_conversion_line() / ichi(b).ichimoku_base_line() - 1,
        EXACT,
    )
    # The cloud drawn above bar t was computed 26 bars earlier (ta's visual=True shift).
    add("ichi_a_lag", lambda b: ichi(b).ichimoku_a().shift(26) / b.close - 1, EXACT)
    add("ichi_b_lag", lambda b: ichi(b).ichimoku_b().shift(26) / b.close - 1, EXACT)
    for w in (25, 50):
        add(f"aroon_up_{w}", lambda b, w=w: ta.trend.AroonIndicator(b.high, b.low, w).aroon_up() / 100, EXACT)
        add(
            f"aroon_down_{w}",
            lambda b, w=w: ta.trend.AroonIndicator(b.high, b.low, w).aroon_down() / 100,
            EXACT,
        )
        add(
            f"aroon_osc_{w}",
            lambda b, w=w: ta.trend.AroonIndicator(b.high, b.low, w).aroon_indicator() / 100,
            EXACT,
        )

    def vortex(b: pd.DataFrame) -> ta.trend.VortexIndicator:
        return ta.trend.VortexIndicator(b.high, b.low, b.close, 14)

    add("vortex_pos_14", lambda b: vortex(b).vortex_indicator_pos(), EXACT)
    add("vortex_neg_14", lambda b: vortex(b).vortex_indicator_neg(), EXACT)
    add("vortex_diff_14", lambda b: vortex(b).vortex_indicator_diff(), EXACT)
    add("trix_9", lambda b: ta.trend.TRIXIndicator(b.close, 9).trix() / 100, TRUNCATED)
    add("trix_15", lambda b: ta.trend.TRIXIndicator(b.close, 15).trix() / 100, LONG_TAIL)
    add("mass_index_9_25", lambda b: ta.trend.MassIndex(b.high, b.low, 9, 25).mass_index() / 25, TRUNCATED)
    add("kst", lambda b: ta.trend.KSTIndicator(b.close).kst() / 100, EXACT)
    add("kst_diff", lambda b: ta.trend.KSTIndicator(b.close).kst_diff() / 100, EXACT)
    add("dpo_20", lambda b: ta.trend.DPOIndicator(b.close, 20).dpo() / b.close, EXACT)


def _momentum_checks(add: _Add) -> None:
    """RSI, stochastics, Williams %R, ROC, CCI, Ultimate, MFI, AO, TSI."""
    for n, tol in ((6, TRUNCATED), (14, TRUNCATED), (28, LONG_TAIL)):
        add(f"rsi_{n}", lambda b, n=n: ta.momentum.RSIIndicator(b.close, n).rsi() / 100, tol)
    for w in (5, 14):
        add(
            f"stoch_k_{w}",
            lambda b, w=w: ta.momentum.StochasticOscillator(b.high, b.low, b.close, w, 3).stoch() / 100,
            EXACT,
        )
        add(
            f"stoch_d_{w}",
            lambda b, w=w: (
                ta.momentum.StochasticOscillator(b.high, b.low, b.close, w, 3).stoch_signal() / 100
            ),
            EXACT,
        )

    def srsi(b: pd.DataFrame) -> ta.momentum.StochRSIIndicator:
        return ta.momentum.StochRSIIndicator(b.close, 14, 3, 3)

    add("stochrsi_14", lambda b: srsi(b).stochrsi(), TRUNCATED)
    add("stochrsi_k_14", lambda b: srsi(b).stochrsi_k(), TRUNCATED)
    add("stochrsi_d_14", lambda b: srsi(b).stochrsi_d(), TRUNCATED)
    for w in (7, 28):
        add(
            f"willr_{w}",
            lambda b, w=w: ta.momentum.WilliamsRIndicator(b.high, b.low, b.close, w).williams_r() / 100,
            EXACT,
        )
    for n in (10, 20):
        add(f"roc_{n}", lambda b, n=n: ta.momentum.ROCIndicator(b.close, n).roc() / 100, EXACT)
    for w in (14, 20, 40):
        add(f"cci_{w}", lambda b, w=w: ta.trend.CCIIndicator(b.high, b.low, b.close, w).cci() / 100, EXACT)
    add(
        "uo_7_14_28",
        lambda b: ta.momentum.UltimateOscillator(b.high, b.low, b.close).ultimate_oscillator() / 100,
        EXACT,
    )
    for w in (14, 28):
        add(
            f"mfi_{w}",
            lambda b, w=w: (
                ta.volume.MFIIndicator(b.high, b.low, b.close, b.volume, w).money_flow_index() / 100
            ),
            EXACT,
            "tp",
        )
    add(
        "ao_5_34",
        lambda b: ta.momentum.AwesomeOscillatorIndicator(b.high, b.low, 5, 34).awesome_oscillator() / b.close,
        EXACT,
    )
    add("tsi_25_13", lambda b: ta.momentum.TSIIndicator(b.close, 25, 13).tsi() / 100, TRUNCATED)


def _volatility_checks(add: _Add) -> None:
    """ATR, Bollinger, Keltner, Donchian, Ulcer."""

    def atr(b: pd.DataFrame, n: int) -> pd.Series:
        line: pd.Series = ta.volatility.AverageTrueRange(b.high, b.low, b.close, n).average_true_range()
        return line

    for n, tol in ((7, TRUNCATED), (14, TRUNCATED), (28, LONG_TAIL)):
        add(f"natr_{n}", lambda b, n=n: atr(b, n) / b.close, tol)
    add("atr_ratio_7_28", lambda b: atr(b, 7) / atr(b, 28), LONG_TAIL)
    for w in (20, 50):
        add(
            f"bb_pband_{w}",
            lambda b, w=w: ta.volatility.BollingerBands(b.close, w, 2).bollinger_pband(),
            EXACT,
        )
        add(
            f"bb_wband_{w}",
            lambda b, w=w: ta.volatility.BollingerBands(b.close, w, 2).bollinger_wband() / 100,
            EXACT,
        )

    def keltner(b: pd.DataFrame) -> ta.volatility.KeltnerChannel:
        return ta.volatility.KeltnerChannel(b.high, b.low, b.close, 20, 10, original_version=True)

    add("kc_pband_20", lambda b: keltner(b).keltner_channel_pband(), EXACT)
    add("kc_wband_20", lambda b: keltner(b).keltner_channel_wband() / 100, EXACT)
    add(
        "bb_kc_squeeze_20",
        lambda b: (
            ta.volatility.BollingerBands(b.close, 20, 2).bollinger_wband()
            * ta.volatility.BollingerBands(b.close, 20, 2).bollinger_mavg()
            / (keltner(b).keltner_channel_hband() - keltner(b).keltner_channel_lband())
            / 100
        ),
        EXACT,
    )
    for w in (20, 55, 96, 192):
        add(
            f"dc_pband_{w}",
            lambda b, w=w: ta.volatility.DonchianChannel(b.high, b.low, b.close, w).donchian_channel_pband(),
            EXACT,
        )
        add(
            f"dc_wband_{w}",
            lambda b, w=w: (
                ta.volatility.DonchianChannel(b.high, b.low, b.close, w).donchian_channel_wband() / 100
            ),
            EXACT,
        )
    for w in (14, 48):
        add(f"ulcer_{w}", lambda b, w=w: ta.volatility.UlcerIndex(b.close, w).ulcer_index() / 100, EXACT)


def _windowed(line: pd.Series, b: pd.DataFrame, w: int) -> pd.Series:
    """Change of a cumulative line over ``w`` bars per unit of the volume traded in them."""
    return (line - line.shift(w)) / b.volume.rolling(w).sum()


def _obv(b: pd.DataFrame) -> pd.Series:
    line: pd.Series = ta.volume.OnBalanceVolumeIndicator(b.close, b.volume).on_balance_volume()
    return line


def _adi(b: pd.DataFrame) -> pd.Series:
    line: pd.Series = ta.volume.AccDistIndexIndicator(b.high, b.low, b.close, b.volume).acc_dist_index()
    return line


def _volume_checks(add: _Add) -> None:
    """OBV, CMF (twice), Chaikin, force index, PVO, VPT."""
    for w in (14, 48, 96):
        add(f"obv_slope_{w}", lambda b, w=w: _windowed(_obv(b), b, w), EXACT)
    for w in (10, 20, 50):
        add(
            f"cmf_{w}",
            lambda b, w=w: ta.volume.ChaikinMoneyFlowIndicator(
                b.high, b.low, b.close, b.volume, w
            ).chaikin_money_flow(),
            EXACT,
        )
    # The same numbers from the accumulation/distribution line itself.
    add("cmf_20", lambda b: _windowed(_adi(b), b, 20), EXACT)
    add(
        "chaikin_osc_3_10",
        lambda b: (
            (_adi(b).ewm(span=3, adjust=False).mean() - _adi(b).ewm(span=10, adjust=False).mean())
            / b.volume.rolling(96).mean()
        ),
        TRUNCATED,
    )
    add(
        "force_13",
        lambda b: (
            ta.volume.ForceIndexIndicator(b.close, b.volume, 13).force_index()
            / (b.close * b.volume.rolling(96).mean())
        ),
        TRUNCATED,
    )

    def pvo(b: pd.DataFrame) -> ta.momentum.PercentageVolumeOscillator:
        return ta.momentum.PercentageVolumeOscillator(b.volume, 26, 12, 9)

    add("pvo_12_26_9", lambda b: pvo(b).pvo() / 100, TRUNCATED)
    add("pvo_signal_12_26_9", lambda b: pvo(b).pvo_signal() / 100, TRUNCATED)
    add("pvo_hist_12_26_9", lambda b: pvo(b).pvo_hist() / 100, TRUNCATED)
    for w in (14, 48):
        add(
            f"vpt_slope_{w}",
            lambda b, w=w: _windowed(
                ta.volume.VolumePriceTrendIndicator(b.close, b.volume).volume_price_trend(), b, w
            ),
            EXACT,
        )


def _price_checks(add: _Add) -> None:
    """VWAP distance and returns."""
    add(
        "vwap_dist_14",
        lambda b: np.log(
            b.close
            / ta.volume.VolumeWeightedAveragePrice(
                b.high, b.low, b.close, b.volume, 14
            ).volume_weighted_average_price()
        ),
        EXACT,
    )
    add("ret_1", lambda b: ta.others.DailyLogReturnIndicator(b.close).daily_log_return() / 100, EXACT)
    add(
        "ret_24",
        lambda b: np.log(1 + ta.others.CumulativeReturnIndicator(b.close).cumulative_return() / 100).diff(24),
        EXACT,
    )


def _checks() -> list[Check]:
    out: list[Check] = []

    def add(feature: str, reference: Callable[..., pd.Series], tolerance: float, ties: str = "") -> None:
        out.append(Check(feature, reference, tolerance, ties))

    for family in (
        _moving_average_checks,
        _trend_indicator_checks,
        _momentum_checks,
        _volatility_checks,
        _volume_checks,
        _price_checks,
    ):
        family(add)
    return out


CHECKS = _checks()


def _psar_path(b: pd.DataFrame) -> np.ndarray:
    """ta's SAR (a single path from the first bar), for the windowed feature's comparison."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ta assigns by position into a dated index
        sar: pd.Series = ta.trend.PSARIndicator(b.high, b.low, b.close).psar()
    return sar.to_numpy()


DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "sim_btc_15m": lambda: sim_bars("BTC/USDT:USDT", days=30).drop(columns="complete"),
    "sim_doge_15m": lambda: sim_bars("DOGE/USDT:USDT", days=30).drop(columns="complete"),
    "eurusd_1h": lambda: real_bars("EURUSD.csv"),
    "goog_1d": lambda: real_bars("GOOG.csv"),
}


@pytest.fixture(scope="module", params=sorted(DATASETS))
def dataset(request: pytest.FixtureRequest) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    bars = DATASETS[request.param]()
    return request.param, bars, compute(bars, allow_irregular=True)


def _tie_rows(b: pd.DataFrame, kind: str) -> np.ndarray:
    """Rows whose look-back holds a tie that ``ta`` breaks by float noise (see the module doc)."""
    h, low, c = (b[x].to_numpy() for x in ("high", "low", "close"))
    if kind == "tp":
        tp = (h + low + c) / 3.0
        step = np.r_[0.0, np.diff(tp)]
        tie, reach = (np.abs(step) <= TIE * tp) & (step != 0), 30
    else:
        up = np.r_[0.0, np.diff(h)]
        dn = np.r_[0.0, -np.diff(low)]
        gap = up - dn
        tie, reach = (np.abs(gap) <= TIE * c) & (gap != 0) & ((up > 0) | (dn > 0)), 200
    return pd.Series(tie.astype(float)).rolling(reach, min_periods=1).max().to_numpy() > 0


@pytest.mark.parametrize("check", CHECKS, ids=[f"{c.feature}-{i}" for i, c in enumerate(CHECKS)])
def test_feature_matches_ta(dataset: tuple[str, pd.DataFrame, pd.DataFrame], check: Check) -> None:
    name, bars, ours = dataset
    with np.errstate(all="ignore"):
        expected = check.reference(bars).to_numpy(dtype=np.float64)
    actual = ours[check.feature].to_numpy()
    rows = np.isfinite(expected) & np.isfinite(actual)
    rows[:BURN_IN] = False
    rows[-1] = False  # ta's ADX leaves its last bar unfinished; one row is no loss elsewhere
    if check.ties:
        rows &= ~_tie_rows(bars, check.ties)
    assert rows.sum() >= 0.6 * len(bars), f"{name}: only {rows.sum()} comparable rows"
    scale = float(np.std(expected[rows]))
    assert scale > 0
    err = np.abs(actual[rows] - expected[rows])
    worst = int(np.argmax(err))
    assert err[worst] <= check.tolerance * scale + 1e-12, (
        f"{check.feature} on {name}: |ours - ta| = {err[worst]:.3g} at row {np.flatnonzero(rows)[worst]}, "
        f"allowed {check.tolerance:g} x std {scale:.3g}"
    )


def test_psar_path_kernel_is_ta(dataset: tuple[str, pd.DataFrame, pd.DataFrame]) -> None:
    """The SAR step function, run as one path over the whole series, reproduces ta exactly (the
    windowed feature is this kernel restarted per row, see the next test)."""
    _, bars, _ = dataset
    h, low, c = (bars[x].to_numpy()[None, :] for x in ("high", "low", "close"))
    sar, trend, accel = psar_path(h, low, c)
    expected = _psar_path(bars)
    np.testing.assert_allclose(sar[0], expected, rtol=1e-12, atol=0)
    steps = accel / 0.02
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    assert steps.min() >= 1 - 1e-9
    assert steps.max() <= 10 + 1e-9
    # In an up-trend the SAR is below the bar's high, in a down-trend above its low.
    up, down = trend[0, 2:], ~trend[0, 2:]
    assert (sar[0, 2:][up] <= h[0, 2:][up]).all()
    assert (sar[0, 2:][down] >= low[0, 2:][down]).all()


def test_windowed_psar_is_the_path_restarted_100_bars_back(
    dataset: tuple[str, pd.DataFrame, pd.DataFrame],
) -> None:
    """Each row's SAR is the path started ``window - 1`` bars earlier; it has usually merged with
    ta's path from the first bar by then."""
    name, bars, ours = dataset
    h, low, c = (bars[x].to_numpy()[None, :] for x in ("high", "low", "close"))
    window = 100
    t = np.arange(BURN_IN, len(bars), 97)
    for row in t:
        lo = row - window + 1
        sar, _, _ = psar_path(h[:, lo : row + 1], low[:, lo : row + 1], c[:, lo : row + 1])
        assert ours["psar_dist"].iloc[row] == pytest.approx(1 - sar[0, -1] / c[0, row], rel=1e-12, abs=1e-15)
    windowed, _, _ = psar_windowed(h, low, c, 0.02, 0.2, window, BURN_IN)
    path = _psar_path(bars)[BURN_IN:]
    agree = np.isclose(windowed[0], path, rtol=1e-12, atol=0).mean()
    assert agree >= 0.97, f"{name}: windowed SAR equals ta's on only {agree:.1%} of rows"
