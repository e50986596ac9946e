"""The single beat schedule (after PostHog): every periodic task of the system is here."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from core.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.ml_integration.scheduler.interval_seconds
    # A minute's run expires before the next one fires: a late run never runs on stale data.
    expires = min(settings.pipeline.max_start_delay_seconds, interval - 1)
    every: Any = crontab(minute="*") if interval == 60 else float(interval)
    schedule: dict[str, dict[str, Any]] = {
        "run-minute": {
            "task": "tasks.pipeline.run_minute",
            "schedule": every,
            "options": {"expires": expires},
        },
        # Sees each running minute through: re-dispatches a stalled one, closes a lost one.
        "supervise-minutes": {
            "task": "tasks.pipeline.supervise",
            "schedule": settings.pipeline.supervise_interval_seconds,
            "options": {"expires": settings.pipeline.supervise_interval_seconds},
        },
    }
    if settings.quality.enabled:
        # Outcomes of the signals whose horizons have passed, then the quality circuit breaker.
        schedule["score-signal-outcomes"] = {
            "task": "tasks.quality.score",
            "schedule": settings.quality.interval_seconds,
            "options": {"expires": settings.quality.interval_seconds},
        }
    return schedule
