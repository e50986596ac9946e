"""The quality circuit breaker: halts new entries when the champion's live signals stop working.

After each scoring pass (tasks.quality) it looks at the champion's newest
``quality.breaker.window_signals`` resolved actionable signals at the breaker's horizon that were
stored after the last resume (signals it made as a shadow challenger count too: the same weights
made them). Once there are at least ``min_samples``, it trips when their hit rate is below
``hit_rate_floor`` or the mean per-minute IC (every signal of those minutes) is below ``ic_floor``.
A trip turns the kill switch on with the reason ``quality_breaker: …`` (open positions keep their
stops and targets: only entries stop) and records the figures in ``quality_events``, in one
transaction. Trading resumes only by ``mlsignals trading resume`` or when another model becomes
champion (promotion or rollback); both are recorded too, and the window starts again there. While
the kill switch is on for any reason the breaker judges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from core.settings import Settings
from ml.outputs import horizon_label
from quality.events import (
    BREAKER,
    REASON_CODE,
    RESUME,
    TRIP,
    last_event,
    record,
    resume_after_promotion,
)
from quality.outcomes import HORIZONS
from quality.rolling import ic_figures, load_outcomes
from trading.accounts import halt_state, set_halted

# Verdicts of one evaluation.
OK, TRIPPED, INSUFFICIENT, HALTED, RESUMED, DISABLED, NO_CHAMPION = (
    "ok",
    "tripped",
    "insufficient",
    "halted",
    "resumed",
    "disabled",
    "no_champion",
)


@dataclass
class Verdict:
    state: str
    model_version: str | None = None
    horizon_bars: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def breaker_horizon(settings: Settings) -> int:
    index = settings.quality.breaker.horizon
    return HORIZONS[settings.decoding.primary_horizon if index is None else index]


def evaluate(engine: Engine, settings: Settings, champion: str | None) -> Verdict:
    """Judge the champion once; trips the kill switch when its live quality is below the floors."""
    cfg = settings.quality.breaker
    h = breaker_horizon(settings)
    if not cfg.enabled:
        return Verdict(DISABLED, champion, h)
    if resume_after_promotion(engine, settings, champion):
        return Verdict(RESUMED, champion, h, reason="champion changed")
    halted, why = halt_state(engine, settings)
    if halted:
        return Verdict(HALTED, champion, h, reason=why)
    if champion is None:
        return Verdict(NO_CHAMPION, None, h)
    resumed = last_event(engine, RESUME)
    after = resumed.at if resumed is not None else None
    acted = load_outcomes(
        engine, champion, h, made_after=after, limit=cfg.window_signals, actionable_only=True
    )
    figures: dict[str, Any] = {
        "horizon": horizon_label(h, settings.data.bar_minutes),
        "actionable": acted.size,
        "min_samples": cfg.min_samples,
        "after": after.isoformat() if after else None,
    }
    if acted.size < cfg.min_samples:
        return Verdict(INSUFFICIENT, champion, h, figures)
    oldest = datetime.fromtimestamp(int(acted.minute_ms[0]) / 1000, UTC)
    every = load_outcomes(engine, champion, h, since=oldest, made_after=after)
    ic = ic_figures(every, h, settings.data.bar_minutes)
    hit_rate = float(acted.correct.mean())
    figures |= {
        "hit_rate": hit_rate,
        "hit_rate_floor": cfg.hit_rate_floor,
        "ic": ic["mean"],
        "ic_t": ic["t"],
        "ic_minutes": ic["minutes"],
        "ic_floor": cfg.ic_floor,
        "first_minute": oldest.isoformat(),
    }
    failures = []
    if hit_rate < cfg.hit_rate_floor:
        failures.append(f"hit rate {hit_rate:.3f} < {cfg.hit_rate_floor:.3f}")
    if ic["mean"] is not None and ic["mean"] < cfg.ic_floor:
        failures.append(f"IC {ic['mean']:+.4f} < {cfg.ic_floor:+.4f}")
    if not failures:
        return Verdict(OK, champion, h, figures)
    reason = (
        f"{REASON_CODE}: champion {champion} at {figures['horizon']}: {' and '.join(failures)} "
        f"over {acted.size} resolved actionable signals"
    )
    set_halted(engine, settings, True, reason, also=record(TRIP, BREAKER, champion, reason, figures))
    return Verdict(TRIPPED, champion, h, figures, reason)
