"""What happened after each signal: one ``signal_outcomes`` row per stored signal and horizon.

A signal at minute ``m`` was made on the bar ending at ``bar_end`` (its entry price is that bar's
close). Its outcome at horizon ``h`` bars is the close of the bar ending ``h`` bars later, i.e. the
1-minute candle opening at ``bar_end + h * bar - 1 min``, exactly as the training labels read it
(ml/labels.py). The return is made market-neutral like the labels: minus the mean return of the
symbols of the same minute and model version (the raw return where fewer than
``ml.dataset.MIN_NEUTRAL_GROUP`` resolve). The realised class follows the version's own label rule
(terciles of the neutral returns, or its fixed band).

Scoring runs per (minute, horizon) *group*, all model versions of the minute together, in one
transaction: every row of the group is inserted with ``ON CONFLICT DO NOTHING`` on (signal,
horizon), so a re-run, a redelivered task or a worker killed mid-way adds nothing twice and loses
nothing. Groups are taken in minute order per horizon, from the newest scored minute of that
horizon (an index lookup), so a run does only what is new. A symbol is unresolved while its exit
candle is not stored, when that candle is a gap fill (an outage's carried-forward price is no exit
anyone could trade), or when ``candle_gaps`` records minutes of its horizon missing at the exchange
(``CandleStore.horizon_exits`` says why gap records and not a count of candles). A group waits for
its unresolved symbols for ``quality.resolve_grace_minutes`` at most; then they are recorded
``unresolved`` with the reason and the rest is scored without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.errors import PermanentError
from core.logging import get_logger
from core.settings import Settings
from core.timegrid import MINUTE_MS
from data.models import SignalOutcome, SignalRecord
from data.store import CandleStore, HorizonExit
from ml.dataset import MIN_NEUTRAL_GROUP
from ml.decoding import round_trip_cost
from ml.labels import direction_classes, tercile_classes
from ml.model.config import DIRECTION_CLASSES, ModelConfig
from ml.outputs import horizon_label

log = get_logger(__name__)

RESOLVED, UNRESOLVED = "resolved", "unresolved"
# The horizons scored: DESIGN.md §5's four, in bars of ``data.bar_minutes``.
HORIZONS: tuple[int, ...] = ModelConfig().horizons

ConfigLookup = Callable[[str], ModelConfig]


@dataclass
class ScoreReport:
    """What one scoring pass did."""

    minutes: int = 0  # (minute, horizon) groups written
    resolved: int = 0
    unresolved: int = 0
    # Per horizon (bars): the first minute still waiting for candles, ISO.
    waiting: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "minutes": self.minutes,
            "resolved": self.resolved,
            "unresolved": self.unresolved,
            "waiting": {str(h): m for h, m in self.waiting.items()},
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True)
class _Signal:
    id: int
    symbol: str
    model_version: str
    made_at: datetime
    bar_end: datetime
    direction: str
    entry_price: float
    # This horizon's probabilities (LONG, SHORT, FLAT) and predicted return; None where absent.
    probs: tuple[float | None, float | None, float | None]
    predicted: float | None


class OutcomeScorer:
    """Fills ``signal_outcomes`` from the signals and the stored candles of ``exchange``."""

    def __init__(
        self, engine: Engine, settings: Settings, *, exchange: str, configs: ConfigLookup | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.exchange = exchange
        self.store = CandleStore(engine)
        self.configs = configs or (lambda _version: ModelConfig())
        self.bar_minutes = settings.data.bar_minutes
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        self._config_cache: dict[str, ModelConfig] = {}

    # -- the pass -------------------------------------------------------------------------------------
    def score_due(self, now: datetime | None = None, *, since: datetime | None = None) -> ScoreReport:
        """Score every (minute, horizon) group that is due, oldest first, up to
        ``quality.max_minutes_per_run`` per horizon. ``since`` rescans from that minute instead of
        from the newest scored one (a replay of old minutes; rows already there are kept)."""
        began = time.perf_counter()
        now = now or datetime.now(UTC)
        q = self.settings.quality
        report = ScoreReport()
        floor = now - timedelta(hours=q.lookback_hours)
        for h in HORIZONS:
            start = since or max(floor, self._scored_through(h) or floor)
            # A signal's bar ended at most one bar before its minute: the bar-end check is exact below.
            due_by = now - timedelta(minutes=(h - 1) * self.bar_minutes, seconds=q.settle_seconds)
            minutes = self._minutes(start, due_by, inclusive=since is not None, limit=q.max_minutes_per_run)
            for minute in minutes:
                written = self.score_minute(minute, h, now)
                if written is None:
                    report.waiting[h] = minute.isoformat()
                    break
                report.minutes += 1
                report.resolved += written[0]
                report.unresolved += written[1]
        report.seconds = time.perf_counter() - began
        return report

    def score_minute(self, minute: datetime, horizon_bars: int, now: datetime) -> tuple[int, int] | None:
        """Write the outcomes of ``minute``'s signals at ``horizon_bars``; ``(resolved, unresolved)``
        rows offered, or None before the horizon settled or while a symbol still waits for candles
        within the grace period.

        One connection and transaction for the group's reads and its write: each checkout of the
        pool costs a pre-ping and a reset, two round trips, and a pass makes four groups a minute."""
        with self.engine.begin() as conn:
            return self._score(conn, minute, horizon_bars, now)

    def _score(
        self, conn: Connection, minute: datetime, horizon_bars: int, now: datetime
    ) -> tuple[int, int] | None:
        signals = self._signals(conn, minute, horizon_label(horizon_bars, self.bar_minutes))
        if not signals:
            return (0, 0)
        settled = max(s.bar_end for s in signals) + timedelta(
            minutes=horizon_bars * self.bar_minutes, seconds=self.settings.quality.settle_seconds
        )
        if now < settled:
            return None
        bar_ms = self.bar_minutes * MINUTE_MS
        exits: dict[tuple[datetime, str], HorizonExit] = {}
        for bar_end in sorted({s.bar_end for s in signals}):
            start = int(bar_end.timestamp() * 1000)
            found = self.store.horizon_exits(
                self.exchange,
                sorted({s.symbol for s in signals if s.bar_end == bar_end}),
                start,
                start + horizon_bars * bar_ms - MINUTE_MS,
                conn=conn,
            )
            exits |= {(bar_end, symbol): e for symbol, e in found.items()}
        reasons = {s.id: _unresolved_reason(exits[(s.bar_end, s.symbol)]) for s in signals}
        grace = timedelta(minutes=self.settings.quality.resolve_grace_minutes)
        if any(reasons.values()) and now < settled + grace:
            return None
        rows: list[dict[str, Any]] = []
        for version in sorted({s.model_version for s in signals}):
            group = [s for s in signals if s.model_version == version]
            rows += self._rows(minute, group, horizon_bars, exits, reasons)
        self._write(conn, rows)
        unresolved = sum(1 for r in rows if r["status"] == UNRESOLVED)
        return (len(rows) - unresolved, unresolved)

    # -- one version's rows ---------------------------------------------------------------------------
    def _rows(
        self,
        minute: datetime,
        group: Sequence[_Signal],
        horizon_bars: int,
        exits: Mapping[tuple[datetime, str], HorizonExit],
        reasons: Mapping[int, str | None],
    ) -> list[dict[str, Any]]:
        config = self._config(group[0].model_version)
        cost = round_trip_cost(self.settings)
        ok = [s for s in group if reasons[s.id] is None]
        raw = np.array(
            [(exits[(s.bar_end, s.symbol)].exit_close or np.nan) / s.entry_price - 1.0 for s in ok],
            dtype=np.float64,
        )
        neutral = raw - raw.mean() if raw.size >= MIN_NEUTRAL_GROUP else raw.copy()
        classes = _realised_classes(neutral, config, horizon_bars)
        resolved = {s.id: k for k, s in enumerate(ok)}
        rows = []
        for s in group:
            base = {
                "signal_id": s.id,
                "symbol": s.symbol,
                "minute": minute,
                "signal_made_at": s.made_at,
                "model_version": s.model_version,
                "horizon_bars": horizon_bars,
                "direction": s.direction,
                "actionable": s.direction != "NEUTRAL",
                "exit_time": s.bar_end + timedelta(minutes=horizon_bars * self.bar_minutes),
                "entry_price": s.entry_price,
                "cost": cost,
            }
            base |= {
                "predicted_return": s.predicted,
                "prob_long": s.probs[0],
                "prob_short": s.probs[1],
                "prob_flat": s.probs[2],
            }
            k = resolved.get(s.id)
            if k is None:
                rows.append(base | _EMPTY | {"status": UNRESOLVED, "reason": reasons[s.id]})
                continue
            sign = {"LONG": 1.0, "SHORT": -1.0}.get(s.direction)
            exit_close = exits[(s.bar_end, s.symbol)].exit_close
            rows.append(
                base
                | {
                    "status": RESOLVED,
                    "reason": None,
                    "exit_price": exit_close,
                    "realised_return": float(raw[k]),
                    "neutral_return": float(neutral[k]),
                    "realised_class": DIRECTION_CLASSES[int(classes[k])],
                    "correct": None if sign is None else bool(sign * neutral[k] > 0),
                    "net_return": None if sign is None else float(sign * neutral[k] - cost),
                    "net_return_raw": None if sign is None else float(sign * raw[k] - cost),
                }
            )
        return rows

    def _write(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Insert the rows, skipping any (signal, horizon) already there.

        PostgreSQL: one statement over column arrays (``unnest``), sent in binary: 500 rows in a few
        milliseconds, where an executemany sends one INSERT per row and ``.values(rows)`` compiles 24
        bind parameters per row on every call (5-10x slower). SQLite runs in process: executemany.
        """
        if not rows:
            return
        if conn.dialect.name != "postgresql":
            stmt = self._insert(SignalOutcome).on_conflict_do_nothing(
                index_elements=["signal_id", "horizon_bars"]
            )
            conn.execute(stmt, list(rows))
            return
        # Outcomes can always be scored again (the cursor is the table itself): a commit lost in a
        # server crash is re-done by the next pass, so this transaction need not wait for the WAL
        # flush.
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        # The arrays go in psycopg's binary format (%b), on this transaction's own connection: in text
        # format psycopg quotes and escapes each of the 12,000 elements, most of a write's time.
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(_PG_INSERT, {name: [r[name] for r in rows] for name in _PG_COLUMNS})
        finally:
            cursor.close()

    # -- queries --------------------------------------------------------------------------------------
    def _scored_through(self, horizon_bars: int) -> datetime | None:
        stmt = select(func.max(SignalOutcome.minute)).where(SignalOutcome.horizon_bars == horizon_bars)
        with self.engine.connect() as conn:
            value = conn.execute(stmt).scalar()
        return _utc(value) if value is not None else None

    def _minutes(self, start: datetime, due_by: datetime, *, inclusive: bool, limit: int) -> list[datetime]:
        after = SignalRecord.minute >= start if inclusive else SignalRecord.minute > start
        stmt = (
            select(SignalRecord.minute)
            .where(after, SignalRecord.minute <= due_by)
            .group_by(SignalRecord.minute)
            .order_by(SignalRecord.minute)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_utc(m) for m in conn.execute(stmt).scalars()]

    def _signals(self, conn: Connection, minute: datetime, label: str) -> list[_Signal]:
        """The minute's signals with this horizon's numbers taken out of their JSON by the database
        (nothing to parse here)."""
        probs = SignalRecord.probabilities[label]
        cols = (
            SignalRecord.id,
            SignalRecord.symbol,
            SignalRecord.model_version,
            SignalRecord.created_at,
            SignalRecord.bar_end,
            SignalRecord.direction,
            SignalRecord.entry_price,
            probs["long"].as_float().label("p_long"),
            probs["short"].as_float().label("p_short"),
            probs["flat"].as_float().label("p_flat"),
            SignalRecord.returns[label].as_float().label("predicted"),
        )
        stmt = select(*cols).where(SignalRecord.minute == minute).order_by(SignalRecord.id)
        return [
            _Signal(
                r.id,
                r.symbol,
                r.model_version,
                _utc(r.created_at),
                _utc(r.bar_end),
                r.direction,
                float(r.entry_price),
                (_opt(r.p_long), _opt(r.p_short), _opt(r.p_flat)),
                _opt(r.predicted),
            )
            for r in conn.execute(stmt)
        ]

    def _config(self, version: str) -> ModelConfig:
        if version not in self._config_cache:
            try:
                self._config_cache[version] = self.configs(version)
            except (PermanentError, ValidationError) as exc:  # deleted or foreign: the default rules
                log.warning("model config unavailable, default label rules", version=version, error=str(exc))
                self._config_cache[version] = ModelConfig(direction_labels="tercile")
        return self._config_cache[version]


