"""Feature drift of the champion's live windows against its training distribution (docs/SIGNAL_QUALITY.md
"Feature drift"; the bins and the PSI are ``ml.drift``'s).

Where the live rows come from. The minute pipeline parks each symbol's scaled window ``[96, 240]``
in the window store under a key of the run's attempt, for ``pipeline.feature_ttl_seconds`` (180 s).
Each quality pass (``tasks.quality.score``, every ``quality.interval_seconds``) reads the ledger's
runs (``pipeline_runs``) of the champion that finished in the last ``DRIFT_MINUTES`` and that no
recent pass has read, takes the symbols that got a signal in each (the ``signals`` rows of the run's
minute and version: every symbol the inference saw) and reads the newest row of each one's window
(the newest attempt's first). With a pass every 60 s, a finished run's windows are read within about
a minute, well inside their TTL; a run whose windows have expired counts as read, with none.

Why accumulate. One minute of 50 symbols is 50 rows for 10 bins per feature: PSI's sampling noise
alone is about ``(bins - 1) / rows`` (0.18 at 50 rows, a false "moderate"). The pass therefore
adds up the bin counts of the last ``DRIFT_MINUTES`` = 15 pipeline minutes (by the ledger's minute,
up to the newest read, so a replay faster than the clock sums 15 minutes too): 750 rows at 50
symbols (noise about 0.012, far below 0.1), 7,500 at 500; and 15 minutes are one full cycle of the
15-minute bar's anchor phases, so every phase of the bar weighs the same. It still reacts within a
quarter of an hour. Counts are kept per ledger run (compact: base64 int32) in the ``feature_drift``
row of the pass that read them, so a run is counted once even when two passes overlap; they are
cleared after ``DRIFT_MINUTES``, and rows older than ``quality.window_days`` are deleted.

Each pass writes one ``feature_drift`` row: the PSI of every feature, the ``drift_top`` worst, the
rows and minutes behind them, or why there is no figure (``no_model``, ``no_bins``: a version
registered before feature drift has no ``feature_bins.npz``, ``no_windows``). ``latest_drift`` reads
the newest for ``mlsignals model drift`` and the exporter.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, delete, insert, null, select, update
from sqlalchemy.orm import Session

from core.logging import get_logger
from core.settings import Settings
from core.timegrid import as_utc, dt_to_ms, iso_minute
from data.models import FeatureDrift, PipelineRun, SignalRecord
from ml.drift import FeatureBins, worst
from ml.features.spec import FEATURE_SPEC
from ml.registry import Registry

log = get_logger(__name__)

DRIFT_MINUTES = 15
OK = "ok"
NO_MODEL = "no_model"
NO_BINS = "no_bins"
NO_WINDOWS = "no_windows"
# Reasons of the newest run's failed symbols shown as context (their text before the first ':').
_TOP_REASONS = 3


class LiveWindows(Protocol):
    """The pipeline's window store as the drift pass reads it (``tasks.quality.PipelineWindows``
    over ``pipeline.window_store``): the key of a symbol's window in one attempt of a ledger run,
    and the newest row of windows."""

    def key(self, minute_iso: str, run: int, attempt: int, symbol: str) -> str: ...

    def newest_rows(self, keys: Sequence[str]) -> list[npt.NDArray[np.float32] | None]: ...


@dataclass(frozen=True)
class DriftResult:
    status: str
    computed_at: datetime
    model_version: str | None
    reason: str | None = None
    newest_minute: datetime | None = None
    minutes: int = 0
    samples: int = 0
    bins: int = 0
    max_psi: float | None = None
    psi: dict[str, float | None] = field(default_factory=dict)
    worst: list[dict[str, Any]] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def as_dict(self, *, with_psi: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "reason": self.reason,
            "model_version": self.model_version,
            "computed_at": self.computed_at.isoformat(),
            "newest_minute": None if self.newest_minute is None else self.newest_minute.isoformat(),
            "minutes": self.minutes,
            "samples": self.samples,
            "bins": self.bins,
            "max_psi": self.max_psi,
            "worst": self.worst,
            "detail": self.detail,
        }
        if with_psi:
            doc["psi"] = self.psi
        return doc

    @classmethod
    def from_row(cls, row: FeatureDrift) -> DriftResult:
        return cls(
            status=row.status,
            computed_at=row.computed_at,
            model_version=row.model_version,
            reason=row.reason,
            newest_minute=row.newest_minute,
            minutes=row.minutes,
            samples=row.samples,
            bins=row.bins,
            max_psi=row.max_psi,
            psi=dict(row.psi or {}),
            worst=list(row.worst or []),
            detail=dict(row.detail or {}),
            id=row.id,
        )


@dataclass
class _Run:
    id: int
    minute: datetime
    attempts: int
    symbols_asked: int
    signals_made: int
    failures: dict[str, Any]


def run_drift(
    engine: Engine,
    settings: Settings,
    *,
    registry: Registry,
    windows: LiveWindows,
    version: str | None = None,
    now: datetime | None = None,
) -> DriftResult:
    """One drift pass for ``version`` (default: the champion); the result is stored and returned."""
    began = time.perf_counter()
    now = as_utc(now) if now is not None else datetime.now(UTC)
    version = version if version is not None else registry.aliases().get("champion")
    if not version:
        return _store(engine, settings, DriftResult(NO_MODEL, now, None, "no champion in the model registry"))
    arrays = registry.feature_bins(version)
    if arrays is None:
        reason = (
            f"no training distribution stored with model {version} (no feature_bins.npz: it was "
            "registered before feature drift existed); train a new version to measure drift"
        )
        return _store(engine, settings, DriftResult(NO_BINS, now, version, reason))
    bins = FeatureBins.from_arrays(arrays)
    if bins.names != FEATURE_SPEC.names:
        raise ValueError(f"model {version}: its feature bins name other features than this engine's spec")

    cutoff = now - timedelta(minutes=DRIFT_MINUTES)
    with engine.connect() as conn:
        stored = _recent_counts(conn, version, cutoff, now)
        runs = [
            _Run(r.id, r.minute, max(1, r.attempts or 1), r.symbols_asked, r.signals_made, r.failures or {})
            for r in conn.execute(
                select(
                    PipelineRun.id,
                    PipelineRun.minute,
                    PipelineRun.attempts,
                    PipelineRun.symbols_asked,
                    PipelineRun.signals_made,
                    PipelineRun.failures,
                )
                .where(
                    PipelineRun.model_version == version,
                    PipelineRun.finished_at.is_not(None),
                    PipelineRun.finished_at >= cutoff,
                    PipelineRun.finished_at <= now,
                )
                .order_by(PipelineRun.minute)
            )
        ]
        fresh = [r for r in runs if str(r.id) not in stored]
        symbols = _signalled_symbols(conn, version, [r.minute for r in fresh])

    per_run, read, missing = _read_runs(windows, bins, fresh, symbols)
    total, minutes, samples = _accumulate([*stored.values(), *per_run.values()], bins)
    detail = _context(runs, read, missing, len(fresh))
    new_counts = {"runs": per_run} if per_run else None
    if not samples:
        if not runs:
            reason = (
                f"no minute of {version} finished in the last {DRIFT_MINUTES} minutes "
                "(is the minute pipeline running?)"
            )
        else:
            reason = (
                f"no live window of {version} could be read in the last {DRIFT_MINUTES} minutes: "
                f"they expire {settings.pipeline.feature_ttl_seconds} s after the feature stage "
                "(pipeline.feature_ttl_seconds)"
            )
        result = DriftResult(NO_WINDOWS, now, version, reason, bins=bins.n_bins, detail=detail)
        return _store(engine, settings, result, new_counts)
    values = bins.psi(total)
    top = worst(values, bins.names, settings.quality.drift_top)
    detail["seconds"] = round(time.perf_counter() - began, 4)
    result = DriftResult(
        OK,
        now,
        version,
        newest_minute=max(minutes),
        minutes=len(minutes),
        samples=samples,
        bins=bins.n_bins,
        max_psi=top[0][1] if top else None,
        psi={name: _finite(v) for name, v in zip(bins.names, values.tolist(), strict=True)},
        worst=[{"feature": name, "psi": round(v, 6)} for name, v in top],
        detail=detail,
    )
    return _store(engine, settings, result, new_counts)


def latest_drift(engine: Engine, model_version: str | None = None) -> DriftResult | None:
    """The newest stored pass (for ``model_version`` when given); None before the first."""
    stmt = select(FeatureDrift).order_by(FeatureDrift.computed_at.desc(), FeatureDrift.id.desc()).limit(1)
    if model_version is not None:
        stmt = stmt.where(FeatureDrift.model_version == model_version)
    with Session(engine) as session:
        row = session.scalars(stmt).first()
        return None if row is None else DriftResult.from_row(row)


def summarize(result: DriftResult, alert_psi: float) -> dict[str, Any]:
    """The pass's entry in the quality summary: the figures without the 240 PSIs, and how many
    features are at or above ``alert_psi``."""
    doc = result.as_dict(with_psi=False)
    doc["major"] = sum(1 for v in result.psi.values() if v is not None and v >= alert_psi)
    return doc


# -- internals --------------------------------------------------------------------------------------


def _recent_counts(conn: Any, version: str, cutoff: datetime, now: datetime) -> dict[str, dict[str, Any]]:
    """The per-run counts that passes since ``cutoff`` read: run id -> {minute, samples, counts}."""
    out: dict[str, dict[str, Any]] = {}
    rows = conn.execute(
        select(FeatureDrift.counts).where(
            FeatureDrift.model_version == version,
            FeatureDrift.computed_at >= cutoff,
            FeatureDrift.computed_at <= now,
            FeatureDrift.counts.is_not(None),
        )
    ).scalars()
    for doc in rows:
        if isinstance(doc, Mapping):
            for run, entry in dict(doc.get("runs") or {}).items():
                out.setdefault(str(run), entry)
    return out


def _signalled_symbols(conn: Any, version: str, minutes: Sequence[datetime]) -> dict[datetime, list[str]]:
    if not minutes:
        return {}
    out: dict[datetime, list[str]] = {}
    rows = conn.execute(
        select(SignalRecord.minute, SignalRecord.symbol)
        .where(SignalRecord.model_version == version, SignalRecord.minute.in_(list(minutes)))
        .order_by(SignalRecord.minute, SignalRecord.symbol)
    )
    for minute, symbol in rows:
        out.setdefault(as_utc(minute), []).append(symbol)
    return out


def _read_runs(
    windows: LiveWindows,
    bins: FeatureBins,
    runs: Sequence[_Run],
    symbols: Mapping[datetime, Sequence[str]],
) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Every run's bin counts from one read of the store; and how many windows were read / missing."""
    keys: list[str] = []
    slots: list[tuple[int, int, str]] = []  # (run index, attempt, symbol) of each key
    for i, run in enumerate(runs):
        minute_iso = iso_minute(dt_to_ms(run.minute))
        for symbol in symbols.get(as_utc(run.minute), ()):
            for attempt in range(run.attempts, 0, -1):  # the newest attempt's window first
                keys.append(windows.key(minute_iso, run.id, attempt, symbol))
                slots.append((i, attempt, symbol))
    found = windows.newest_rows(keys) if keys else []
    rows: list[dict[str, npt.NDArray[np.float32]]] = [{} for _ in runs]
    for (i, _attempt, symbol), row in zip(slots, found, strict=True):
        if row is not None and symbol not in rows[i]:
            rows[i][symbol] = row
    out: dict[str, dict[str, Any]] = {}
    read = 0
    asked = 0
    for run, got in zip(runs, rows, strict=True):
        asked += len(symbols.get(as_utc(run.minute), ()))
        read += len(got)
        counts = _encode_counts(bins.counts(np.stack(list(got.values())))) if got else None
        out[str(run.id)] = {"minute": as_utc(run.minute).isoformat(), "samples": len(got), "counts": counts}
    return out, read, asked - read


