"""The ``pipeline_runs`` ledger: one row per minute with coverage, timings and failure reasons."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.timegrid import as_utc
from data.models import PipelineRun

RUNNING = "running"
DONE = "done"
PARTIAL = "partial"  # some symbols failed, the others were published
FAILED = "failed"
SKIPPED_LATE = "skipped_late"
MISSED = "missed"  # no run started for the minute at all (beat, broker or control worker down)

# The stage a running minute last reached; the supervisor re-dispatches a run stuck in one.
DISPATCHED = "dispatched"
INFERENCE = "inference"
PUBLISH = "publish"

_BATCH = 500


@dataclass(frozen=True)
class RunRef:
    """What the supervisor needs of a run to re-dispatch or announce it."""

    id: int
    minute: datetime
    model_version: str | None
    symbols_asked: int
    attempts: int
    stage: str | None


class RunLedger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def claim(
        self,
        minute: datetime,
        *,
        status: str,
        model_version: str | None,
        symbols_asked: int,
        note: str | None = None,
    ) -> int | None:
        """Insert the minute's row; ``None`` when the minute already has one (its run is not ours)."""
        stmt = (
            self._insert(PipelineRun)
            .values(
                minute=minute,
                status=status,
                model_version=model_version,
                symbols_asked=symbols_asked,
                signals_made=0,
                failures={},
                timings={},
                note=note,
                started_at=datetime.now(UTC),
                finished_at=None if status == RUNNING else datetime.now(UTC),
                attempts=1,
                stage=DISPATCHED if status == RUNNING else None,
                stage_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing(index_elements=["minute"])
            .returning(PipelineRun.id)
        )
        with self.engine.begin() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else int(row[0])

    def update(
        self,
        run_id: int,
        *,
        status: str | None = None,
        signals_made: int | None = None,
        failures: Mapping[str, str] | None = None,
        timings: Mapping[str, float] | None = None,
        note: str | None = None,
        finished: bool = False,
    ) -> None:
        """Merge stage results into the run's row; stages of one run update it one after another."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(PipelineRun.failures, PipelineRun.timings).where(PipelineRun.id == run_id)
            ).one()
            values: dict[str, Any] = {
                "failures": {**row.failures, **(failures or {})},
                "timings": {**row.timings, **(timings or {})},
            }
            if status is not None:
                values["status"] = status
            if signals_made is not None:
                values["signals_made"] = signals_made
            if note is not None:
                values["note"] = note
            if finished:
                values["finished_at"] = datetime.now(UTC)
            conn.execute(update(PipelineRun).where(PipelineRun.id == run_id).values(**values))

    def expire_overdue(self, before: datetime, note: str) -> list[RunRef]:
        """Close runs still ``running`` whose minute began before ``before``: their chord is lost."""
        stmt = (
            update(PipelineRun)
            # A replayed (past) minute counts from its start, not from its minute.
            .where(
                PipelineRun.status == RUNNING, PipelineRun.minute < before, PipelineRun.started_at < before
            )
            .values(status=FAILED, note=note, finished_at=datetime.now(UTC))
            .returning(*_REF_COLUMNS)
        )
        with self.engine.begin() as conn:
            return [_ref(row) for row in conn.execute(stmt)]

    def mark_stage(self, run_id: int, stage: str) -> None:
        """The run reached ``stage`` now (only while it is still running)."""
        stmt = (
            update(PipelineRun)
            .where(PipelineRun.id == run_id, PipelineRun.status == RUNNING)
            .values(stage=stage, stage_at=datetime.now(UTC))
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def stalled(self, now: datetime, *, stalled_for: float, newer_than: datetime) -> list[RunRef]:
        """Running minutes (begun after ``newer_than``) whose stage has not moved for ``stalled_for`` s."""
        stmt = select(*_REF_COLUMNS).where(
            PipelineRun.status == RUNNING,
            PipelineRun.minute >= newer_than,
            PipelineRun.stage_at < now - timedelta(seconds=stalled_for),
        )
        with self.engine.connect() as conn:
            return [_ref(row) for row in conn.execute(stmt)]

    def claim_redispatch(self, run: RunRef, note: str) -> bool:
        """Count one more dispatch of ``run``; ``False`` when another supervisor already did."""
        stmt = (
            update(PipelineRun)
            .where(
                PipelineRun.id == run.id,
                PipelineRun.status == RUNNING,
                PipelineRun.attempts == run.attempts,
            )
            .values(attempts=run.attempts + 1, stage=DISPATCHED, stage_at=datetime.now(UTC), note=note)
        )
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount) == 1

    def record_missed(self, before: datetime, *, lookback_minutes: int, note: str) -> list[datetime]:
        """Record as ``missed`` every minute before ``before`` that has no row, back to the newest
        minute that has one (at most ``lookback_minutes``); returns the minutes recorded now."""
        if lookback_minutes <= 0:
            return []
        with self.engine.connect() as conn:
            newest = conn.execute(
                select(func.max(PipelineRun.minute)).where(PipelineRun.minute < before)
            ).scalar()
        if newest is None:
            return []  # a ledger's first minute: nothing was expected before it
        newest = as_utc(newest)
        first = max(newest + timedelta(minutes=1), before - timedelta(minutes=lookback_minutes))
        count = int((before - first).total_seconds() // 60)
        minutes = [first + timedelta(minutes=i) for i in range(count)]
        now = datetime.now(UTC)
        recorded: list[datetime] = []
        for start in range(0, len(minutes), _BATCH):
            rows: list[dict[str, Any]] = [
                {
                    "minute": m,
                    "status": MISSED,
                    "model_version": None,
                    "symbols_asked": 0,
                    "signals_made": 0,
                    "failures": {},
                    "timings": {},
                    "note": note,
                    "started_at": now,
                    "finished_at": now,
                    "attempts": 0,
                }
                for m in minutes[start : start + _BATCH]
            ]
            stmt = (
                self._insert(PipelineRun)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["minute"])
                .returning(PipelineRun.minute)
            )
            with self.engine.begin() as conn:
                recorded += [as_utc(m) for (m,) in conn.execute(stmt)]
        return sorted(recorded)

    def get(self, minute: datetime) -> PipelineRun | None:
        with Session(self.engine) as session:
            return session.scalars(select(PipelineRun).where(PipelineRun.minute == minute)).first()

    def recent(self, limit: int = 20) -> list[PipelineRun]:
        with Session(self.engine) as session:
            return list(session.scalars(select(PipelineRun).order_by(PipelineRun.minute.desc()).limit(limit)))


_REF_COLUMNS = (
    PipelineRun.id,
    PipelineRun.minute,
    PipelineRun.model_version,
    PipelineRun.symbols_asked,
    PipelineRun.attempts,
    PipelineRun.stage,
)


def _ref(row: Any) -> RunRef:
    return RunRef(
        id=int(row.id),
        minute=as_utc(row.minute),
        model_version=row.model_version,
        symbols_asked=int(row.symbols_asked),
        attempts=int(row.attempts),
        stage=row.stage,
    )