# Every column the scorer writes, with its PostgreSQL type (the unnest insert's casts).
_PG_COLUMNS: dict[str, str] = {
    "signal_id": "bigint",
    "symbol": "varchar",
    "minute": "timestamptz",
    "signal_made_at": "timestamptz",
    "model_version": "varchar",
    "horizon_bars": "integer",
    "status": "varchar",
    "reason": "text",
    "direction": "varchar",
    "actionable": "boolean",
    "exit_time": "timestamptz",
    "entry_price": "double precision",
    "exit_price": "double precision",
    "realised_return": "double precision",
    "neutral_return": "double precision",
    "realised_class": "varchar",
    "predicted_return": "double precision",
    "prob_long": "double precision",
    "prob_short": "double precision",
    "prob_flat": "double precision",
    "correct": "boolean",
    "net_return": "double precision",
    "net_return_raw": "double precision",
    "cost": "double precision",
}
_PG_INSERT = (
    f"INSERT INTO signal_outcomes ({', '.join(_PG_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%({name})b::{kind}[]" for name, kind in _PG_COLUMNS.items())
    + ") ON CONFLICT (signal_id, horizon_bars) DO NOTHING"
)

_EMPTY: dict[str, Any] = {
    "exit_price": None,
    "realised_return": None,
    "neutral_return": None,
    "realised_class": None,
    "correct": None,
    "net_return": None,
    "net_return_raw": None,
}