def _accumulate(
    entries: Sequence[Mapping[str, Any]], bins: FeatureBins
) -> tuple[npt.NDArray[np.int64], set[datetime], int]:
    """The summed counts of the runs of the last ``DRIFT_MINUTES`` pipeline minutes (up to the newest
    minute read; by the ledger's minute, so a replay faster than real time still sums 15 minutes),
    those minutes and their rows."""
    total = np.zeros((bins.n_features, bins.n_bins), dtype=np.int64)
    with_rows = [
        (datetime.fromisoformat(str(e["minute"])), e) for e in entries if e.get("samples") and e.get("counts")
    ]
    if not with_rows:
        return total, set(), 0
    start = max(m for m, _ in with_rows) - timedelta(minutes=DRIFT_MINUTES - 1)
    minutes: set[datetime] = set()
    samples = 0
    for minute, entry in with_rows:
        if minute < start:
            continue
        array = _decode_counts(str(entry["counts"]))
        if array.shape != total.shape:
            continue  # cannot occur for one version's bins; a bad row must not break the sum
        total += array
        samples += int(entry["samples"])
        minutes.add(minute)
    return total, minutes, samples


def _encode_counts(counts: npt.NDArray[np.int64]) -> str:
    """``[F, B]`` counts as ``"F,B:"`` and base64 of little-endian int32: 13 kB of JSON string
    instead of 2,400 JSON numbers, which the next passes would parse 15 times each."""
    rows, cols = counts.shape
    raw = np.ascontiguousarray(counts, dtype="<i4").tobytes()
    return f"{rows},{cols}:{base64.b64encode(raw).decode()}"


