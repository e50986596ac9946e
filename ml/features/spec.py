"""The one ordered, versioned feature spec (240 features) and its hash.

Every feature has a name, a group, a ``kind`` (the engine function that computes it), parameters
and a warm-up: the value at bar ``t`` is a function of bars ``[t - warmup, t]`` only. The engine and
the tests hold the implementation to these declarations (leading NaN count == warm-up; values
from the full history == values from the declared window alone). docs/FEATURES.md explains every
family. Changing anything here changes ``FEATURE_SPEC.hash``, which every model artefact stores.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from core.errors import PermanentError
from ml.features.kernels import compose, ema_taps, span_kernel, subtract

SPEC_VERSION = "1.0.0"
CONTEXT = 96  # bars per model sample (DESIGN §5)
MAX_WARMUP = 200  # bars of history a feature may need beyond the context

ParamValue = int | float | str | tuple[int, ...]

GROUPS: tuple[str, ...] = (
    "price",
    "trend",
    "momentum",
    "volatility",
    "volume",
    "micro",
    "regime",
    "rally",
    "time",
)


class FeatureSpecMismatchError(PermanentError):
    """Features, scaler or model were built for a different feature spec."""


@dataclass(frozen=True)
class FeatureDef:
    name: str
    group: str
    kind: str
    params: Mapping[str, ParamValue]
    warmup: int

    def canonical(self) -> dict[str, object]:
        return {
            "name": self.name,
            "group": self.group,
            "kind": self.kind,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(self.params.items())},
            "warmup": self.warmup,
        }


@dataclass(frozen=True)
class FeatureSpec:
    version: str
    features: tuple[FeatureDef, ...]
    context: int = CONTEXT
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {f.name: i for i, f in enumerate(self.features)}
        if len(index) != len(self.features):
            raise ValueError("feature names must be unique")
        object.__setattr__(self, "_index", MappingProxyType(index))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def warmup(self) -> int:
        """Bars of history beyond the newest row that the slowest feature needs."""
        return max(f.warmup for f in self.features)

    @property
    def window(self) -> int:
        """Bars the live path needs per symbol: the context plus the warm-up."""
        return self.context + self.warmup

    def index(self, name: str) -> int:
        return self._index[name]

    def canonical_json(self) -> str:
        doc = {
            "version": self.version,
            "context": self.context,
            "features": [f.canonical() for f in self.features],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @cached_property
    def hash(self) -> str:
        """sha256 of the canonical JSON of version, context and the ordered features."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def by_group(self) -> dict[str, list[FeatureDef]]:
        out: dict[str, list[FeatureDef]] = {g: [] for g in GROUPS}
        for f in self.features:
            out[f.group].append(f)
        return out

    def check_hash(self, other: str, what: str) -> None:
        if other != self.hash:
            raise FeatureSpecMismatchError(
                f"{what} was built for feature spec {other[:12]}…, this engine computes "
                f"{self.hash[:12]}… (version {self.version}); refusing to mix them"
            )


def span_taps(span: int, cap: int = MAX_WARMUP) -> int:
    return ema_taps(2.0 / (span + 1.0), cap=cap)


def wilder_taps(n: int, cap: int = MAX_WARMUP) -> int:
    return ema_taps(1.0 / n, cap=cap)


class _Builder:
    def __init__(self) -> None:
        self.features: list[FeatureDef] = []
        self.group = ""

    def add(self, name: str, kind: str, warmup: int, **params: ParamValue) -> None:
        self.features.append(FeatureDef(name, self.group, kind, MappingProxyType(dict(params)), warmup))


def _price(b: _Builder) -> None:
    """Price: returns over many horizons, the bar's shape, range and VWAP distances."""
    for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192):
        b.add(f"ret_{k}", "ret", k, k=k)
    b.add("body_frac", "body_frac", 0)
    b.add("range_hl", "range_hl", 0)
    b.add("wick_up", "wick_up", 0)
    b.add("wick_dn", "wick_dn", 0)
    b.add("clv", "clv", 0)
    for w in (16, 96):
        b.add(f"range_rel_{w}", "range_rel", w - 1, w=w)
    for w in (4, 14, 48, 96, 192):
        b.add(f"vwap_dist_{w}", "vwap_dist", w - 1, w=w)