def _unresolved_reason(found: HorizonExit) -> str | None:
    """Why a symbol cannot be scored at this horizon (yet); None when it can."""
    if found.exit_close is None:
        return "no exit candle stored"
    if found.exit_filled:
        return "exit candle is a gap fill (exchange outage)"
    if found.gap_minutes:
        return f"{found.gap_minutes} minutes of the horizon missing at the exchange (gap-filled)"
    return None


def _realised_classes(neutral: np.ndarray, config: ModelConfig, horizon_bars: int) -> np.ndarray:
    """The version's own classes of one minute's neutral returns (LONG 0, SHORT 1, FLAT 2)."""
    if neutral.size == 0:
        return np.empty(0, dtype=np.int64)
    if horizon_bars in config.horizons:
        threshold = config.direction_thresholds[config.horizons.index(horizon_bars)]
    else:
        threshold = ModelConfig().direction_thresholds[HORIZONS.index(horizon_bars)]
    column = neutral.reshape(-1, 1)
    thresholds = np.array([threshold], dtype=np.float64)
    if config.direction_labels == "tercile":
        times = np.zeros(neutral.size, dtype=np.int64)
        return tercile_classes(column, times, thresholds, MIN_NEUTRAL_GROUP)[:, 0]
    return direction_classes(column, thresholds)[:, 0]


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

