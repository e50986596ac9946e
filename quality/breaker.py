"""The quality circuit breaker: halts new entries when the champion's live signals stop working.

After each scoring pass (tasks.quality) it looks at the champion's newest
``quality.breaker.window_signals`` resolved actionable signals at the breaker's horizon that were
stored after the last resume (signals it made as a shadow challenger count too: the same weights
made them), widened to every such signal of the last ``min_periods`` periods of the horizon when
they span fewer (nearby minutes share most of their outcome, and a window of one or two periods
measures little). Once there are at least ``min_samples`` over at least ``min_periods`` periods, it
trips when their hit rate is below ``hit_rate_floor`` or the mean IC of the window's bars (every
signal of the newest minute of each bar, which the bar's other minutes share their outcome with)
is below ``ic_floor``.
A trip turns the kill switch on with the reason ``quality_breaker: …`` (open positions keep their
stops and targets: only entries stop) and records the figures in ``quality_events``, in one
transaction. Trading resumes only by ``mlsignals trading resume`` or when another model becomes
champion (promotion or rollback); both are recorded too, and the window starts again there. While
the kill switch is on for any reason the breaker judges nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core.settings import Settings
from core.timegrid import MINUTE_MS, ms_to_dt
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
from quality.rolling import ic_figures, load_outcomes, span_periods
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
    h = breaker_horizon(settings)
    if not settings.quality.breaker.enabled:
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
    figures = measure(engine, settings, champion, after=after)
    if "hit_rate" not in figures:
        return Verdict(INSUFFICIENT, champion, h, figures)
    failures = shortfalls(figures)
    if not failures:
        return Verdict(OK, champion, h, figures)
    reason = (
        f"{REASON_CODE}: champion {champion} at {figures['horizon']}: {' and '.join(failures)} "
        f"over {figures['actionable']} resolved actionable signals"
    )
    set_halted(engine, settings, True, reason, also=record(TRIP, BREAKER, champion, reason, figures))
    return Verdict(TRIPPED, champion, h, figures, reason)


def measure(
    engine: Engine,
    settings: Settings,
    version: str,
    *,
    after: datetime | None = None,
    min_samples: int | None = None,
) -> dict[str, Any]:
    """The breaker's figures for ``version``: its newest ``window_signals`` resolved actionable
    signals at the breaker's horizon stored after ``after`` (every one of the last ``min_periods``
    periods when those span fewer), their hit rate, and the mean IC of their bars. Below
    ``min_samples`` (default: the breaker's) or ``min_periods`` only the counts, no hit rate."""
    cfg = settings.quality.breaker
    minimum = cfg.min_samples if min_samples is None else min_samples
    h = breaker_horizon(settings)
    period_ms = h * settings.data.bar_minutes * MINUTE_MS
    acted = load_outcomes(
        engine, version, h, made_after=after, limit=cfg.window_signals, actionable_only=True
    )
    periods = span_periods(acted.minute_ms, period_ms)
    if acted.size and periods < cfg.min_periods:
        since = ms_to_dt(int(acted.minute_ms[-1]) - (cfg.min_periods - 1) * period_ms)
        acted = load_outcomes(engine, version, h, since=since, made_after=after, actionable_only=True)
        periods = span_periods(acted.minute_ms, period_ms)
    figures: dict[str, Any] = {
        "horizon": horizon_label(h, settings.data.bar_minutes),
        "actionable": acted.size,
        "min_samples": minimum,
        "periods": periods,
        "min_periods": cfg.min_periods,
        "after": after.isoformat() if after else None,
    }
    if acted.size < max(minimum, 1) or periods < cfg.min_periods:
        return figures
    # One minute per bar: the minutes of a bar share their outcome, so the bar's newest minute carries
    # its IC, and a window widened to hours of a 500-symbol universe loads thousands of rows, not
    # a hundred thousand.
    bar_ms = settings.data.bar_minutes * MINUTE_MS
    newest_per_bar = {int(m) // bar_ms: int(m) for m in acted.minute_ms}  # oldest first: the last wins
    every = load_outcomes(
        engine, version, h, made_after=after, minutes=[ms_to_dt(m) for m in newest_per_bar.values()]
    )
    ic = ic_figures(every, h, settings.data.bar_minutes)
    return figures | {
        "hit_rate": float(acted.correct.mean()),
        "hit_rate_floor": cfg.hit_rate_floor,
        "ic": ic["mean"],
        "ic_t": ic["t"],
        "ic_minutes": ic["minutes"],
        "ic_floor": cfg.ic_floor,
        "first_minute": ms_to_dt(int(acted.minute_ms[0])).isoformat(),
    }


def shortfalls(figures: dict[str, Any]) -> list[str]:
    """What in ``measure``'s figures is below its floor, in words; empty when nothing is."""
    failures = []
    if figures["hit_rate"] < figures["hit_rate_floor"]:
        failures.append(f"hit rate {figures['hit_rate']:.3f} < {figures['hit_rate_floor']:.3f}")
    if figures["ic"] is not None and figures["ic"] < figures["ic_floor"]:
        failures.append(f"IC {figures['ic']:+.4f} < {figures['ic_floor']:+.4f}")
    return failures
