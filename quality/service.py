"""One quality pass, free of Celery: score the due outcomes, then judge the champion, then measure
its feature drift (tasks.quality, ``mlsignals signals score``)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core.logging import get_logger
from core.settings import Settings
from ml.registry import Registry
from quality.breaker import TRIPPED, evaluate
from quality.drift import OK, LiveWindows, run_drift, summarize
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
    windows: LiveWindows | None = None,
) -> dict[str, Any]:
    """Score what is due (from ``since`` when given), then the breaker, then the feature drift of the
    champion's live ``windows`` (when given and ``quality.drift_enabled``); a JSON-ready summary.

    Drift comes last and fails alone: its error is logged and reported under ``drift``, never raised,
    so it can stop neither the outcomes nor the breaker."""
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
        "drift": _drift(engine, settings, registry, windows, champion, now),
    }


def _drift(
    engine: Engine,
    settings: Settings,
    registry: Registry,
    windows: LiveWindows | None,
    champion: str | None,
    now: datetime | None,
) -> dict[str, Any]:
    q = settings.quality
    if not q.drift_enabled:
        return {"status": "disabled"}
    if windows is None:
        return {
            "status": "skipped",
            "reason": "no window store here: the periodic pass (tasks.quality.score) measures drift",
        }
    began = time.perf_counter()
    try:
        result = run_drift(engine, settings, registry=registry, windows=windows, version=champion, now=now)
    except Exception as exc:
        # The pass's boundary: outcomes and the breaker are done; a drift failure (a bad bins file,
        # the window store down, a database error) is reported, and the next pass tries again.
        log.exception("feature drift failed", model_version=champion)
        return {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    doc = summarize(result, q.drift_alert_psi)
    doc["seconds"] = round(time.perf_counter() - began, 4)
    if result.status == OK and doc["major"]:
        log.warning(
            "feature drift above the alert level",
            model_version=result.model_version,
            features=doc["major"],
            alert_psi=q.drift_alert_psi,
            worst=result.worst[:3],
        )
    return doc
