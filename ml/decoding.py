"""The one place where the model's 20 outputs become probabilities, classes, returns, risk and a signal.

Rules (docs/SIGNALS.md has the full table and the configuration keys):

* per horizon, probabilities are ``softmax(logits / T)`` over [LONG, SHORT, FLAT] with the model's
  learned temperature ``T``; the horizon's class is the argmax (ties go to the first of LONG,
  SHORT, FLAT);
* returns are ``tanh output * return_scale`` and risk ``softplus output * risk_scale``
  (fractions of the entry price), the scales coming from the version's output schema;
* the signal reads the primary horizon only and is cost-aware, the same for LONG and SHORT: the
  *expected edge* is the returns head's predicted return there (an estimate of the conditional mean
  market-neutral return); its sign proposes the direction. The signal is that direction only when
  (1) ``|predicted return|`` exceeds the round-trip cost (fees and slippage of ``trading.*``, both
  ways) plus ``edge_margin``, (2) the calibrated probabilities agree: the direction's class is more
  likely than the opposite one, and (3) that probability, the *confidence*, is at least
  ``confidence_threshold`` (a floor, not the decision). Otherwise NEUTRAL. ``edge`` is the predicted
  return in the signal's direction minus the round-trip cost (negative for NEUTRAL rows whose best
  side does not pay);
* the adverse risk of a LONG is the predicted drawdown, of a SHORT the predicted rally, over the
  risk window that covers the horizon (4 bars for horizons up to 4, else 16); the stop-loss
  distance is ``clamp(stop_loss_risk_multiple * adverse, min_stop_fraction, max_stop_fraction)``,
  the take-profit distance the same with ``take_profit_risk_multiple``; a LONG has its stop below
  and its target above the entry, a SHORT the mirror image, a NEUTRAL neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError
from core.settings import Settings
from ml.model.schema import DEFAULT_OUTPUT_SCHEMA, OutputSchema

FloatArray = npt.NDArray[np.float64]

LONG, SHORT, NEUTRAL = 0, 1, 2
SIGNAL_DIRECTIONS: tuple[str, ...] = ("LONG", "SHORT", "NEUTRAL")


@dataclass(frozen=True)
class DecodeRules:
    primary_horizon: int = 1
    confidence_threshold: float = 0.4
    # Fractions of the entry price: fees + slippage, entry and exit; and the edge demanded beyond it.
    round_trip_cost: float = 0.0015
    edge_margin: float = 0.0005
    stop_loss_risk_multiple: float = 1.0
    take_profit_risk_multiple: float = 1.5
    min_stop_fraction: float = 0.002
    max_stop_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ConfigError(f"confidence_threshold {self.confidence_threshold} is outside [0, 1]")
        if not 0.0 < self.min_stop_fraction <= self.max_stop_fraction < 1.0:
            raise ConfigError(
                f"need 0 < min_stop_fraction ({self.min_stop_fraction}) <= max_stop_fraction "
                f"({self.max_stop_fraction}) < 1"
            )
        if self.round_trip_cost < 0 or self.edge_margin < 0:
            raise ConfigError("round_trip_cost and edge_margin must not be negative")
        if self.stop_loss_risk_multiple <= 0 or self.take_profit_risk_multiple <= 0:
            raise ConfigError("risk multiples must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeRules:
        d = settings.decoding
        return cls(
            primary_horizon=d.primary_horizon,
            confidence_threshold=settings.ml_integration.signals.confidence_threshold,
            round_trip_cost=round_trip_cost(settings),
            edge_margin=d.edge_margin_bps / 1e4,
            stop_loss_risk_multiple=d.stop_loss_risk_multiple,
            take_profit_risk_multiple=d.take_profit_risk_multiple,
            min_stop_fraction=d.min_stop_fraction,
            max_stop_fraction=d.max_stop_fraction,
        )


def round_trip_cost(settings: Settings) -> float:
    """Fees and slippage of one entry and one exit, as a fraction of the price (``trading.*``)."""
    t = settings.trading
    return 2.0 * (t.fee_bps + t.slippage_bps) / 1e4


@dataclass(frozen=True)
class DecodedArrays:
    """Vectorised decoding of a batch; ``stop_loss``/``take_profit`` are NaN for NEUTRAL."""

    probabilities: FloatArray  # [B, H, 3] LONG, SHORT, FLAT
    classes: npt.NDArray[np.int64]  # [B, H] argmax per horizon (0 LONG, 1 SHORT, 2 FLAT)
    returns: FloatArray  # [B, H] fractions
    risk: FloatArray  # [B, 4] fractions, schema.risk_names order
    direction: npt.NDArray[np.int64]  # [B] 0 LONG, 1 SHORT, 2 NEUTRAL
    confidence: FloatArray  # [B] probability of the direction's class (of the proposed one if NEUTRAL)
    edge: FloatArray  # [B] predicted return in the proposed direction minus the round-trip cost
    entry: FloatArray  # [B]
    stop_loss: FloatArray  # [B]
    take_profit: FloatArray  # [B]


@dataclass(frozen=True)
class DecodedSignal:
    direction: str  # LONG / SHORT / NEUTRAL
    confidence: float
    edge: float  # predicted return in the direction minus the round-trip cost (fraction)
    entry_price: float
    stop_loss: float | None
    take_profit: float | None
    primary_horizon: int  # index into horizons
    horizons: tuple[int, ...]  # bars
    probabilities: tuple[tuple[float, float, float], ...]  # per horizon: LONG, SHORT, FLAT
    classes: tuple[str, ...]  # per horizon: LONG / SHORT / FLAT
    returns: tuple[float, ...]  # per horizon, fraction of the entry price
    risk: tuple[float, ...]  # schema.risk_names order, fractions of the entry price
    risk_names: tuple[str, ...]


def softmax(logits: FloatArray, temperature: float) -> FloatArray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: FloatArray = e / e.sum(axis=-1, keepdims=True)
    return out


def risk_columns(schema: OutputSchema, horizon: int) -> tuple[int, int]:
    """(drawdown, rally) columns of the risk window covering ``horizon`` bars: the shortest window at
    least as long as the horizon, else the longest."""
    windows = sorted(set(schema.risk_windows))
    window = next((w for w in windows if w >= horizon), windows[-1])
    cols = {
        name.split("_")[0]: i
        for i, (name, w) in enumerate(zip(schema.risk_names, schema.risk_windows, strict=True))
        if w == window
    }
    return cols["drawdown"], cols["rally"]


def decode_arrays(
    outputs: npt.ArrayLike,
    temperature: float,
    prices: npt.ArrayLike,
    rules: DecodeRules,
    schema: OutputSchema = DEFAULT_OUTPUT_SCHEMA,
) -> DecodedArrays:
    out = np.asarray(outputs, dtype=np.float64)
    entry = np.asarray(prices, dtype=np.float64).reshape(-1)
    n_h = len(schema.horizons)
    n_c = len(schema.direction_classes)
    if out.ndim != 2 or out.shape[1] != schema.n_outputs:
        raise ValueError(f"outputs must be [batch, {schema.n_outputs}], got {out.shape}")
    if entry.shape[0] != out.shape[0]:
        raise ValueError(f"{out.shape[0]} outputs but {entry.shape[0]} entry prices")
    if not (np.isfinite(entry).all() and (entry > 0).all()):
        raise ValueError("entry prices must be finite and positive")
    if not np.isfinite(out).all():
        raise ValueError("model outputs hold non-finite values")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and positive, got {temperature}")
    if not 0 <= rules.primary_horizon < n_h:
        raise ConfigError(f"primary_horizon {rules.primary_horizon} is not one of 0..{n_h - 1}")

    returns = out[:, :n_h] * np.asarray(schema.return_scales)
    logits = out[:, n_h : n_h + n_h * n_c].reshape(-1, n_h, n_c)
    probs = softmax(logits, temperature)
    classes = probs.argmax(axis=-1)
    risk = out[:, n_h + n_h * n_c :] * np.asarray(schema.risk_scales)

    p = rules.primary_horizon
    long_c, short_c = schema.direction_classes.index("LONG"), schema.direction_classes.index("SHORT")
    predicted = returns[:, p]
    side = np.where(predicted >= 0.0, LONG, SHORT)
    p_long, p_short = probs[:, p, long_c], probs[:, p, short_c]
    confidence = np.where(side == LONG, p_long, p_short)
    agree = np.where(side == LONG, p_long > p_short, p_short > p_long)
    edge = np.abs(predicted) - rules.round_trip_cost
    pays = edge > rules.edge_margin
    direction = np.where(pays & agree & (confidence >= rules.confidence_threshold), side, NEUTRAL)

    dd_col, ru_col = risk_columns(schema, schema.horizons[p])
    adverse = np.where(direction == SHORT, risk[:, ru_col], risk[:, dd_col])
    lo, hi = rules.min_stop_fraction, rules.max_stop_fraction
    stop_frac = np.clip(rules.stop_loss_risk_multiple * adverse, lo, hi)
    take_frac = np.clip(rules.take_profit_risk_multiple * adverse, lo, hi)
    sign = np.where(direction == LONG, 1.0, -1.0)
    stop = np.where(direction == NEUTRAL, np.nan, entry * (1.0 - sign * stop_frac))
    take = np.where(direction == NEUTRAL, np.nan, entry * (1.0 + sign * take_frac))
    return DecodedArrays(probs, classes, returns, risk, direction, confidence, edge, entry, stop, take)


def decode(
    outputs: npt.ArrayLike,
    temperature: float,
    prices: npt.ArrayLike,
    settings: Settings | DecodeRules,
    schema: OutputSchema = DEFAULT_OUTPUT_SCHEMA,
) -> list[DecodedSignal]:
    """One ``DecodedSignal`` per row of ``outputs`` (``[batch, 20]``), ``prices`` the entry references."""
    rules = settings if isinstance(settings, DecodeRules) else DecodeRules.from_settings(settings)
    d = decode_arrays(outputs, temperature, prices, rules, schema)
    classes = schema.direction_classes
    horizons, risk_names = tuple(schema.horizons), tuple(schema.risk_names)
    # ``tolist`` turns whole arrays into Python floats at once (the same values ``float`` gives one by
    # one, at a fraction of the cost: this runs for every symbol of every minute).
    probabilities, returns, risk = d.probabilities.tolist(), d.returns.tolist(), d.risk.tolist()
    class_codes, direction = d.classes.tolist(), d.direction.tolist()
    confidence, edge, entry = d.confidence.tolist(), d.edge.tolist(), d.entry.tolist()
    stop_loss, take_profit = d.stop_loss.tolist(), d.take_profit.tolist()
    return [
        DecodedSignal(
            direction=SIGNAL_DIRECTIONS[direction[i]],
            confidence=confidence[i],
            edge=edge[i],
            entry_price=entry[i],
            stop_loss=None if math.isnan(stop_loss[i]) else stop_loss[i],
            take_profit=None if math.isnan(take_profit[i]) else take_profit[i],
            primary_horizon=rules.primary_horizon,
            horizons=horizons,
            probabilities=tuple(map(tuple, probabilities[i])),
            classes=tuple(classes[k] for k in class_codes[i]),
            returns=tuple(returns[i]),
            risk=tuple(risk[i]),
            risk_names=risk_names,
        )
        for i in range(len(direction))
    ]


def directions(names: Sequence[str]) -> npt.NDArray[np.int64]:
    """Direction names back to codes (tests and evaluation)."""
    return np.array([SIGNAL_DIRECTIONS.index(n) for n in names], dtype=np.int64)
