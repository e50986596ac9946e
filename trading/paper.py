"""The paper broker's fill model: pure functions over 1-minute candles (docs/TRADING.md).

* A market order (entry, or the close of an opposite signal) fills at the **open of the first
  1-minute candle that opens at or after the signal's minute**: the signal of minute M was computed
  from candles closed by M, so the candle opening at M is the first one it did not see. That
  candle closes at M+1, so an order usually waits as ``pending`` until a later step finds it.
* Slippage (``slippage_bps``) moves every market fill against the trader: buys higher, sells lower.
* Every open position is checked against each new candle, the fill candle included: a long's
  stop-loss triggers when ``low <= stop``, its take-profit when ``high >= target`` (a short: the
  mirror image). When one candle reaches both, **the stop-loss is assumed to come first**: a
  1-minute candle does not say which came first, and assuming the worse outcome keeps paper results
  from flattering the strategy.
* A stop is a market order once triggered: it fills at the stop price, or at the candle's open when
  the candle opened beyond it (a gap), then slippage. A take-profit is a resting limit order: it
  fills at its price, or at a better open, without slippage.
* A flatten (``mlsignals trading flatten``) closes at once at the position's mark, the close of
  the newest closed candle, as a market order: with slippage.
* Fees (``fee_bps``) are charged on the notional of every fill.
"""

from __future__ import annotations

from dataclasses import dataclass

LONG, SHORT = "long", "short"
BUY, SELL = "buy", "sell"
STOP_LOSS, TAKE_PROFIT, OPPOSITE_SIGNAL = "stop_loss", "take_profit", "opposite_signal"
FLATTEN = "flatten"  # the operator's ``mlsignals trading flatten``
# Why a position closed (``trading_positions.exit_reason``, ``trading_fills.kind``); the live account
# also has ``closed_on_exchange`` (trading.execution.live).
EXIT_REASONS = (STOP_LOSS, TAKE_PROFIT, OPPOSITE_SIGNAL, FLATTEN)


@dataclass(frozen=True)
class Candle:
    open_time: int
    open: float
    high: float
    low: float
    close: float


@dataclass(frozen=True)
class FillModel:
    fee_bps: float
    slippage_bps: float

    def market_price(self, price: float, side: str) -> float:
        """``price`` moved against a market order of ``side``."""
        slip = self.slippage_bps / 10_000
        return price * (1 + slip) if side == BUY else price * (1 - slip)

    def fee(self, price: float, qty: float) -> float:
        return abs(price * qty) * self.fee_bps / 10_000


def entry_side(position_side: str) -> str:
    return BUY if position_side == LONG else SELL


def exit_side(position_side: str) -> str:
    return SELL if position_side == LONG else BUY


def gross_pnl(position_side: str, qty: float, entry: float, exit_price: float) -> float:
    move = exit_price - entry if position_side == LONG else entry - exit_price
    return move * qty


def exit_on_candle(
    side: str, stop_loss: float | None, take_profit: float | None, candle: Candle
) -> tuple[str, float] | None:
    """``(reason, trigger price)`` when the candle reaches the stop or the target, else ``None``.

    The price is before slippage: the stop price (or a worse open), the target (or a better open).
    The stop-loss is checked first: see the module docstring.
    """
    if side == LONG:
        if stop_loss is not None and candle.low <= stop_loss:
            return STOP_LOSS, min(candle.open, stop_loss)
        if take_profit is not None and candle.high >= take_profit:
            return TAKE_PROFIT, max(candle.open, take_profit)
        return None
    if stop_loss is not None and candle.high >= stop_loss:
        return STOP_LOSS, max(candle.open, stop_loss)
    if take_profit is not None and candle.low <= take_profit:
        return TAKE_PROFIT, min(candle.open, take_profit)
    return None


def exit_fill_price(model: FillModel, side: str, exit_reason: str, trigger: float) -> float:
    """A stop (or any market exit) slips; a take-profit limit does not."""
    return trigger if exit_reason == TAKE_PROFIT else model.market_price(trigger, exit_side(side))
