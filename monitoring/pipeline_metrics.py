"""Minute, symbol and signal metrics, accumulated from the ledger and the signal table.

Every finished minute (a ``pipeline_runs`` row that left ``running``) is counted once; every stored
signal of the champion once. The totals are the ledger's own, from its first row: a restarted
exporter serves the same counters it served before, plus what happened while it was down.

The signal counters describe the champion alone, like the ledger's ``signals_made``: the shadow
challenger's signals share the table under their own version, so a signal is counted unless its
minute's ledger row names another version (the version that minute's run served).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection, Table, select

from core.timegrid import as_utc
from data.models import PipelineRun, SignalRecord
from monitoring.accumulators import LabelledCounter, LabelledHistogram
from monitoring.reasons import SYMBOL_FAILURE_REASONS, symbol_failure_reason
from monitoring.scan import SettledScan
from pipeline.ledger import DONE, FAILED, MISSED, PARTIAL, RUNNING, SKIPPED_LATE

RUNS: Table = PipelineRun.__table__  # type: ignore[assignment]
SIGNALS: Table = SignalRecord.__table__  # type: ignore[assignment]

MINUTE_STATUSES = (DONE, PARTIAL, FAILED, SKIPPED_LATE, MISSED)
SUCCESS = (DONE, PARTIAL)
# Stage label -> the ledger's timing key (pipeline/minute_service.py, pipeline/publish_service.py).
# ``features`` is the slowest feature task: candle sync plus features, the minute's critical path.
STAGE_TIMINGS = {
    "dispatch": "dispatch",
    "features": "features_max_chunk",
    "window_fetch": "inference_fetch",
    "inference_forward": "inference_forward",
    "store": "store",
    "publish": "publish",
}
MINUTE_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = tuple(round(0.35 + 0.05 * i, 2) for i in range(14))  # 0.35 .. 1.0
DIRECTIONS = ("LONG", "SHORT", "NEUTRAL")
# Minutes per ``IN (...)`` when looking up which version each minute ran with.
_IN_CHUNK = 500


class PipelineMetrics:
    """The ledger's and the signal table's counters; ``refresh`` reads what is new."""

    def __init__(self, settle_s: float = 120.0) -> None:
        self.runs = SettledScan(
            RUNS,
            ("minute", "status", "symbols_asked", "signals_made", "failures", "timings"),
            "started_at",
            final=RUNS.c.status != RUNNING,
            settle_s=settle_s,
        )
        self.signals = SettledScan(
            SIGNALS, ("direction", "confidence", "minute", "model_version"), "created_at", settle_s=settle_s
        )
        self.minutes = LabelledCounter(
            "mlsignals_minutes_total", "Finished minutes by final status.", ("status",)
        )
        self.duration = LabelledHistogram(
            "mlsignals_minute_duration_seconds",
            "Wall time of a minute, from run_minute's start to its signals published.",
            (),
            MINUTE_BUCKETS,
        )
        self.stages = LabelledHistogram(
            "mlsignals_minute_stage_duration_seconds",
            "Wall time of each stage of a minute, from the ledger's timings.",
            ("stage",),
            STAGE_BUCKETS,
        )
        self.asked = LabelledCounter("mlsignals_symbols_asked_total", "Symbols the minutes asked for.", ())
        self.ok = LabelledCounter("mlsignals_symbols_ok_total", "Symbols that got a signal.", ())
        self.failed = LabelledCounter(
            "mlsignals_symbol_failures_total", "Symbols without a signal, by reason.", ("reason",)
        )
        self.signal_count = LabelledCounter(
            "mlsignals_signals_total", "Stored signals by direction.", ("direction", "actionable")
        )
        self.confidence = LabelledHistogram(
            "mlsignals_signal_confidence",
            "Calibrated confidence of stored signals.",
            ("direction",),
            CONFIDENCE_BUCKETS,
        )
        self.newest: dict[str, float] = {}
        for status in MINUTE_STATUSES:
            self.minutes.touch((status,))
        for stage in STAGE_TIMINGS:
            self.stages.touch((stage,))
        for reason in SYMBOL_FAILURE_REASONS:
            self.failed.touch((reason,))
        for direction in DIRECTIONS:
            self.signal_count.touch((direction, _actionable(direction)))
            self.confidence.touch((direction,))
        self.duration.touch(())
        self.asked.touch(())
        self.ok.touch(())

    def refresh(self, conn: Connection, now: datetime) -> None:
        for run in self.runs.poll(conn, now):
            self._count_run(run)
        by_direction: dict[str, list[float]] = defaultdict(list)
        fresh = self.signals.poll(conn, now)
        served = _served_versions(conn, {as_utc(sig.minute) for sig in fresh})
        for sig in fresh:
            if served.get(as_utc(sig.minute), sig.model_version) != sig.model_version:
                continue  # the shadow challenger's: never the champion's counts
            by_direction[str(sig.direction)].append(float(sig.confidence))
        for direction, confidences in by_direction.items():
            self.signal_count.inc((direction, _actionable(direction)), len(confidences))
            self.confidence.observe_many((direction,), confidences)
        self.newest = _newest(conn)

    def _count_run(self, run: Any) -> None:
        status = str(run.status)
        self.minutes.inc((status,))
        timings: dict[str, Any] = run.timings or {}
        if status in SUCCESS and isinstance(timings.get("minute_total"), int | float):
            self.duration.observe((), float(timings["minute_total"]))
        for stage, key in STAGE_TIMINGS.items():
            value = timings.get(key)
            if isinstance(value, int | float):
                self.stages.observe((stage,), float(value))
        if status in (*SUCCESS, FAILED):
            self.asked.inc((), float(run.symbols_asked or 0))
            self.ok.inc((), float(run.signals_made or 0))
            for text in (run.failures or {}).values():
                self.failed.inc((symbol_failure_reason(str(text)),))

    def families(self) -> Iterable[Metric]:
        yield self.minutes.family()
        yield self.duration.family()
        yield self.stages.family()
        yield self.asked.family()
        yield self.ok.family()
        yield self.failed.family()
        yield self.signal_count.family()
        yield self.confidence.family()
        for name, documentation in _NEWEST_DOCS.items():
            # Absent until a minute finished: a fresh deployment is stalled, not at zero coverage.
            if name in self.newest:
                yield GaugeMetricFamily(name, documentation, value=self.newest[name])


_NEWEST_DOCS = {
    "mlsignals_last_success_minute_timestamp_seconds": "Unix time of the newest minute done or partial.",
    "mlsignals_newest_minute_timestamp_seconds": "Unix time of the newest done, partial or failed minute.",
    "mlsignals_newest_minute_coverage_ratio": "Signals / symbols asked in the newest finished minute.",
}


def _served_versions(conn: Connection, minutes: set[datetime]) -> dict[datetime, str]:
    """The model version each of ``minutes`` was run with (the champion then), by the ledger."""
    out: dict[datetime, str] = {}
    ordered = sorted(minutes)
    for i in range(0, len(ordered), _IN_CHUNK):
        stmt = select(RUNS.c.minute, RUNS.c.model_version).where(
            RUNS.c.minute.in_(ordered[i : i + _IN_CHUNK]), RUNS.c.model_version.is_not(None)
        )
        out |= {as_utc(row.minute): str(row.model_version) for row in conn.execute(stmt)}
    return out


def _actionable(direction: str) -> str:
    return "false" if direction == "NEUTRAL" else "true"


def newest_finished_run(conn: Connection) -> Any:
    """The newest minute that ended done, partial or failed (None before the first), by the unique
    index on ``minute``: the row the coverage gauge and the tracked symbols both describe."""
    return conn.execute(
        select(RUNS.c.minute, RUNS.c.symbols_asked, RUNS.c.signals_made, RUNS.c.failures)
        .where(RUNS.c.status.in_((*SUCCESS, FAILED)))
        .order_by(RUNS.c.minute.desc())
        .limit(1)
    ).first()


def _newest(conn: Connection) -> dict[str, float]:
    """The newest successful minute and the newest finished one, by the unique index on ``minute``."""
    success = conn.execute(
        select(RUNS.c.minute).where(RUNS.c.status.in_(SUCCESS)).order_by(RUNS.c.minute.desc()).limit(1)
    ).first()
    newest = newest_finished_run(conn)
    out = {"mlsignals_last_success_minute_timestamp_seconds": _ts(success.minute) if success else 0.0}
    if newest is not None:
        out["mlsignals_newest_minute_timestamp_seconds"] = _ts(newest.minute)
        asked = int(newest.symbols_asked or 0)
        out["mlsignals_newest_minute_coverage_ratio"] = (
            min(1.0, int(newest.signals_made or 0) / asked) if asked else 0.0
        )
    return out


def _ts(value: datetime) -> float:
    return as_utc(value).timestamp()
