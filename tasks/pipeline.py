"""``control`` queue: the minute's entry point (fired by beat, or by hand with ``celery call``) and
the minute supervisor that sees each running minute through to its deadline.

The policy is ``pipeline.minute_service``'s; this module only builds the minute's chord."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import Task, chord, group

from core.timegrid import floor_minute, iso_minute, now_ms
from pipeline import minute_service
from pipeline.ports import DispatchedChord, MinuteRuntime
from tasks.common import MINUTE_RETRY
from tasks.features import compute_symbols
from tasks.inference import predict_batch
from tasks.signals import publish
from worker.app import app
from worker.runtime import get_runtime


@app.task(
    name="tasks.pipeline.run_minute",
    bind=True,
    # Not acks_late: a redelivered start could race the first one; the ledger row decides anyway.
    acks_late=False,
    soft_time_limit=20,
    time_limit=30,
    **MINUTE_RETRY,
)
def run_minute(self: Task[Any, Any], minute: str | None = None, replay: bool = False) -> dict[str, Any]:
    """Start the minute's chord. ``minute`` is an ISO minute (default: the current one).

    ``replay`` runs a past minute on purpose (``mlsignals run --replay``, the benchmark): no
    lateness check, and the minute's tasks expire relative to now instead of to the minute.
    A retry after a transient error keeps the minute of the first attempt.
    """
    if minute is None:
        minute = iso_minute(floor_minute(now_ms()))
        # So that an autoretry asks for the same minute, not the one current at the retry.
        self.request.args, self.request.kwargs = (), {"minute": minute, "replay": replay}
    return minute_service.start_minute(
        get_runtime(), dispatch_chord, minute, replay=replay, retrying=bool(self.request.retries)
    )


@app.task(name="tasks.pipeline.supervise", acks_late=False, soft_time_limit=10, time_limit=15)
def supervise() -> dict[str, list[str]]:
    """Fired by beat every few seconds: re-dispatch stalled minutes, close and announce lost ones."""
    return minute_service.supervise_minutes(get_runtime(), dispatch_chord)


def start_minute(rt: MinuteRuntime, minute: str | None = None, *, replay: bool = False) -> dict[str, Any]:
    """Start ``minute`` in this process with the Celery chord (``mlsignals run --replay``, tests)."""
    return minute_service.start_minute(rt, dispatch_chord, minute, replay=replay)


def dispatch_chord(
    minute_iso: str, run: int, run_id: str, version: str, chunks: list[list[str]], expires: datetime
) -> DispatchedChord:
    """The ``ChordDispatch`` port: feature chunks, then inference, then publish; all expire together."""
    header = group(
        compute_symbols.s(part, minute_iso, run_id, version).set(expires=expires) for part in chunks
    )
    infer = predict_batch.s(minute_iso, run, version).set(expires=expires)
    announce = publish.s(minute_iso, run, version, expires.isoformat()).set(expires=expires)
    result = chord(header)(infer | announce)
    return DispatchedChord(result_id=result.id, tasks=len(header.tasks))