def _trend_averages(b: _Builder) -> None:
    """Trend: distances to and crosses of moving averages, their slopes, MACD."""
    for n in (5, 10, 20, 50, 100, 200):
        b.add(f"sma_dist_{n}", "sma_dist", n - 1, n=n)
    for span in (5, 9, 12, 20, 26, 50):
        taps = span_taps(span)
        b.add(f"ema_dist_{span}", "ema_dist", taps - 1, span=span, taps=taps)
    for n, k in ((20, 5), (50, 10), (100, 20)):
        b.add(f"sma_slope_{n}_{k}", "sma_slope", n - 1 + k, n=n, k=k)
    for fast, slow in ((5, 20), (10, 50), (20, 100), (50, 200)):
        b.add(f"sma_cross_{fast}_{slow}", "sma_cross", slow - 1, fast=fast, slow=slow)
    for fast, slow in ((5, 20), (20, 50)):
        tf, ts = span_taps(fast), span_taps(slow)
        b.add(
            f"ema_cross_{fast}_{slow}",
            "ema_cross",
            max(tf, ts) - 1,
            fast=fast,
            slow=slow,
            taps_fast=tf,
            taps_slow=ts,
        )
    for fast, slow, sig in ((12, 26, 9), (5, 35, 5)):
        tf, ts, tg = span_taps(fast), span_taps(slow), span_taps(sig)
        p: dict[str, ParamValue] = dict(
            fast=fast, slow=slow, signal=sig, taps_fast=tf, taps_slow=ts, taps_signal=tg
        )
        line = subtract(span_kernel(fast, tf), span_kernel(slow, ts))
        signal = compose(span_kernel(sig, tg), line)
        b.add(f"macd_{fast}_{slow}_{sig}", "macd", line.taps - 1, **p)
        b.add(f"macd_signal_{fast}_{slow}_{sig}", "macd_signal", signal.taps - 1, **p)
        b.add(f"macd_hist_{fast}_{slow}_{sig}", "macd_hist", signal.taps - 1, **p)


def _trend_direction(b: _Builder) -> None:
    """Trend: directional movement (ADX), parabolic SAR, Ichimoku, Aroon, Vortex."""
    # Nested Wilder smoothing: the two stages share the 200-bar budget.
    b.add("adx_14", "adx", 100 + 100 - 1, n=14, taps_di=100, taps_adx=100)
    b.add("adx_pos_14", "adx_pos", 100, n=14, taps_di=100)
    b.add("adx_neg_14", "adx_neg", 100, n=14, taps_di=100)
    b.add("adx_diff_14", "adx_diff", 100, n=14, taps_di=100)
    b.add("adx_7", "adx", 60 + 60 - 1, n=7, taps_di=60, taps_adx=60)
    psar: dict[str, ParamValue] = dict(step=0.02, max_step=0.2, window=100)
    b.add("psar_dist", "psar_dist", 99, **psar)
    b.add("psar_trend", "psar_trend", 99, **psar)
    b.add("psar_af", "psar_af", 99, **psar)
    b.add("ichi_conv", "hl_mid", 8, w=9, lag=0)
    b.add("ichi_base", "hl_mid", 25, w=26, lag=0)
    b.add("ichi_a", "ichi_a", 25, conv=9, base=26, lag=0)
    b.add("ichi_b", "hl_mid", 51, w=52, lag=0)
    b.add("ichi_tk", "ichi_tk", 25, conv=9, base=26)
    b.add("ichi_a_lag", "ichi_a", 25 + 26, conv=9, base=26, lag=26)
    b.add("ichi_b_lag", "hl_mid", 51 + 26, w=52, lag=26)
    for w in (25, 50):
        b.add(f"aroon_up_{w}", "aroon_up", w, w=w)
        b.add(f"aroon_down_{w}", "aroon_down", w, w=w)
        b.add(f"aroon_osc_{w}", "aroon_osc", w, w=w)
    b.add("vortex_pos_14", "vortex_pos", 14, w=14)
    b.add("vortex_neg_14", "vortex_neg", 14, w=14)
    b.add("vortex_diff_14", "vortex_diff", 14, w=14)


