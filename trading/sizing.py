"""Position size from equity, risk per trade, stop distance and confidence (docs/TRADING.md).

The rule, in order:

1. ``risk budget = equity * risk_per_trade``: what the trade may lose if its stop-loss is hit;
2. ``scale = confidence_scale(confidence)``: ``min_scale`` at the confidence threshold, rising
   linearly to 1 at confidence 1 (clipped to ``[min_scale, 1]``);
3. ``qty = risk budget * scale / |entry - stop_loss|``: the loss at the stop equals the scaled
   budget (fees and slippage come on top);
4. capped so that ``qty * entry <= equity * max_leverage``;
5. rounded **down** to the market's quantity step (never more risk than budgeted);
6. rejected when the result is below the market's minimum quantity or minimum notional.

Pure functions: no database, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

# Tolerance for float noise in "how many lot steps fit": 37.5 / 0.1 must count 375 steps, not 374.
_STEP_EPSILON = 1e-9


@dataclass(frozen=True)
class MarketRules:
    """What the market accepts: quantity step (lot size), minimum quantity and minimum notional."""

    qty_step: float
    min_qty: float = 0.0
    min_notional: float = 0.0


@dataclass(frozen=True)
class SizingRules:
    risk_per_trade: float
    confidence_threshold: float
    min_scale: float
    max_leverage: float


@dataclass(frozen=True)
class SizeResult:
    """``qty`` is 0 when rejected; ``reason`` then says why (a ``risk`` rejection code first)."""

    qty: float
    notional: float
    scale: float
    risk_amount: float  # the loss at the stop-loss for ``qty`` (before fees and slippage)
    capped_by_leverage: bool
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def confidence_scale(confidence: float, threshold: float, min_scale: float) -> float:
    """Linear from ``min_scale`` at ``threshold`` to 1 at confidence 1, clipped to ``[min_scale, 1]``."""
    if threshold >= 1.0:
        return 1.0 if confidence >= 1.0 else min_scale
    fraction = (confidence - threshold) / (1.0 - threshold)
    return min_scale + (1.0 - min_scale) * min(max(fraction, 0.0), 1.0)


def round_down(qty: float, step: float) -> float:
    """``qty`` rounded down to a whole number of ``step``, with as many decimals as the step has."""
    steps = math.floor(qty / step + _STEP_EPSILON)
    exponent = Decimal(str(step)).as_tuple().exponent
    decimals = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return float(round(max(steps, 0) * step, decimals))


def size_position(
    *,
    equity: float,
    entry: float,
    stop_loss: float | None,
    confidence: float,
    rules: SizingRules,
    market: MarketRules,
) -> SizeResult:
    """Apply the rule of the module docstring; never raises for an unusable signal, it rejects."""
    if equity <= 0:
        return _rejected("no_equity", f"account equity is {equity:.2f}")
    if stop_loss is None or stop_loss <= 0:
        return _rejected("no_stop_loss", "the signal carries no stop-loss: the risk cannot be sized")
    distance = abs(entry - stop_loss)
    if distance <= 0:
        return _rejected("no_stop_loss", f"stop-loss {stop_loss} equals the entry price")
    scale = confidence_scale(confidence, rules.confidence_threshold, rules.min_scale)
    budget = equity * rules.risk_per_trade * scale
    raw = budget / distance
    cap = equity * rules.max_leverage / entry
    capped = raw > cap
    qty = round_down(min(raw, cap), market.qty_step)
    notional = qty * entry
    if qty <= 0 or qty < market.min_qty or notional < market.min_notional:
        return SizeResult(
            0.0,
            0.0,
            scale,
            0.0,
            capped,
            f"below_min_notional: size {qty:g} ({notional:.2f} notional) is below the market minimum "
            f"(qty {market.min_qty:g}, notional {market.min_notional:g}, step {market.qty_step:g})",
        )
    return SizeResult(qty, notional, scale, qty * distance, capped)


def _rejected(code: str, detail: str) -> SizeResult:
    return SizeResult(0.0, 0.0, 0.0, 0.0, False, f"{code}: {detail}")
