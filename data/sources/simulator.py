"""A deterministic, seeded market of many perpetual swaps that yields closed 1-minute candles for any range.

Construction (docs/SIMULATOR.md has the full story). Every random number is a pure function of
``(seed, symbol, UTC day)`` (or of a 2-hour block, for the symbol states), so any range can be
produced without replaying history, two fetches that split a range anywhere agree exactly, and other
processes see the same market.

* **Levels.** A symbol's log-price at each UTC midnight is
  ``log(base) + λ·A(d) + μ·I(d)``: ``A`` is a market level and ``I`` the symbol's own, both in units
  of one day's standard deviation, and ``λ``, ``μ`` are the symbol's daily market and idiosyncratic
  volatilities. ``A`` and ``I`` are pinned to a bounded multi-scale value noise every 32 days and
  are a random walk bridged between those checkpoints, so prices wander but stay near ``base``
  for ever (log-price sd about 0.25), and any day is reached at O(1) cost.
* **Minutes.** Inside a day each component is a walk of Student-t (df 4) shocks scaled by a
  market-wide volatility ``g`` (regime × intraday session pattern × weekend), bridged from the
  level at that midnight to the level at the next one. The bridge spreads the correction in
  proportion to each minute's covariance with the day's total, which keeps the covariance of the
  bridged path equal to that of the free walk: the bridge adds no spurious (anti-)correlation
  as long as the day's level change has the day's expected variance, which the levels ensure.
* **The learnable effect** has two modes (``effect=``). ``"switching"``, the default: every symbol
  has its own hidden state per 2-hour UTC block, hot (about 25 %: idiosyncratic volatility ×1.5,
  volume ×2.5 over quiet, shocks partly revert over the next hour) or quiet (volatility ×0.76,
  shocks continue), so the sign of the idiosyncratic momentum follows a state that only the window's
  realised volatility and volume reveal; ``oracle_forecast`` gives the infeasible best forecast.
  ``"momentum"``: idiosyncratic momentum in the market-wide normal and turbulent regimes, the
  candles of earlier versions bit for bit. See ``SimulatedMarket.effect_description``.

Randomness for the levels uses a counter-based hash (splitmix64) so that any single day's value is
cheap to reach; bulk intraday draws use ``numpy.random.default_rng([seed, tag, symbol, day])``.
Every array is built with a fixed shape per day or per 32-day block, so no result depends on the
range a caller asked for, not even in the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from core.errors import UnknownSymbolError
from core.settings import SimulatorSettings
from core.timegrid import MINUTE_MS
from data.candles import empty_candles

if TYPE_CHECKING:
    import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
UIntArray = npt.NDArray[np.uint64]

DAY_MINUTES = 1440
DAY_MS = DAY_MINUTES * MINUTE_MS
REGIME_MINUTES = 240  # regimes last 4 hours, so a UTC day holds exactly six
REGIMES_PER_DAY = DAY_MINUTES // REGIME_MINUTES
BLOCK_DAYS = 32
MOMENTUM_WINDOW = 60
T_DF = 4.0
_T_UNIT = 1.0 / math.sqrt(T_DF / (T_DF - 2.0))  # Student-t(4) has variance 2; shocks have variance 1
SWITCHING_SHOCK_CAP = 8.0  # sd of a symbol's minute shock, in the switching mode only (see _shocks)
_SQRT_DAY = math.sqrt(DAY_MINUTES)

REGIME_NAMES: tuple[str, ...] = ("calm", "normal", "turbulent")
_REGIME_VOL = np.array([0.6, 1.0, 1.8])
_REGIME_VOLUME = np.array([0.7, 1.0, 1.8])
# k per regime: each of the last 60 idiosyncratic shocks enters the next minute's return with weight
# k/(1 + 60k) (docs/SIMULATOR.md); sized so that 15-minute-bar models can find it, but not easily.
MOMENTUM_K0 = 0.004
_REGIME_MOMENTUM = np.array([0.0, 1.0, 2.0]) * MOMENTUM_K0
# Thresholds on the latent regime variable; they give about 30 % calm, 50 % normal, 20 % turbulent.
_CALM_BELOW = -0.42
_TURBULENT_ABOVE = 0.72
_WEEKEND_VOL = 0.8
_WEEKEND_VOLUME = 0.6

# The "switching" effect: every symbol has its own hidden state per 2-hour UTC block, hot (about 25 %)
# or quiet. Hot blocks have ×1.5 idiosyncratic volatility, a volume surge and reverting shocks; quiet
# blocks have less volatility (so that the expected variance stays nominal) and continuing shocks.
Effect = Literal["switching", "momentum"]
EFFECTS: tuple[Effect, ...] = ("switching", "momentum")
STATE_MINUTES = 120
STATES_PER_DAY = DAY_MINUTES // STATE_MINUTES
STATE_NAMES: tuple[str, ...] = ("quiet", "hot")
HOT_SHARE = 0.25
_HOT_ABOVE = 0.6744897501960817  # the 75 % quantile of N(0, 1): the latent is exactly N(0, 1)
_STATE_MEMORY = 3  # the latent averages the hashed normals of a block and the two before it
HOT_VOL = 1.5
QUIET_VOL = math.sqrt((1.0 - HOT_SHARE * HOT_VOL**2) / (1.0 - HOT_SHARE))  # E[vol²] = 1: about 0.764
_STATE_VOL = np.array([QUIET_VOL, HOT_VOL])
HOT_VOLUME_RATIO = 2.5  # hot over quiet; both scaled so that the expected volume stays nominal
_QUIET_VOLUME = 1.0 / (1.0 - HOT_SHARE + HOT_SHARE * HOT_VOLUME_RATIO)
_STATE_VOLUME = np.array([_QUIET_VOLUME, HOT_VOLUME_RATIO * _QUIET_VOLUME])
# k per state, of the minute of the shock: quiet shocks continue, hot shocks partly revert.
K_QUIET = 0.008
K_HOT = -0.006
_STATE_MOMENTUM = np.array([K_QUIET, K_HOT])
# Amplitude, in daily standard deviations, of the level checkpoints (value noise on 1..8 blocks).
_CHECKPOINT_SD = 5.0
_CHECKPOINT_SCALES = (1, 2, 4, 8)
_DAY_KEY_OFFSET = 1 << 40  # SeedSequence wants non-negative words; days before 1970 stay distinct

# Hash tags keep the streams apart.
_TAG_PARAMS = 1
_TAG_REGIME = 2
_TAG_MARKET_DAY = 3
_TAG_MARKET_CHECKPOINT = 4
_TAG_IDIO_DAY = 5
_TAG_IDIO_CHECKPOINT = 6
_TAG_MARKET_MINUTES = 7
_TAG_SYMBOL_MINUTES = 8
_TAG_STATE = 9

_MASK64 = (1 << 64) - 1

# (ticker, base price, daily volatility, share of variance from the market, USD volume per minute)
_LISTED: tuple[tuple[str, float, float, float, float], ...] = (
    ("BTC", 60_000.0, 0.025, 0.85, 4.0e6),
    ("ETH", 3_000.0, 0.032, 0.75, 2.0e6),
    ("SOL", 150.0, 0.045, 0.60, 8.0e5),
    ("XRP", 0.6, 0.040, 0.50, 4.0e5),
    ("BNB", 580.0, 0.030, 0.55, 1.5e5),
    ("DOGE", 0.12, 0.050, 0.50, 4.0e5),
    ("ADA", 0.45, 0.045, 0.50, 1.5e5),
    ("AVAX", 30.0, 0.050, 0.50, 1.2e5),
    ("LINK", 14.0, 0.048, 0.50, 1.0e5),
    ("DOT", 6.0, 0.045, 0.50, 6.0e4),
    ("TRX", 0.15, 0.025, 0.30, 4.0e4),
    ("LTC", 75.0, 0.040, 0.50, 8.0e4),
    ("BCH", 380.0, 0.042, 0.50, 6.0e4),
    ("NEAR", 5.0, 0.055, 0.45, 6.0e4),
    ("POL", 0.45, 0.050, 0.45, 3.0e4),
    ("UNI", 8.0, 0.050, 0.45, 4.0e4),
    ("ATOM", 7.0, 0.045, 0.45, 3.0e4),
    ("ETC", 22.0, 0.040, 0.45, 3.0e4),
    ("XLM", 0.1, 0.040, 0.40, 2.0e4),
    ("APT", 8.0, 0.055, 0.45, 4.0e4),
    ("ARB", 0.8, 0.055, 0.45, 5.0e4),
    ("OP", 1.8, 0.055, 0.45, 4.0e4),
    ("FIL", 4.5, 0.050, 0.45, 3.0e4),
    ("INJ", 22.0, 0.060, 0.45, 4.0e4),
    ("SUI", 1.2, 0.065, 0.40, 8.0e4),
    ("SEI", 0.35, 0.065, 0.40, 3.0e4),
    ("TIA", 6.0, 0.065, 0.40, 3.0e4),
    ("AAVE", 150.0, 0.050, 0.45, 4.0e4),
    ("MKR", 2_000.0, 0.045, 0.40, 2.0e4),
    ("LDO", 1.5, 0.055, 0.45, 3.0e4),
    ("RUNE", 4.0, 0.060, 0.40, 3.0e4),
    ("1000PEPE", 0.011, 0.070, 0.40, 2.0e5),
    ("WIF", 2.0, 0.080, 0.35, 1.5e5),
    ("TON", 5.5, 0.040, 0.30, 4.0e4),
    ("HBAR", 0.07, 0.050, 0.40, 2.0e4),
    ("ICP", 9.0, 0.050, 0.40, 2.0e4),
    ("ALGO", 0.15, 0.045, 0.40, 1.5e4),
    ("GALA", 0.025, 0.060, 0.40, 2.0e4),
    ("ENA", 0.5, 0.070, 0.40, 6.0e4),
    ("FET", 1.3, 0.065, 0.40, 5.0e4),
)
_QUOTE_SUFFIX = "/USDT:USDT"
_MIN_BASE, _MAX_BASE = 0.01, 100_000.0


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = (np.uint64(n) for n in (11, 27, 30, 31))


def _splitmix(x: UIntArray) -> UIntArray:
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    return x ^ (x >> _S31)


def _hash(seed: int, *keys: int | IntArray) -> UIntArray:
    h = _splitmix(np.array([seed & _MASK64], dtype=np.uint64))
    for key in keys:
        # astype wraps negative keys (days before 1970) to two's complement instead of failing.
        h = _splitmix(h ^ np.asarray(key, dtype=np.int64).astype(np.uint64))
    return h


def _to_unit(bits: UIntArray) -> FloatArray:
    """Uniform on the open interval (0, 1), so that logs never see zero."""
    return ((bits >> _S11).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def _uniform(seed: int, *keys: int | IntArray) -> FloatArray:
    return _to_unit(_hash(seed, *keys))


def _normal(seed: int, *keys: int | IntArray) -> FloatArray:
    h = _hash(seed, *keys)
    u1 = _to_unit(_splitmix(h))
    u2 = _to_unit(_splitmix(h ^ np.uint64(1)))
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def _session_profile() -> FloatArray:
    """Relative activity by minute of the UTC day: Asian, European and (largest) US session bumps."""
    hour = (np.arange(DAY_MINUTES) + 0.5) / 60.0

    def bump(centre: float, width: float) -> FloatArray:
        dist = np.abs(hour - centre)
        dist = np.minimum(dist, 24.0 - dist)
        activity: FloatArray = np.exp(-0.5 * (dist / width) ** 2)
        return activity

    profile = 0.55 + 0.35 * bump(2.0, 2.0) + 0.45 * bump(8.5, 1.8) + 0.9 * bump(14.5, 2.2)
    relative: FloatArray = profile / profile.mean()
    return relative


_VOLUME_SEASON = _session_profile()
_VOL_SEASON = np.sqrt(_VOLUME_SEASON)  # mean square 1, so a normal weekday has the nominal volatility
_SEASON_VAR_PER_REGIME = (_VOL_SEASON**2).reshape(REGIMES_PER_DAY, REGIME_MINUTES).sum(axis=1)
_SEASON_VAR_PER_STATE = (_VOL_SEASON**2).reshape(STATES_PER_DAY, STATE_MINUTES).sum(axis=1)
# How many of a day's minutes each shock of [previous hour, day] pushes: 60, fewer near midnight.
_MINUTE_EXT = np.arange(MOMENTUM_WINDOW + DAY_MINUTES) - MOMENTUM_WINDOW
_REACH = (
    np.minimum(_MINUTE_EXT + MOMENTUM_WINDOW, DAY_MINUTES - 1) - np.maximum(_MINUTE_EXT + 1, 0) + 1
).astype(np.float64)


@dataclass(frozen=True, slots=True)
class _DayProfile:
    """Market-wide, symbol-free structure of one UTC day."""

    regime: IntArray  # [6] regime code of each 4-hour block
    g: FloatArray  # [1440] volatility multiplier of each minute
    g_ext: FloatArray  # [60 + 1440] the same, preceded by the previous day's last hour
    direct: FloatArray  # [1440] weight of a minute's own shock in its return
    kappa: FloatArray  # [1440] weight of each of the 60 previous shocks in a minute's return
    w_market: FloatArray  # [1440] bridge weights of the market walk at minute ends
    w_idio: FloatArray  # [1440] bridge weights of the idiosyncratic walk at minute ends
    weekend: bool


@dataclass(frozen=True, slots=True)
class _SwitchingDay:
    """One symbol-day's idiosyncratic structure in the "switching" mode (docs/SIMULATOR.md)."""

    hot: npt.NDArray[np.bool_]  # [60 + 1440] hidden state of each minute, previous hour first
    scale: FloatArray  # [60 + 1440] g·v: the market-wide multiplier times the state's volatility
    direct: FloatArray  # [60 + 1440] weight of a shock in the return of its own minute
    kappa: FloatArray  # [60 + 1440] weight of a shock in each of the next 60 minutes' returns
    w_idio: FloatArray  # [1440] bridge weights of the idiosyncratic walk at minute ends