def _trend_oscillators(b: _Builder) -> None:
    """Trend: regression slope and fit, TRIX, mass index, KST, DPO."""
    for w in (16, 48, 96):
        b.add(f"lr_slope_{w}", "lr_slope", w - 1, w=w)
    for w in (16, 48, 96):
        b.add(f"lr_r2_{w}", "lr_r2", w - 1, w=w)
    for span in (9, 15):
        taps = span_taps(span, cap=61)
        ema = span_kernel(span, taps)
        b.add(f"trix_{span}", "trix", compose(ema, ema, ema).taps, span=span, taps=taps)
    ema = span_kernel(9, span_taps(9))
    b.add(
        "mass_index_9_25", "mass_index", compose(ema, ema).taps - 1 + 24, fast=9, slow=25, taps=span_taps(9)
    )
    kst: dict[str, ParamValue] = dict(roc=(10, 15, 20, 30), sma=(10, 10, 10, 15), signal=9)
    b.add("kst", "kst", 44, **kst)
    b.add("kst_diff", "kst_diff", 44 + 8, **kst)
    b.add("dpo_20", "dpo", 19, w=20)


def _momentum(b: _Builder) -> None:
    """Momentum: RSI, stochastics, Williams %R, ROC, CCI, Ultimate, MFI, AO, TSI, CMO, z-scored momentum."""
    for n in (6, 14, 28):
        taps = wilder_taps(n)
        b.add(f"rsi_{n}", "rsi", taps, n=n, taps=taps)
    for w in (5, 14):
        b.add(f"stoch_k_{w}", "stoch_k", w - 1, w=w)
        b.add(f"stoch_d_{w}", "stoch_d", w + 1, w=w, smooth=3)
    srsi: dict[str, ParamValue] = dict(n=14, taps=wilder_taps(14), w=14, smooth1=3, smooth2=3)
    rt = wilder_taps(14)
    b.add("stochrsi_14", "stochrsi", rt + 13, **srsi)
    b.add("stochrsi_k_14", "stochrsi_k", rt + 15, **srsi)
    b.add("stochrsi_d_14", "stochrsi_d", rt + 17, **srsi)
    for w in (7, 28):
        b.add(f"willr_{w}", "willr", w - 1, w=w)
    for n in (10, 20):
        b.add(f"roc_{n}", "roc", n, n=n)
    for w in (14, 20, 40):
        b.add(f"cci_{w}", "cci", w - 1, w=w)
    b.add("uo_7_14_28", "uo", 28, w1=7, w2=14, w3=28)
    for w in (14, 28):
        b.add(f"mfi_{w}", "mfi", w, w=w)
    b.add("ao_5_34", "ao", 33, fast=5, slow=34)
    ts, tf = span_taps(25), span_taps(13)
    tsi = compose(span_kernel(25, ts), span_kernel(13, tf))
    b.add("tsi_25_13", "tsi", tsi.taps, slow=25, fast=13, taps_slow=ts, taps_fast=tf)
    for k in (4, 16, 48):
        b.add(f"mom_z_{k}", "mom_z", max(k, 96), k=k, vol_w=96)
    b.add("cmo_14", "cmo", 14, w=14)