def _decode_counts(text: str) -> npt.NDArray[np.int64]:
    shape, _, data = text.partition(":")
    rows, cols = (int(v) for v in shape.split(","))
    return np.frombuffer(base64.b64decode(data), dtype="<i4").astype(np.int64).reshape(rows, cols)


def _context(runs: Sequence[_Run], read: int, missing: int, fresh: int) -> dict[str, Any]:
    """The data-quality context: what this pass read, and the newest minute's failed symbols."""
    doc: dict[str, Any] = {"runs_read": fresh, "windows_read": read, "windows_missing": missing}
    if runs:
        newest = max(runs, key=lambda r: r.minute)
        reasons = Counter(str(v).split(":", 1)[0].strip()[:60] or "failed" for v in newest.failures.values())
        doc["newest_run"] = {
            "minute": as_utc(newest.minute).isoformat(),
            "symbols_asked": newest.symbols_asked,
            "signals_made": newest.signals_made,
            "failed": len(newest.failures),
            "reasons": dict(reasons.most_common(_TOP_REASONS)),
        }
    return doc


def _store(
    engine: Engine, settings: Settings, result: DriftResult, counts: dict[str, Any] | None = None
) -> DriftResult:
    """Insert the pass's row; clear the counts that left the accumulation; delete old rows."""
    values: dict[str, Any] = {
        "computed_at": result.computed_at,
        "model_version": result.model_version,
        "status": result.status,
        "reason": result.reason,
        "newest_minute": result.newest_minute,
        "minutes": result.minutes,
        "samples": result.samples,
        "bins": result.bins,
        "max_psi": result.max_psi,
        "psi": result.psi,
        "worst": result.worst,
        # SQL NULL, not JSON null: "counts IS NOT NULL" finds the rows still accumulated.
        "counts": null() if counts is None else counts,
        "detail": result.detail,
    }
    cutoff = result.computed_at - timedelta(minutes=DRIFT_MINUTES)
    keep_from = result.computed_at - timedelta(days=settings.quality.window_days)
    with engine.begin() as conn:
        new_id = conn.execute(insert(FeatureDrift).values(**values).returning(FeatureDrift.id)).scalar_one()
        conn.execute(
            update(FeatureDrift)
            .where(FeatureDrift.computed_at < cutoff, FeatureDrift.counts.is_not(None))
            .values(counts=null())
        )
        conn.execute(delete(FeatureDrift).where(FeatureDrift.computed_at < keep_from))
    if result.status == OK:
        log.info(
            "feature drift",
            model_version=result.model_version,
            samples=result.samples,
            minutes=result.minutes,
            max_psi=result.max_psi,
            worst=result.worst[0]["feature"] if result.worst else None,
        )
    else:
        log.info("feature drift unavailable", status=result.status, reason=result.reason)
    return replace(result, id=int(new_id))


def _finite(value: float) -> float | None:
    return round(value, 6) if np.isfinite(value) else None
