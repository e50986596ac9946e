"""One quality pass, free of Celery: score the due outcomes, then judge the champion (tasks.quality,
``mlsignals signals score``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core.logging import get_logger
from core.settings import Settings
from ml.registry import Registry
from quality.breaker import TRIPPED, evaluate
from quality.outcomes import OutcomeScorer

log = get_logger(__name__)


def run_quality(
    engine: Engine,
    settings: Settings,
    *,
    exchange: str,
    registry: Registry,
    now: datetime | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """Score what is due (from ``since`` when given), then the breaker; a JSON-ready summary."""
    scorer = OutcomeScorer(engine, settings, exchange=exchange, configs=registry.model_config)
    report = scorer.score_due(now, since=since)
    champion = registry.aliases().get("champion")
    verdict = evaluate(engine, settings, champion)
    if verdict.state == TRIPPED:
        log.error("quality breaker tripped: new entries halted", reason=verdict.reason)
    log.info(
        "signal outcomes scored",
        minutes=report.minutes,
        resolved=report.resolved,
        unresolved=report.unresolved,
        seconds=round(report.seconds, 3),
        breaker=verdict.state,
    )
    return {
        "outcomes": report.as_dict(),
        "breaker": {
            "state": verdict.state,
            "model_version": verdict.model_version,
            "horizon_bars": verdict.horizon_bars,
            "reason": verdict.reason,
            "figures": verdict.figures,
        },
    }