def _volatility(b: _Builder) -> None:
    """Volatility: normalised ATR, Bollinger, Keltner, Donchian, Ulcer."""
    for n in (7, 14, 28):
        taps = wilder_taps(n)
        b.add(f"natr_{n}", "natr", taps, n=n, taps=taps)
    for w in (20, 50):
        b.add(f"bb_pband_{w}", "bb_pband", w - 1, w=w, dev=2)
        b.add(f"bb_wband_{w}", "bb_wband", w - 1, w=w, dev=2)
    b.add("kc_pband_20", "kc_pband", 19, w=20)
    b.add("kc_wband_20", "kc_wband", 19, w=20)
    b.add("bb_kc_squeeze_20", "bb_kc_squeeze", 19, w=20, dev=2)
    for w in (20, 55, 96, 192):
        b.add(f"dc_pband_{w}", "dc_pband", w - 1, w=w)
        b.add(f"dc_wband_{w}", "dc_wband", w - 1, w=w)
    for w in (14, 48):
        b.add(f"ulcer_{w}", "ulcer", 2 * w - 2, w=w)


def _volume(b: _Builder) -> None:
    """Volume: relative volume, OBV, CMF, Chaikin, force index, PVO, VPT, flow imbalance, volume and
    return correlation."""
    for fast, slow in ((1, 96), (4, 96), (16, 96), (48, 96), (96, 192)):
        b.add(f"vol_ratio_{fast}_{slow}", "vol_ratio", slow - 1, fast=fast, slow=slow)
    b.add("vol_z_96", "vol_z", 95, w=96)
    for w in (14, 48, 96):
        b.add(f"obv_slope_{w}", "obv_slope", w, w=w)
    for w in (10, 20, 50):
        b.add(f"cmf_{w}", "cmf", w - 1, w=w)
    tf, ts = span_taps(3), span_taps(10)
    b.add(
        "chaikin_osc_3_10",
        "chaikin_osc",
        max(max(tf, ts) - 2, 95),
        fast=3,
        slow=10,
        taps_fast=tf,
        taps_slow=ts,
        vol_w=96,
    )
    b.add("force_13", "force", max(span_taps(13), 95), span=13, taps=span_taps(13), vol_w=96)
    tf, ts, tg = span_taps(12), span_taps(26), span_taps(9)
    pvo: dict[str, ParamValue] = dict(fast=12, slow=26, signal=9, taps_fast=tf, taps_slow=ts, taps_signal=tg)
    b.add("pvo_12_26_9", "pvo", max(tf, ts) - 1, **pvo)
    b.add("pvo_signal_12_26_9", "pvo_signal", max(tf, ts) + tg - 2, **pvo)
    b.add("pvo_hist_12_26_9", "pvo_hist", max(tf, ts) + tg - 2, **pvo)
    for w in (14, 48):
        b.add(f"vpt_slope_{w}", "vpt_slope", w, w=w)
    for w in (16, 48):
        b.add(f"flow_imbalance_{w}", "flow_imbalance", w, w=w)
    for w in (48, 96):
        b.add(f"vol_absret_corr_{w}", "vol_absret_corr", w, w=w)


def _micro(b: _Builder) -> None:
    """Microstructure proxies: illiquidity, spreads, price impact, efficiency, variance ratios,
    autocorrelation, up-bar share, wicks."""
    for w in (16, 96):
        b.add(f"amihud_{w}", "amihud", max(w, 95), w=w, vol_w=96)
    for w in (32, 96):
        b.add(f"roll_spread_{w}", "roll_spread", w + 1, w=w)
    for w in (16, 48):
        b.add(f"cs_spread_{w}", "cs_spread", w, w=w)
    b.add("kyle_lambda_48", "kyle_lambda", 48, w=48)
    for w in (10, 32, 96):
        b.add(f"efficiency_{w}", "efficiency", w, w=w)
    b.add("body_eff_16", "body_eff", 15, w=16)
    for k in (2, 4, 8):
        b.add(f"var_ratio_{k}", "var_ratio", k + 95, k=k, w=96)
    for lag, w in ((1, 48), (1, 96), (2, 96)):
        b.add(f"autocorr_{lag}_{w}", "autocorr", w + lag, lag=lag, w=w)
    for w in (16, 48):
        b.add(f"up_frac_{w}", "up_frac", w, w=w)
    for w in (16, 48):
        b.add(f"wick_ratio_{w}", "wick_ratio", w - 1, w=w)
    b.add("clv_mean_16", "clv_mean", 15, w=16)