@dataclass(frozen=True, slots=True)
class _Symbol:
    log_base: float
    lam: float  # daily volatility from the market factor
    mu: float  # daily idiosyncratic volatility
    usd_per_minute: float
    price_decimals: int
    volume_decimals: int


@dataclass(frozen=True, slots=True)
class _DayCandles:
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    turnover: FloatArray


def _ticker(i: int) -> str:
    return _LISTED[i][0] if i < len(_LISTED) else f"SIM{i:04d}"


class SimulatedMarket:
    """A seeded market of ``universe_size`` USDT perpetuals; implements ``CandleSource``."""

    name = "simulator"
    effect_description = (
        "Two modes (effect=...). 'switching' (the default): state-dependent idiosyncratic momentum. "
        "Each symbol has its own hidden state per 2-hour UTC block: hot with probability 0.25 (a "
        "persistent latent: after a hot block the next is hot about 58 % of the time) or quiet. Hot "
        f"blocks have idiosyncratic volatility ×{HOT_VOL:g} and {HOT_VOLUME_RATIO:g} times the quiet "
        f"blocks' volume; quiet blocks have volatility ×{QUIET_VOL:.2f}, so the expected variance is "
        "nominal. Each minute's idiosyncratic return is d_t·x_t + Σ_{j=1..60} κ_{t-j}·x_{t-j}, where "
        "x = g·v·ε are the symbol's Student-t(4) shocks scaled by the market-wide volatility g and the "
        "state's v, d = 1/(1+60k) and κ = k/(1+60k), with k of the shock's own minute: "
        f"k = {K_QUIET:g} in quiet blocks (a shock continues over the next hour) and {K_HOT:g} in hot "
        "ones (a shock moves the price 1/(1+60k) at once and gives back part of it over the next "
        "hour). Measured with seed 7 on 15-minute bars of the first 50 symbols, 2024-01-01 to "
        "2024-01-08, the mean per-bar-close cross-sectional Spearman IC of the past 1 h return with the "
        "next 1 h return is 0.11 in quiet cells, -0.21 in hot cells and -0.02 overall (with "
        "effect_strength=0: -0.01, -0.02 and -0.01); the oracle forecast (oracle_forecast) reaches 0.21. "
        "'momentum': regime-dependent idiosyncratic momentum, the same formula with k of the receiving "
        f"minute's market-wide regime: 0 calm, {MOMENTUM_K0:g} normal, {2 * MOMENTUM_K0:g} turbulent; "
        "IC 0.11 overall on the first 30 symbols (0.01 calm, 0.07 normal, 0.15 turbulent), -0.01 with "
        "effect_strength=0. The market factor has no momentum in either mode, so the effect is "
        "cross-sectional. See docs/SIMULATOR.md."
    )

    def __init__(
        self,
        seed: int = 7,
        universe_size: int = 1000,
        *,
        effect_strength: float = 1.0,
        effect: Effect = "switching",
    ) -> None:
        """``effect`` picks the learnable effect: ``"switching"`` (per-symbol hot/quiet states, the
        default) or ``"momentum"`` (market-wide-regime momentum, the candles of earlier versions).
        ``effect_strength`` scales k (0 turns the learnable effect off, for control experiments;
        in the switching mode the states still set volatility and volume)."""
        if universe_size < 1:
            raise ValueError(f"universe_size must be at least 1, got {universe_size}")
        if effect_strength < 0:
            raise ValueError(f"effect_strength must be non-negative, got {effect_strength}")
        if effect not in EFFECTS:
            raise ValueError(f"effect must be one of {EFFECTS}, got {effect!r}")
        if effect == "switching" and 1.0 + MOMENTUM_WINDOW * K_HOT * effect_strength <= 0.0:
            limit = -1.0 / (MOMENTUM_WINDOW * K_HOT)
            raise ValueError(
                f"effect_strength must be below {limit:.4g} in the switching mode, got {effect_strength}"
            )
        self.seed = seed
        self.universe_size = universe_size
        self.effect_strength = effect_strength
        self.effect: Effect = effect
        self._seed_u = seed & _MASK64
        self._names = [f"{_ticker(i)}{_QUOTE_SUFFIX}" for i in range(universe_size)]
        self._index = {name: i for i, name in enumerate(self._names)}
        # Symbol parameters are drawn on first use: a worker that trades 50 symbols never pays for 1000.
        self._symbol = lru_cache(maxsize=None)(self._make_symbol)
        # About 60 kB per cached day; 512 days keep a year-long backfill, symbol after symbol, warm.
        self._profile = lru_cache(maxsize=512)(self._compute_profile)
        self._block_variances = lru_cache(maxsize=1024)(self._compute_block_variances)
        self._market_block = lru_cache(maxsize=1024)(self._compute_market_block)
        self._market_day = lru_cache(maxsize=512)(self._compute_market_day)
        self._idio_block = lru_cache(maxsize=8192)(self._compute_idio_block)
        self._state_block = lru_cache(maxsize=8192)(self._compute_state_block)  # 3 kB each
        # Per-state constants of the switching mode, scaled by the strength once.
        k = _STATE_MOMENTUM * effect_strength
        self._state_direct = 1.0 / (1.0 + MOMENTUM_WINDOW * k)
        self._state_kappa = k * self._state_direct

    @classmethod
    def from_settings(cls, settings: SimulatorSettings) -> SimulatedMarket:
        return cls(seed=settings.seed, universe_size=settings.universe_size, effect=settings.effect)

    # The caches wrap bound methods and cannot be pickled; the market is rebuilt from its parameters.
    def __reduce__(
        self,
    ) -> tuple[Callable[[int, int, float, Effect], SimulatedMarket], tuple[int, int, float, Effect]]:
        return _restore, (self.seed, self.universe_size, self.effect_strength, self.effect)

    def __repr__(self) -> str:
        return (
            f"SimulatedMarket(seed={self.seed}, universe_size={self.universe_size}, "
            f"effect_strength={self.effect_strength}, effect={self.effect!r})"
        )

    # -- CandleSource ---------------------------------------------------------------------------

    def list_symbols(self) -> list[str]:
        return list(self._names)

    def fetch(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        import pandas as pd

        i = self._symbol_index(symbol)
        span = _minute_span(start_ms, end_ms)
        if span is None:
            return empty_candles()
        first, last = span
        d0, d1 = first // DAY_MS, last // DAY_MS
        days: list[_DayCandles] = []
        prev_shocks: FloatArray | None = None
        for d in range(d0, d1 + 1):
            candles, prev_shocks = self._day(i, d, prev_shocks)
            days.append(candles)
        lo = (first - d0 * DAY_MS) // MINUTE_MS
        hi = lo + (last - first) // MINUTE_MS + 1
        open_time = np.arange(first, last + 1, MINUTE_MS, dtype=np.int64)
        columns: dict[str, npt.NDArray[np.generic]] = {"open_time": open_time}
        for col in ("open", "high", "low", "close", "volume", "turnover"):
            parts = [getattr(day, col) for day in days]
            columns[col] = (parts[0] if len(parts) == 1 else np.concatenate(parts))[lo:hi]
        return pd.DataFrame(columns)

    # -- introspection for tests, docs and experiments -------------------------------------------

    def base_price(self, symbol: str) -> float:
        """The level a symbol's price wanders around: log-price sd about 0.25 from it, never near ×/÷ 20."""
        return math.exp(self._symbol(self._symbol_index(symbol)).log_base)

    def regime_at(self, ts_ms: int) -> str:
        """The market-wide regime (``calm``, ``normal`` or ``turbulent``) of the minute at ``ts_ms``."""
        block = int(ts_ms) // (REGIME_MINUTES * MINUTE_MS)
        return REGIME_NAMES[int(self._regimes(np.array([block], dtype=np.int64))[0])]

    def state_at(self, symbol: str, ts_ms: int) -> str:
        """The hidden state (``quiet`` or ``hot``) of ``symbol`` in the minute at ``ts_ms``.

        Only the switching market has symbol states; the momentum market raises ``ValueError``.
        """
        i = self._switching_symbol(symbol, "state_at")
        block = int(ts_ms) // (STATE_MINUTES * MINUTE_MS)
        return STATE_NAMES[int(self._hot(i, np.array([block], dtype=np.int64))[0])]

    def hot_minutes(self, symbol: str, start_ms: int, end_ms: int) -> npt.NDArray[np.bool_]:
        """True for each minute that ``fetch(symbol, start_ms, end_ms)`` returns whose state is hot."""
        i = self._switching_symbol(symbol, "hot_minutes")
        span = _minute_span(start_ms, end_ms)
        if span is None:
            return np.zeros(0, dtype=np.bool_)
        first, last = span
        block = np.arange(first, last + 1, MINUTE_MS, dtype=np.int64) // (STATE_MINUTES * MINUTE_MS)
        hot = self._hot(i, np.arange(block[0], block[-1] + 1, dtype=np.int64))
        mask: npt.NDArray[np.bool_] = hot[block - block[0]]
        return mask

    def oracle_forecast(
        self, symbol: str, start_ms: int, end_ms: int, horizon_minutes: int = 60
    ) -> pd.Series:
        """The infeasible best forecast of the idiosyncratic log return over the next ``horizon_minutes``.

        One value per minute that ``fetch(symbol, start_ms, end_ms)`` returns, indexed by that
        minute's close time (``open_time + 60 000``, named ``anchor_ms``): the expected idiosyncratic
        log return from that close to ``horizon_minutes`` later under the true model, given the
        symbol's idiosyncratic path up to the anchor (which the candles mix with the market factor)
        and the hidden states and regimes. The path is turned back into shocks by inverting the
        model (a banded triangular solve, started a day early), so the midnight bridge's pull
        towards the next day's level, which a model cannot know, does not leak into the forecast.
        Future shocks and the market factor are unpredictable and not in it. Shocks act for 60
        minutes, so horizons beyond 60 give the 60-minute value. Both effect modes; 0 with
        ``effect_strength=0``.
        """
        import pandas as pd
        from scipy.linalg.lapack import dtbtrs

        if horizon_minutes < 1:
            raise ValueError(f"horizon_minutes must be at least 1, got {horizon_minutes}")
        i = self._symbol_index(symbol)
        span = _minute_span(start_ms, end_ms)
        name = f"oracle_{horizon_minutes}m"
        if span is None:
            return pd.Series(
                np.zeros(0), index=pd.Index(np.zeros(0, dtype=np.int64), name="anchor_ms"), name=name
            )
        first, last = span
        w = MOMENTUM_WINDOW
        d0, d1 = first // DAY_MS, last // DAY_MS
        days = range(d0 - 1, d1 + 1)  # a day early, so that the inversion forgets its start
        # Unknowns: the previous hour's shocks (pinned to their true values), then every minute's.
        prev_shocks, _ = self._shocks(i, d0 - 2)
        increments: list[FloatArray] = []
        direct: list[FloatArray] = [np.ones(w)]
        kappa: list[FloatArray] = []
        for n, d in enumerate(days):
            shocks, _ = self._shocks(i, d)
            idio, switching = self._idio_walk(i, d, prev_shocks, shocks)
            if n == 0:
                scale = self._profile(d).g_ext if switching is None else switching.scale
                increments.append(scale[:w] * prev_shocks[-w:])
            increments.append(np.diff(idio, prepend=0.0))
            if switching is None:
                direct.append(self._profile(d).direct)
                kappa.append(self._profile(d).kappa)
            else:
                direct.append(switching.direct[w:])
                kappa.append(switching.kappa[w:] if n else switching.kappa)
            prev_shocks = shocks
        # The momentum mode's k is the receiving minute's: the next day's first hour is needed too.
        kappa.append(self._profile(d1 + 1).kappa[:w] if self.effect == "momentum" else np.zeros(0))
        rhs = np.concatenate(increments)
        k_all = np.concatenate(kappa)
        size = rhs.size
        # Lower band storage: band[r, s] is the weight of the shock of minute s in minute s + r's return.
        band = np.zeros((w + 1, size))
        band[0] = np.concatenate(direct)
        rows = np.arange(size)[None, :] + np.arange(1, w + 1)[:, None]
        if self.effect == "switching":
            weights = np.broadcast_to(k_all, (w, size))  # the shock's own kappa
        else:
            weights = np.concatenate([np.zeros(w), k_all])[np.minimum(rows, size + w - 1)]  # the receiver's
        band[1:] = np.where((rows >= w) & (rows < size), weights, 0.0)
        solved, info = dtbtrs(band, rhs[:, None], uplo="L")
        if info != 0:  # pragma: no cover - the diagonal is positive
            raise RuntimeError(f"dtbtrs failed with info={info}")
        shock = solved[:, 0]
        # Anchors: the index of each requested minute among the unknowns.
        t = w + (np.arange(first, last + 1, MINUTE_MS, dtype=np.int64) - (d0 - 1) * DAY_MS) // MINUTE_MS
        h = min(int(horizon_minutes), w)
        forecast = np.zeros(t.size)
        if self.effect == "switching":
            # A shock j minutes old (j = 0: the anchor's own minute) still pushes each of the next
            # min(h, 60 - j) minutes by its own kappa.
            y = k_all * shock
            for j in range(w):
                forecast += min(h, w - j) * y[t - j]
        else:
            # Minute t + a gets its own kappa times the known shocks among the 60 minutes before it.
            k_ext = np.concatenate([np.zeros(w), k_all])
            c = np.cumsum(shock)
            for a in range(1, h + 1):
                forecast += k_ext[t + a] * (c[t] - c[t + a - w - 1])
        forecast *= self._symbol(i).mu / _SQRT_DAY
        index = pd.Index(np.arange(first, last + 1, MINUTE_MS, dtype=np.int64) + MINUTE_MS, name="anchor_ms")
        return pd.Series(forecast, index=index, name=name)

    # -- symbols ----------------------------------------------------------------------------------

    def _switching_symbol(self, symbol: str, what: str) -> int:
        if self.effect != "switching":
            raise ValueError(f"{what}: the {self.effect!r} market has no symbol states")
        return self._symbol_index(symbol)

    def _symbol_index(self, symbol: str) -> int:
        try:
            return self._index[symbol]
        except KeyError:
            raise UnknownSymbolError(
                symbol, self.name, f"the universe has {self.universe_size} symbols"
            ) from None

    def _make_symbol(self, i: int) -> _Symbol:
        if i < len(_LISTED):
            _, base, vol, share, usd = _LISTED[i]
        else:
            # Hashed from the symbol's index alone, so it does not depend on the universe size.
            u = _uniform(self._seed_u, _TAG_PARAMS, i, np.arange(4, dtype=np.int64))
            base = math.exp(math.log(_MIN_BASE) + float(u[0]) * math.log(_MAX_BASE / _MIN_BASE))
            vol = math.exp(math.log(0.03) + float(u[1]) * math.log(0.08 / 0.03))
            share = 0.2 + 0.4 * float(u[2])
            usd = math.exp(math.log(2e3) + float(u[3]) * math.log(2e5 / 2e3))
        return _Symbol(
            log_base=math.log(base),
            lam=vol * math.sqrt(share),
            mu=vol * math.sqrt(1.0 - share),
            usd_per_minute=usd,
            # Five significant digits at the base level, four for the typical minute volume.
            price_decimals=4 - math.floor(math.log10(base)),
            volume_decimals=3 - math.floor(math.log10(usd / base)),
        )

    # -- market-wide structure ---------------------------------------------------------------------

    def _regimes(self, blocks: IntArray) -> IntArray:
        """Regime codes of 4-hour blocks: a persistent latent (weekly + daily value noise + block noise)."""
        # All five noise terms come from one hash call: tiny numpy calls, not arithmetic, cost the time.
        lead = (5,) + (1,) * blocks.ndim
        scales = np.array([42, 42, 6, 6, 1], dtype=np.int64).reshape(lead)
        shift = np.array([0, 1, 0, 1, 0], dtype=np.int64).reshape(lead)
        cells = np.floor_divide(blocks, scales)
        noise = _normal(self._seed_u, _TAG_REGIME, scales, cells + shift)
        week = (blocks - cells[0] * 42) / 42.0
        day = (blocks - cells[2] * 6) / 6.0
        z = (
            0.6 * ((1.0 - week) * noise[0] + week * noise[1])
            + 0.6 * ((1.0 - day) * noise[2] + day * noise[3])
            + 0.5 * noise[4]
        )
        codes = np.ones(blocks.shape, dtype=np.int64)
        codes[z < _CALM_BELOW] = 0
        codes[z > _TURBULENT_ABOVE] = 2
        return codes

    def _compute_profile(self, d: int) -> _DayProfile:
        w = MOMENTUM_WINDOW
        # The previous day is needed too, because the momentum reaches an hour back.
        regime_both = self._regimes(
            (d - 1) * REGIMES_PER_DAY + np.arange(2 * REGIMES_PER_DAY, dtype=np.int64)
        )
        weekend = (d + 3) % 7 >= 5  # 1970-01-01 was a Thursday
        weekend_before = (d + 2) % 7 >= 5
        g_both = np.repeat(_REGIME_VOL[regime_both], REGIME_MINUTES) * np.tile(_VOL_SEASON, 2)
        g_both[:DAY_MINUTES] *= _WEEKEND_VOL if weekend_before else 1.0
        g_both[DAY_MINUTES:] *= _WEEKEND_VOL if weekend else 1.0
        regime = regime_both[REGIMES_PER_DAY:]
        g_ext = g_both[DAY_MINUTES - w :].copy()  # a copy, so the cache does not keep all of g_both
        g = g_ext[w:]
        k = np.repeat(_REGIME_MOMENTUM[regime], REGIME_MINUTES) * self.effect_strength
        direct = 1.0 / (1.0 + k * w)
        kappa = k * direct
        # c_ext[i]: the total weight of shock i (previous hour included) in the day's walk.
        kappa_ext = np.concatenate([np.zeros(w), kappa])
        n = kappa_ext.shape[0]
        cum = np.concatenate([[0.0], np.cumsum(kappa_ext)])
        idx = np.arange(n)
        c_ext = cum[np.minimum(idx + w, n - 1) + 1] - cum[idx + 1]
        c_ext[w:] += direct
        q = g_ext * g_ext * c_ext
        cq = np.concatenate([[0.0], np.cumsum(q)])
        window = cq[w : w + DAY_MINUTES] - cq[:DAY_MINUTES]
        # Cov(return of minute u, day total): the bridge spreads the correction in proportion to it,
        # which leaves the covariance of the bridged path equal to that of the free walk.
        cum_cov = np.cumsum(g * g * c_ext[w:] * direct + kappa * window)
        cum_g2 = np.cumsum(g * g)
        return _DayProfile(
            regime=regime,
            g=g,
            g_ext=g_ext,
            direct=direct,
            kappa=kappa,
            w_market=cum_g2 / cum_g2[-1],
            w_idio=cum_cov / cum_cov[-1],
            weekend=weekend,
        )

    def _compute_block_variances(self, b: int) -> FloatArray:
        """Expected variance of each day's walk in block ``b``, in minute units, from its regimes.

        It is the same for the market and the idiosyncratic walk: the momentum is normalised so that
        a shock's total weight is 1 (to about 1 % near regime changes and midnight).
        """
        days = b * BLOCK_DAYS + np.arange(BLOCK_DAYS, dtype=np.int64)
        regime = self._regimes(days[:, None] * REGIMES_PER_DAY + np.arange(REGIMES_PER_DAY))
        weekend = np.where((days + 3) % 7 >= 5, _WEEKEND_VOL**2, 1.0)
        var: FloatArray = (_REGIME_VOL[regime] ** 2 * _SEASON_VAR_PER_REGIME).sum(axis=1) * weekend
        return var

    def _checkpoints(self, tag: int, i: int, blocks: IntArray) -> FloatArray:
        """Bounded multi-scale value noise in daily standard deviations, at block boundaries."""
        scales = np.array(_CHECKPOINT_SCALES, dtype=np.int64)[:, None]
        cells = np.floor_divide(blocks[None, :], scales)
        frac = (blocks[None, :] - cells * scales) / scales
        noise = _normal(self._seed_u, tag, i, scales[None], cells[None] + np.array([0, 1])[:, None, None])
        amp = _CHECKPOINT_SD * np.sqrt(scales / scales.sum())
        value: FloatArray = (amp * ((1.0 - frac) * noise[0] + frac * noise[1])).sum(axis=0)
        return value

    def _bridge_block(self, tag_day: int, tag_checkpoint: int, i: int, b: int, var: FloatArray) -> FloatArray:
        """Level at each midnight of block ``b`` (33 values): a walk bridged between two checkpoints.

        ``var`` is the expected variance of each day's walk, in minute units.
        """
        days = b * BLOCK_DAYS + np.arange(BLOCK_DAYS, dtype=np.int64)
        steps = np.sqrt(var / DAY_MINUTES) * _normal(self._seed_u, tag_day, i, days)
        walk = np.concatenate([[0.0], np.cumsum(steps)])
        weight = np.concatenate([[0.0], np.cumsum(var)])
        weight /= weight[-1]
        start, end = (float(v) for v in self._checkpoints(tag_checkpoint, i, np.array([b, b + 1])))
        level: FloatArray = start + walk - weight * (walk[-1] - (end - start))
        level[0], level[-1] = start, end
        return level

    def _compute_market_block(self, b: int) -> FloatArray:
        return self._bridge_block(_TAG_MARKET_DAY, _TAG_MARKET_CHECKPOINT, -1, b, self._block_variances(b))

    def _compute_idio_block(self, i: int, b: int) -> FloatArray:
        switching = self.effect == "switching"
        var = self._switching_block_variances(i, b) if switching else self._block_variances(b)
        return self._bridge_block(_TAG_IDIO_DAY, _TAG_IDIO_CHECKPOINT, i, b, var)

    # -- the switching effect's symbol states ------------------------------------------------------------

    def _compute_state_block(self, i: int, b: int) -> IntArray:
        """State code (0 quiet, 1 hot) of symbol ``i`` in each 2-hour block of the 32 days of block ``b``.

        The latent of 2-hour block n is (z_n + z_{n-1} + z_{n-2}) / √3 with z hashed standard normals:
        exactly N(0, 1), so "hot" (latent above its 75 % quantile) has probability 0.25, and
        neighbouring blocks are correlated (latent correlation 2/3 at lag 1, 1/3 at lag 2, 0 beyond).
        Computed with a fixed shape per 32 days, like the levels, so no result depends on the range.
        """
        blocks = b * BLOCK_DAYS * STATES_PER_DAY + np.arange(BLOCK_DAYS * STATES_PER_DAY, dtype=np.int64)
        lags = np.arange(_STATE_MEMORY, dtype=np.int64)
        noise = _normal(self._seed_u, _TAG_STATE, i, blocks[:, None] - lags)
        codes: IntArray = (noise.sum(axis=1) > _HOT_ABOVE * math.sqrt(_STATE_MEMORY)).astype(np.int64)
        return codes

    def _hot(self, i: int, blocks: IntArray) -> npt.NDArray[np.bool_]:
        """Whether symbol ``i`` is hot in each of the (sorted, contiguous) 2-hour ``blocks``."""
        per_block = BLOCK_DAYS * STATES_PER_DAY
        b0, b1 = int(blocks[0]) // per_block, int(blocks[-1]) // per_block
        codes = np.concatenate([self._state_block(i, b) for b in range(b0, b1 + 1)])
        hot: npt.NDArray[np.bool_] = codes[blocks - b0 * per_block].astype(np.bool_)
        return hot

    def _state_codes(self, i: int, d: int) -> IntArray:
        """State code (0 quiet, 1 hot) of the previous day's last hour and of each minute of day ``d``."""
        b, r = divmod(d, BLOCK_DAYS)
        block = self._state_block(i, b)
        today = block[r * STATES_PER_DAY : (r + 1) * STATES_PER_DAY]
        before = int(block[r * STATES_PER_DAY - 1] if r > 0 else self._state_block(i, b - 1)[-1])
        codes: IntArray = np.concatenate(
            [np.full(MOMENTUM_WINDOW, before, dtype=np.int64), np.repeat(today, STATE_MINUTES)]
        )
        return codes

    def _switching_block_variances(self, i: int, b: int) -> FloatArray:
        """Expected variance of each day's idiosyncratic walk of symbol ``i`` in block ``b``, given its
        states (the switching mode): the daily levels then bridge consistently with the minutes."""
        days = b * BLOCK_DAYS + np.arange(BLOCK_DAYS, dtype=np.int64)
        regime = self._regimes(days[:, None] * REGIMES_PER_DAY + np.arange(REGIMES_PER_DAY))
        g2 = np.repeat(_REGIME_VOL[regime] ** 2, REGIME_MINUTES // STATE_MINUTES, axis=1)
        hot = self._state_block(i, b).reshape(BLOCK_DAYS, STATES_PER_DAY)
        weekend = np.where((days + 3) % 7 >= 5, _WEEKEND_VOL**2, 1.0)
        var: FloatArray = (g2 * _SEASON_VAR_PER_STATE * _STATE_VOL[hot] ** 2).sum(axis=1) * weekend
        return var

    def _switching_day(self, i: int, d: int, g_ext: FloatArray) -> _SwitchingDay:
        """Per symbol-day weights of the switching mode: k and the volatility follow the symbol's state."""
        w = MOMENTUM_WINDOW
        codes = self._state_codes(i, d)
        direct = self._state_direct[codes]
        kappa = self._state_kappa[codes]
        scale = g_ext * _STATE_VOL[codes]
        # c[s]: the total weight of shock s (previous hour included) in the day's walk. A shock acts on
        # its own minute (direct) and on each of the next 60 (kappa, the shock's own minute's).
        c = kappa * _REACH
        c[w:] += direct[w:]
        q = scale * scale
        cp = np.concatenate([[0.0], np.cumsum(kappa * c * q)])
        # Cov(return of minute u, day total), as in _compute_profile: the bridge weights.
        cum_cov = np.cumsum(direct[w:] * c[w:] * q[w:] + (cp[w : w + DAY_MINUTES] - cp[:DAY_MINUTES]))
        return _SwitchingDay(
            hot=codes.astype(np.bool_),
            scale=scale,
            direct=direct,
            kappa=kappa,
            w_idio=cum_cov / cum_cov[-1],
        )

    def _effect_terms(self, i: int, d: int) -> tuple[FloatArray, FloatArray]:
        """Day ``d``'s scaled idiosyncratic shocks and the kappa of each minute (for the oracle).

        In the switching mode kappa belongs to the minute of the shock, in the momentum mode to the
        minute that receives the push.
        """
        prof = self._profile(d)
        shocks, _ = self._shocks(i, d)
        if self.effect == "momentum":
            return prof.g * shocks, prof.kappa
        codes = self._state_codes(i, d)[MOMENTUM_WINDOW:]
        return prof.g * _STATE_VOL[codes] * shocks, self._state_kappa[codes]

    def _market_level(self, d: int) -> float:
        b = d // BLOCK_DAYS
        return float(self._market_block(b)[d - b * BLOCK_DAYS])

    def _idio_level(self, i: int, d: int) -> float:
        b = d // BLOCK_DAYS
        return float(self._idio_block(i, b)[d - b * BLOCK_DAYS])

    def _compute_market_day(self, d: int) -> FloatArray:
        """Market level at the 1441 minute boundaries of day ``d``, in daily standard deviations."""
        prof = self._profile(d)
        rng = np.random.default_rng([self._seed_u, _TAG_MARKET_MINUTES, d + _DAY_KEY_OFFSET])
        shocks = rng.standard_t(T_DF, DAY_MINUTES) * _T_UNIT
        walk = np.cumsum(prof.g * shocks)
        a0, a1 = self._market_level(d), self._market_level(d + 1)
        bridged = walk - prof.w_market * (walk[-1] - (a1 - a0) * _SQRT_DAY)
        path = np.empty(DAY_MINUTES + 1)
        path[0] = a0
        path[1:] = a0 + bridged / _SQRT_DAY
        path[-1] = a1
        return path

    # -- one symbol-day ------------------------------------------------------------------------------

    def _log_level(self, i: int, d: int) -> float:
        sym = self._symbol(i)
        return sym.log_base + sym.lam * self._market_level(d) + sym.mu * self._idio_level(i, d)

    def _boundary_price(self, i: int, d: int) -> float:
        # A scalar path, so the close of day d-1 and the open of day d are the same float.
        return round(math.exp(self._log_level(i, d)), self._symbol(i).price_decimals)

    def _shocks(self, i: int, d: int) -> tuple[FloatArray, np.random.Generator]:
        # The shocks are the first draw of the stream, so the next day can regenerate them alone.
        rng = np.random.default_rng([self._seed_u, _TAG_SYMBOL_MINUTES, i, d + _DAY_KEY_OFFSET])
        shocks = rng.standard_t(T_DF, DAY_MINUTES) * _T_UNIT
        if self.effect == "switching":
            # A hot state multiplies the volatility by 1.5 and its reversal moves the price by
            # 1/(1 + 60k) ≈ 1.6 of a shock at once: an uncapped t(4) draw of 30 sd (a few per
            # symbol-year) then makes a 25 % one-minute move, which data validation rightly
            # quarantines. Capped at SWITCHING_SHOCK_CAP sd the tails stay fat (kurtosis ≫ 3).
            np.clip(shocks, -SWITCHING_SHOCK_CAP, SWITCHING_SHOCK_CAP, out=shocks)
        return shocks, rng

    def _idio_walk(
        self, i: int, d: int, prev_shocks: FloatArray, shocks: FloatArray
    ) -> tuple[FloatArray, _SwitchingDay | None]:
        """Day ``d``'s bridged idiosyncratic walk at the 1440 minute ends, in minute units from 0 at
        midnight, and the switching mode's weights (None in the momentum mode)."""
        prof = self._profile(d)
        w = MOMENTUM_WINDOW
        switching = self._switching_day(i, d, prof.g_ext) if self.effect == "switching" else None
        if switching is None:
            # The momentum mode: k is the receiving minute's (market-wide regime).
            scaled = prof.g_ext * np.concatenate([prev_shocks[-w:], shocks])
            cum = np.concatenate([[0.0], np.cumsum(scaled)])
            past_hour = cum[w : w + DAY_MINUTES] - cum[:DAY_MINUTES]
            idio = np.cumsum(prof.direct * scaled[w:] + prof.kappa * past_hour)
            w_idio = prof.w_idio
        else:
            # The switching mode: k and the volatility are the shock's own minute's (symbol state).
            scaled = switching.scale * np.concatenate([prev_shocks[-w:], shocks])
            cum = np.concatenate([[0.0], np.cumsum(switching.kappa * scaled)])
            carried = cum[w : w + DAY_MINUTES] - cum[:DAY_MINUTES]
            idio = np.cumsum(switching.direct[w:] * scaled[w:] + carried)
            w_idio = switching.w_idio
        i0, i1 = self._idio_level(i, d), self._idio_level(i, d + 1)
        bridged: FloatArray = idio - w_idio * (idio[-1] - (i1 - i0) * _SQRT_DAY)
        return bridged, switching

    def _day(self, i: int, d: int, prev_shocks: FloatArray | None) -> tuple[_DayCandles, FloatArray]:
        sym = self._symbol(i)
        prof = self._profile(d)
        w = MOMENTUM_WINDOW
        if prev_shocks is None:
            prev_shocks, _ = self._shocks(i, d - 1)
        shocks, rng = self._shocks(i, d)
        idio, switching = self._idio_walk(i, d, prev_shocks, shocks)
        i0 = self._idio_level(i, d)

        market = self._market_day(d)
        log_p = np.empty(DAY_MINUTES + 1)
        log_p[1:] = sym.log_base + sym.lam * market[1:] + sym.mu * (i0 + idio / _SQRT_DAY)
        log_p[0] = self._log_level(i, d)
        log_p[-1] = self._log_level(i, d + 1)

        tick = 10.0 ** (-sym.price_decimals)
        price = np.maximum(np.round(np.exp(log_p), sym.price_decimals), tick)
        price[0] = max(self._boundary_price(i, d), tick)
        price[-1] = max(self._boundary_price(i, d + 1), tick)
        open_, close = price[:-1], price[1:]

        # High and low: extremes of a Brownian bridge from open to close within the minute.
        step = np.diff(log_p)
        if switching is None:
            sigma = math.hypot(sym.lam, sym.mu) / _SQRT_DAY * prof.g
        else:
            # The minute's actual innovation: the state's volatility times the shock's direct weight.
            idio_sd = sym.mu * _STATE_VOL[switching.hot[w:].astype(np.int64)] * switching.direct[w:]
            sigma = np.hypot(sym.lam, idio_sd) / _SQRT_DAY * prof.g
        expo = rng.standard_exponential((2, DAY_MINUTES))
        up = 0.5 * (step + np.sqrt(step * step + 2.0 * sigma * sigma * expo[0]))
        down = 0.5 * (step - np.sqrt(step * step + 2.0 * sigma * sigma * expo[1]))
        high = np.round(np.exp(log_p[:-1] + up), sym.price_decimals)
        low = np.maximum(np.round(np.exp(log_p[:-1] + down), sym.price_decimals), tick)
        high = np.maximum(high, np.maximum(open_, close))
        low = np.minimum(low, np.minimum(open_, close))

        # Volume follows the session pattern and the regime and rises with the size of the move.
        regime_volume = np.repeat(_REGIME_VOLUME[prof.regime], REGIME_MINUTES)
        surprise = np.abs(step) / sigma
        usd = (
            sym.usd_per_minute
            * _VOLUME_SEASON
            * regime_volume
            * (_WEEKEND_VOLUME if prof.weekend else 1.0)
            * (0.35 + 0.65 * surprise)
            * np.exp(0.5 * rng.standard_normal(DAY_MINUTES) - 0.125)
        )
        if switching is not None:
            usd = usd * _STATE_VOLUME[switching.hot[w:].astype(np.int64)]  # the hot state's volume surge
        volume = np.round(usd / np.exp(log_p[1:]), sym.volume_decimals)
        turnover = volume * (high + low + close) / 3.0
        candles = _DayCandles(open_, high, low, close, volume, turnover)
        return candles, shocks


def _minute_span(start_ms: int, end_ms: int) -> tuple[int, int] | None:
    """Open times of the first and last whole minute in ``[start_ms, end_ms)``, or None when empty."""
    first = -(-int(start_ms) // MINUTE_MS) * MINUTE_MS
    end = int(end_ms)
    if end <= first:
        return None
    return first, (end - 1) // MINUTE_MS * MINUTE_MS


def _restore(
    seed: int, universe_size: int, effect_strength: float, effect: Effect = "momentum"
) -> SimulatedMarket:
    # Pickles made before the switching effect existed carry three arguments: they were momentum markets.
    return SimulatedMarket(seed, universe_size, effect_strength=effect_strength, effect=effect)
