"""The ``pipeline_runs`` ledger: one row per minute with coverage, timings and failure reasons."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from data.models import PipelineRun

RUNNING = "running"
DONE = "done"
PARTIAL = "partial"  # some symbols failed, the others were published
FAILED = "failed"
SKIPPED_LATE = "skipped_late"


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

    def expire_overdue(self, before: datetime, note: str) -> int:
        """Close runs still ``running`` whose minute began before ``before``: their chord is lost."""
        stmt = (
            update(PipelineRun)
            .where(PipelineRun.status == RUNNING, PipelineRun.minute < before)
            .values(status=FAILED, note=note, finished_at=datetime.now(UTC))
        )
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount)

    def get(self, minute: datetime) -> PipelineRun | None:
        with Session(self.engine) as session:
            return session.scalars(select(PipelineRun).where(PipelineRun.minute == minute)).first()

    def recent(self, limit: int = 20) -> list[PipelineRun]:
        with Session(self.engine) as session:
            return list(session.scalars(select(PipelineRun).order_by(PipelineRun.minute.desc()).limit(limit)))
