"""``data`` queue: market-data maintenance an operator can trigger with ``celery call``.

Acknowledged on receipt (not late): these run longer than the broker's visibility timeout, and a
redelivery would start a second copy while the first still runs. A lost run is simply run again.
"""

from __future__ import annotations

from typing import Any

from data.ingest import Ingestor
from data.validation import ValidationPolicy
from worker.app import app
from worker.runtime import get_runtime


@app.task(name="tasks.data.sync", acks_late=False, soft_time_limit=600, time_limit=660)
def sync(symbols: list[str] | None = None) -> dict[str, Any]:
    """Fetch the new closed candles of ``symbols`` (default: the configured universe)."""
    rt = get_runtime()
    names = symbols or rt.symbols()
    report = Ingestor(rt.store, rt.source, ValidationPolicy.from_settings(rt.settings)).sync(
        names, initial_minutes=rt.settings.data.sync_initial_minutes
    )
    return {
        "symbols": len(names),
        "inserted": report.inserted,
        "failed": {s: o.rule for s, o in report.failed.items()},
    }


@app.task(
    name="tasks.data.backfill",
    acks_late=False,
    soft_time_limit=3600,
    time_limit=3700,
)
def backfill(days: float, symbols: list[str] | None = None) -> dict[str, Any]:
    """Load ``days`` of history (resumable, idempotent)."""
    rt = get_runtime()
    names = symbols or rt.symbols()
    report = Ingestor(rt.store, rt.source, ValidationPolicy.from_settings(rt.settings)).backfill(names, days)
    return {
        "symbols": len(names),
        "inserted": report.inserted,
        "failed": {s: o.rule for s, o in report.failed.items()},
    }
