"""Risk limits checked before any order (docs/TRADING.md); pure functions over an account snapshot.

Each limit has its own rejection code, stored on the intent as ``"<code>: <detail>"``. The checks
run in two stages around the one thing an intent may do even when its entry is refused:

1. **signal checks** (``check_signal``): expiry, kill switch, minimum confidence. An intent that
   fails them does nothing at all.
2. an opposite signal then closes the symbol's open positions (the executor does that);
3. **entry checks** (``check_entry``, then ``check_exposure`` once the entry is sized): cooldown,
   max signals per symbol, max open positions, daily loss limit, max exposure per symbol and total.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from core.settings import Settings


class Rejection(StrEnum):
    EXPIRED = "expired"
    KILL_SWITCH = "kill_switch"
    MIN_CONFIDENCE = "min_confidence"
    COOLDOWN = "cooldown"
    MAX_SIGNALS_PER_SYMBOL = "max_signals_per_symbol"
    MAX_OPEN_POSITIONS = "max_open_positions"
    DAILY_LOSS_LIMIT = "daily_loss_limit"
    MAX_EXPOSURE_PER_SYMBOL = "max_exposure_per_symbol"
    MAX_EXPOSURE_TOTAL = "max_exposure_total"
    # From sizing (trading.sizing) and the brokers:
    NO_STOP_LOSS = "no_stop_loss"
    BELOW_MIN_NOTIONAL = "below_min_notional"
    NO_EQUITY = "no_equity"
    EXCHANGE = "exchange"


def reason(code: Rejection, detail: str) -> str:
    return f"{code.value}: {detail}"


def code_of(text: str | None) -> str | None:
    """The rejection code at the start of a stored reason."""
    return None if not text else text.split(":", 1)[0]


@dataclass(frozen=True)
class RiskLimits:
    min_confidence: float
    max_open_positions: int  # 0: no limit
    max_exposure_total: float  # multiple of equity
    max_exposure_per_symbol: float  # multiple of equity
    max_signals_per_symbol: int
    cooldown_minutes: int  # 0: none
    daily_loss_limit: float  # fraction of the day's starting equity

    @classmethod
    def from_settings(cls, settings: Settings) -> RiskLimits:
        t = settings.trading
        threshold = settings.ml_integration.signals.confidence_threshold
        return cls(
            min_confidence=threshold if t.min_confidence is None else t.min_confidence,
            max_open_positions=t.max_open_positions,
            max_exposure_total=t.max_exposure_total,
            max_exposure_per_symbol=t.max_exposure_per_symbol,
            max_signals_per_symbol=settings.ml_integration.signals.max_signals_per_symbol,
            cooldown_minutes=t.cooldown_minutes,
            daily_loss_limit=t.daily_loss_limit,
        )

    def describe(self) -> dict[str, str]:
        """Each limit as the operator reads it (``mlsignals trading status``)."""
        return {
            "min_confidence": f"{self.min_confidence:.2f}",
            "max_open_positions": str(self.max_open_positions or "no limit"),
            "max_exposure_total": f"{self.max_exposure_total:g} x equity",
            "max_exposure_per_symbol": f"{self.max_exposure_per_symbol:g} x equity",
            "max_signals_per_symbol": str(self.max_signals_per_symbol),
            "cooldown": f"{self.cooldown_minutes} min" if self.cooldown_minutes else "none",
            "daily_loss_limit": f"{self.daily_loss_limit:.1%} of the day's starting equity",
        }


@dataclass(frozen=True)
class AccountSnapshot:
    """What the checks need, read while holding the account lock.

    Open entries are open positions plus accepted entry orders not yet filled (a pending order is a
    position a moment later); positions being closed by an opposite signal no longer count.
    """

    equity: float
    day_start_equity: float
    halted: bool
    halt_reason: str | None
    open_entries: int
    exposure_total: float
    symbol_entries: int
    symbol_exposure: float
    last_entry_minute: datetime | None


def check_signal(
    *,
    confidence: float,
    valid_until: datetime | None,
    now: datetime,
    halted: bool,
    halt_reason: str | None,
    limits: RiskLimits,
) -> str | None:
    if valid_until is not None and now > valid_until:
        return reason(Rejection.EXPIRED, f"signal expired at {valid_until:%Y-%m-%d %H:%M:%S} UTC")
    if halted:
        return reason(Rejection.KILL_SWITCH, f"trading is halted ({halt_reason or 'no reason given'})")
    if confidence < limits.min_confidence:
        return reason(
            Rejection.MIN_CONFIDENCE, f"confidence {confidence:.3f} below {limits.min_confidence:.3f}"
        )
    return None


def check_entry(*, minute: datetime, snapshot: AccountSnapshot, limits: RiskLimits) -> str | None:
    s = snapshot
    if limits.cooldown_minutes and s.last_entry_minute is not None:
        ready = s.last_entry_minute + timedelta(minutes=limits.cooldown_minutes)
        if minute < ready:
            return reason(
                Rejection.COOLDOWN,
                f"last entry at {s.last_entry_minute:%H:%M}, next allowed at {ready:%H:%M} UTC "
                f"({limits.cooldown_minutes} min cooldown)",
            )
    if s.symbol_entries >= limits.max_signals_per_symbol:
        return reason(
            Rejection.MAX_SIGNALS_PER_SYMBOL,
            f"{s.symbol_entries} open entries in this symbol, limit {limits.max_signals_per_symbol}",
        )
    if limits.max_open_positions and s.open_entries >= limits.max_open_positions:
        return reason(
            Rejection.MAX_OPEN_POSITIONS,
            f"{s.open_entries} positions open or pending, limit {limits.max_open_positions}",
        )
    floor = -limits.daily_loss_limit * s.day_start_equity
    day_pnl = s.equity - s.day_start_equity
    if day_pnl <= floor:
        return reason(
            Rejection.DAILY_LOSS_LIMIT,
            f"today's PnL {day_pnl:.2f} reached the limit {floor:.2f} "
            f"({limits.daily_loss_limit:.1%} of {s.day_start_equity:.2f})",
        )
    return None


def check_exposure(*, notional: float, snapshot: AccountSnapshot, limits: RiskLimits) -> str | None:
    s = snapshot
    symbol_cap = limits.max_exposure_per_symbol * s.equity
    if s.symbol_exposure + notional > symbol_cap:
        return reason(
            Rejection.MAX_EXPOSURE_PER_SYMBOL,
            f"{s.symbol_exposure:.2f} + {notional:.2f} exceeds {symbol_cap:.2f} "
            f"({limits.max_exposure_per_symbol:g} x equity)",
        )
    total_cap = limits.max_exposure_total * s.equity
    if s.exposure_total + notional > total_cap:
        return reason(
            Rejection.MAX_EXPOSURE_TOTAL,
            f"{s.exposure_total:.2f} + {notional:.2f} exceeds {total_cap:.2f} "
            f"({limits.max_exposure_total:g} x equity)",
        )
    return None
