"""The live quality of a model version's signals as ``mlsignals signals quality`` and the MCP tool
``signal_quality`` give it: the rolling report (``quality.report``) plus the trading switch's state
and the breaker's newest events (docs/SIGNAL_QUALITY.md)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.settings import Settings
from quality.events import events
from quality.report import quality_report
from trading.accounts import halt_state

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ml.registry import Registry

HORIZON_LABELS = {"15m": 1, "1h": 4, "4h": 16, "12h": 48}
BREAKER_EVENTS = 10


def parse_horizon(value: str | None) -> tuple[int, ...] | None:
    """``15m``/``1h``/``4h``/``12h`` or a number of bars; None: every horizon."""
    if value is None:
        return None
    if value in HORIZON_LABELS:
        return (HORIZON_LABELS[value],)
    if value.isdigit() and int(value) in HORIZON_LABELS.values():
        return (int(value),)
    raise ConfigError(
        f"unknown horizon {value!r}: use one of {', '.join(HORIZON_LABELS)} (or 1, 4, 16, 48 bars)"
    )


def report_version(registry: Registry, model: str) -> str:
    """The version ``model`` (an alias or a version id) names; a version no longer in the registry
    is taken as it is (its outcomes are still stored). An alias nobody holds is an error."""
    from ml.registry import RegistryError

    try:
        return registry.resolve(model)
    except RegistryError:
        if model in {"champion", "challenger"}:
            raise
        return model


def live_quality(
    engine: Engine,
    settings: Settings,
    version: str,
    *,
    horizons: Sequence[int],
    since: datetime | None = None,
    breaker_events: int = BREAKER_EVENTS,
) -> dict[str, Any]:
    """``quality_report`` of ``version`` with ``trading`` (``{"halted", "reason"}``) and the newest
    ``breaker_events`` events (``at`` as ISO text)."""
    report = quality_report(engine, settings, version, horizons=horizons, since=since)
    halted, why = halt_state(engine, settings)
    report["trading"] = {"halted": halted, "reason": why}
    report["breaker_events"] = [
        {**e, "at": e["at"].isoformat()} for e in events(engine, limit=breaker_events)
    ]
    return report


def has_outcomes(engine: Engine, version: str) -> bool:
    """Whether any signal of ``version`` has been scored (an index probe: outcomes lead with the version)."""
    from sqlalchemy import select

    from data.models import SignalOutcome

    stmt = select(SignalOutcome.model_version).where(SignalOutcome.model_version == version).limit(1)
    with engine.connect() as conn:
        return conn.execute(stmt).first() is not None