def _regime(b: _Builder) -> None:
    """Realised-volatility regimes: estimators, ratios, percentiles, higher moments, jumps."""
    for w in (4, 8, 16, 32, 48, 96, 192):
        b.add(f"rv_{w}", "rv", w, w=w)
    for name in ("parkinson", "garman_klass", "rogers_satchell"):
        for w in (16, 48, 96):
            b.add(f"{name}_{w}", name, w - 1, w=w)
    for w in (16, 48):
        b.add(f"yang_zhang_{w}", "yang_zhang", w, w=w)
    for fast, slow in ((4, 48), (16, 96), (48, 192)):
        b.add(f"rv_ratio_{fast}_{slow}", "rv_ratio", slow, fast=fast, slow=slow)
    b.add("rv_pct_16_96", "rv_pct", 16 + 95, rv_w=16, w=96)
    b.add("range_pct_96", "range_pct", 95, w=96)
    for w in (48, 96):
        b.add(f"downside_vol_{w}", "downside_vol", w, w=w)
        b.add(f"upside_vol_{w}", "upside_vol", w, w=w)
    for w in (48, 96):
        b.add(f"skew_{w}", "skew", w, w=w)
        b.add(f"kurt_{w}", "kurt", w, w=w)
    b.add("vol_of_vol_16_96", "vol_of_vol", 16 + 95, rv_w=16, w=96)
    b.add("jump_ratio_48", "jump_ratio", 49, w=48)
    tf, ts = wilder_taps(7), wilder_taps(28)
    b.add("atr_ratio_7_28", "atr_ratio", max(tf, ts), fast=7, slow=28, taps_fast=tf, taps_slow=ts)


def _rally(b: _Builder) -> None:
    """Rally and drawdown: distance from highs and lows, their extremes, time since, z-scores."""
    for w in (16, 48, 96, 192):
        b.add(f"dd_{w}", "dd", w - 1, w=w)
        b.add(f"ru_{w}", "ru", w - 1, w=w)
    for w in (48, 96):
        b.add(f"mdd_{w}", "mdd", w - 1, w=w)
        b.add(f"mru_{w}", "mru", w - 1, w=w)
    for w in (96, 192):
        b.add(f"since_high_{w}", "since_high", w, w=w)
        b.add(f"since_low_{w}", "since_low", w, w=w)
    for w in (16, 96):
        b.add(f"dd_z_{w}", "dd_z", max(w - 1, 96), w=w, vol_w=96)
        b.add(f"ru_z_{w}", "ru_z", max(w - 1, 96), w=w, vol_w=96)


def _time(b: _Builder) -> None:
    """Time of day and day of week of the bar's end, as bounded cyclic encodings."""
    for harmonic in (1, 2):
        suffix = "" if harmonic == 1 else str(harmonic)
        b.add(f"tod{suffix}_sin", "time", 0, period="day", harmonic=harmonic, fn="sin")
        b.add(f"tod{suffix}_cos", "time", 0, period="day", harmonic=harmonic, fn="cos")
    b.add("dow_sin", "time", 0, period="week", harmonic=1, fn="sin")
    b.add("dow_cos", "time", 0, period="week", harmonic=1, fn="cos")


# Every group in spec order, with the steps that add its features in order.
_STEPS: tuple[tuple[str, Callable[[_Builder], None]], ...] = (
    ("price", _price),
    ("trend", _trend_averages),
    ("trend", _trend_direction),
    ("trend", _trend_oscillators),
    ("momentum", _momentum),
    ("volatility", _volatility),
    ("volume", _volume),
    ("micro", _micro),
    ("regime", _regime),
    ("rally", _rally),
    ("time", _time),
)


def _build() -> tuple[FeatureDef, ...]:
    b = _Builder()
    for group, add_features in _STEPS:
        b.group = group
        add_features(b)
    return tuple(b.features)


FEATURE_SPEC = FeatureSpec(version=SPEC_VERSION, features=_build())
