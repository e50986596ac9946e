"""The exporter's ``quality`` part: the live quality of the champion's and the challenger's signals,
read from the signal-quality ledger (``signal_outcomes``, ``quality_events``; quality/).

Per model version holding the champion or the challenger alias and per horizon (15m, 1h, 4h, 12h),
the figures of ``quality.rolling.window_figures`` over the newest ``quality.window_signals`` resolved
signals (the ``last_signals`` window of ``mlsignals signals quality``): mean per-minute IC and its
t-statistic, hit rate and mean net return of the actionable signals per direction, ECE, Brier score,
and the window's resolved and actionable signals. The outcomes they read change once per scoring
pass, so they are recomputed at most once per ``quality.interval_seconds`` (the scorer's own period)
or when an alias moves; the refreshes in between serve the cached families.

Reading a window costs about a second per 50,000 rows (8 windows: 10 s of the exporter's CPU), so the
windows are kept between computations and only what the scorer added is read: the outcomes from the
window's newest minute on (the scorer writes each (minute, horizon) group in one transaction, in
minute order). The window is then cut as ``load_outcomes`` cuts it (the newest whole minutes that fit
in the limit) and held against the table: a count of its rows from its first minute on must equal
the table's, else (a replay of old minutes, a purge) it is read again whole. Each window is also read
whole once per ``FULL_RELOAD_SECONDS``, one window per computation at most, so those reads spread out.

Read at every refresh, because they are index lookups: the newest scored minute per horizon (the
scorer's progress), the breaker's trips in ``quality_events`` and the newest one's time. The breaker's
settings are exported as gauges labelled with the horizon the breaker watches, so that an alert can
select that horizon by matching on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Connection, Engine, func, select

from core.settings import Settings
from data.models import QualityEvent, SignalOutcome
from ml.drift import MODERATE_PSI
from ml.outputs import horizon_label
from ml.registry import ALIASES, Registry
from quality.breaker import breaker_horizon
from quality.drift import DriftResult, latest_drift
from quality.events import TRIP
from quality.outcomes import HORIZONS, RESOLVED
from quality.rolling import DIRECTIONS, OutcomeRows, load_outcomes, window_figures

ALL = "all"  # the direction label of the figures over both directions
FIGURE_LABELS = ("model_version", "role", "horizon")
# Each kept window is read whole again this often (one window per computation at most).
FULL_RELOAD_SECONDS = 3600.0


class QualityFiguresError(RuntimeError):
    """The last computation of the figures failed; raised again until the next one is due."""


def breaker_settings_families(settings: Settings) -> Iterable[Metric]:
    """``quality.breaker``'s settings, labelled with the horizon it watches."""
    cfg = settings.quality.breaker
    horizon = horizon_label(breaker_horizon(settings), settings.data.bar_minutes)
    values = {
        "mlsignals_quality_breaker_enabled": (
            1.0 if cfg.enabled else 0.0,
            "1 when the quality breaker judges the champion (quality.breaker.enabled).",
        ),
        "mlsignals_quality_breaker_hit_rate_floor_ratio": (
            cfg.hit_rate_floor,
            "quality.breaker.hit_rate_floor: the breaker trips below this hit rate.",
        ),
        "mlsignals_quality_breaker_ic_floor": (
            cfg.ic_floor,
            "quality.breaker.ic_floor: the breaker trips below this mean IC.",
        ),
        "mlsignals_quality_breaker_min_samples": (
            float(cfg.min_samples),
            "quality.breaker.min_samples: resolved actionable signals before any verdict.",
        ),
    }
    for name, (value, documentation) in values.items():
        family = GaugeMetricFamily(name, documentation, labels=["horizon"])
        family.add_metric([horizon], float(value))
        yield family


def drift_families(settings: Settings, result: DriftResult | None) -> Iterable[Metric]:
    """The champion's newest feature-drift pass (quality/drift.py): one row, read every refresh.
    Every family is declared, without samples before the first pass."""
    q = settings.quality
    yield GaugeMetricFamily(
        "mlsignals_feature_drift_alert_psi_ratio",
        "quality.drift_alert_psi: a feature's PSI at or above it is major drift.",
        value=q.drift_alert_psi,
    )
    status = GaugeMetricFamily(
        "mlsignals_feature_drift_status",
        "1 for the newest drift pass's status (ok, no_model, no_bins, no_windows).",
        labels=["status"],
    )
    computed = GaugeMetricFamily(
        "mlsignals_feature_drift_computed_timestamp_seconds", "Unix time of the newest drift pass."
    )
    samples = GaugeMetricFamily("mlsignals_feature_drift_samples", "Live rows the newest pass compared.")
    minutes = GaugeMetricFamily("mlsignals_feature_drift_minutes", "Pipeline minutes those rows came from.")
    psi_max = GaugeMetricFamily("mlsignals_feature_drift_psi_max", "The highest PSI of the 240 features.")
    levels = GaugeMetricFamily(
        "mlsignals_feature_drift_features",
        "Features whose PSI is at least 0.1 (moderate) or at least drift_alert_psi (major).",
        labels=["level"],
    )
    worst = GaugeMetricFamily(
        "mlsignals_feature_drift_psi",
        "PSI of the quality.drift_top worst features (names from the fixed feature spec).",
        labels=["feature"],
    )
    if result is not None:
        status.add_metric([result.status], 1.0)
        computed.add_metric([], _timestamp(result.computed_at))
        samples.add_metric([], float(result.samples))
        minutes.add_metric([], float(result.minutes))
        if result.max_psi is not None:
            psi_max.add_metric([], result.max_psi)
        values = [v for v in result.psi.values() if v is not None]
        levels.add_metric(["moderate"], float(sum(1 for v in values if v >= MODERATE_PSI)))
        levels.add_metric(["major"], float(sum(1 for v in values if v >= q.drift_alert_psi)))
        for item in result.worst[: q.drift_top]:
            worst.add_metric([str(item["feature"])], float(item["psi"]))
    yield from (status, computed, samples, minutes, psi_max, levels, worst)


@dataclass
class QualityMetrics:
    """Builds the quality part's families; the window figures are cached between computations."""

    settings: Settings
    engine: Engine
    registry: Registry
    _figures: list[Metric] = field(default_factory=list, init=False)
    _attempted_at: float | None = field(default=None, init=False)
    _key: tuple[tuple[str, str], ...] | None = field(default=None, init=False)
    _error: str | None = field(default=None, init=False)
    # (version, horizon bars) -> (the window, when it was last read whole)
    _windows: dict[tuple[str, int], tuple[OutcomeRows, float]] = field(default_factory=dict, init=False)
    # How many times the figures were computed and windows read whole (the tests and the benchmark).
    computations: int = field(default=0, init=False)
    full_reads: int = field(default=0, init=False)

    def families(self, now_s: float) -> list[Metric]:
        versions = self.versions()
        with self.engine.connect() as conn:
            cheap = [*self.scored_through_families(conn), *self.trip_families(conn)]
        drift = list(drift_families(self.settings, latest_drift(self.engine, versions.get("champion"))))
        return [*cheap, *drift, *self.figure_families(versions, now_s)]

    def reset(self) -> None:
        """Forget the kept windows and the cached figures: the next refresh reads everything."""
        self._windows.clear()
        self._figures, self._attempted_at, self._key, self._error = [], None, None, None

    def versions(self) -> dict[str, str]:
        """{role: version} of the registry's champion and challenger (the ones set)."""
        aliases = self.registry.aliases()
        return {role: str(aliases[role]) for role in ALIASES if aliases.get(role)}

    # -- every refresh: index lookups ------------------------------------------------------------------
    def scored_through_families(self, conn: Connection) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "mlsignals_quality_scored_through_timestamp_seconds",
            "Unix time of the newest minute with a scored outcome at the horizon (0: none yet).",
            labels=["horizon"],
        )
        o = SignalOutcome
        for h in HORIZONS:
            # One lookup per horizon: (horizon_bars, minute) is ix_signal_outcomes_horizon_minute.
            newest = conn.execute(select(func.max(o.minute)).where(o.horizon_bars == h)).scalar()
            family.add_metric([self._label(h)], _timestamp(newest) if newest is not None else 0.0)
        yield family

    def trip_families(self, conn: Connection) -> Iterable[Metric]:
        e = QualityEvent
        count, newest = conn.execute(select(func.count(), func.max(e.at)).where(e.kind == TRIP)).one()
        yield CounterMetricFamily(
            "mlsignals_quality_breaker_trips",
            "Trips of the quality breaker recorded in quality_events, ever.",
            value=float(count or 0),
        )
        last = GaugeMetricFamily(
            "mlsignals_quality_breaker_last_trip_timestamp_seconds",
            "Unix time of the quality breaker's newest trip (absent before the first).",
        )
        if newest is not None:
            last.add_metric([], _timestamp(newest))
        yield last

    # -- at most once per quality.interval_seconds ----------------------------------------------------
    def figure_families(self, versions: Mapping[str, str], now_s: float) -> list[Metric]:
        key = tuple(sorted(versions.items()))
        interval = self.settings.quality.interval_seconds
        due = (
            self._attempted_at is None
            or key != self._key
            or not 0 <= now_s - self._attempted_at < interval  # a clock set back counts as due
        )
        if not due:
            if self._error is not None:
                raise QualityFiguresError(f"the last computation failed: {self._error}")
            return self._figures
        self._attempted_at, self._key = now_s, key
        try:
            figures = self.compute(versions, now_s)
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            raise
        self._figures, self._error = figures, None
        self.computations += 1
        return figures

    def compute(self, versions: Mapping[str, str], now_s: float) -> list[Metric]:
        """Every figure of the ``last_signals`` window, per version and horizon."""
        bar_minutes = self.settings.data.bar_minutes
        families = _FigureFamilies()
        wanted = {(version, h) for version in versions.values() for h in HORIZONS}
        for gone in set(self._windows) - wanted:  # a version that lost its alias
            del self._windows[gone]
        # The window read whole longest ago, when it is due: at most one per computation.
        due = [
            k for k, (_, read_at) in self._windows.items() if not 0 <= now_s - read_at < FULL_RELOAD_SECONDS
        ]
        reread = min(due, key=lambda k: self._windows[k][1], default=None)
        for role, version in sorted(versions.items()):
            for h in HORIZONS:
                rows = self.window(version, h, now_s, whole=(version, h) == reread)
                families.add([version, role, self._label(h)], window_figures(rows, h, bar_minutes))
        return families.all()

    def window(self, version: str, horizon_bars: int, now_s: float, *, whole: bool = False) -> OutcomeRows:
        """The newest ``quality.window_signals`` resolved outcomes (``load_outcomes``' window), from
        the kept one and what the scorer added since (the module's docstring)."""
        limit = self.settings.quality.window_signals
        kept = self._windows.get((version, horizon_bars))
        rows = None
        if kept is not None and not whole and kept[0].size:
            old = kept[0]
            newest = int(old.minute_ms[-1])
            added = load_outcomes(self.engine, version, horizon_bars, since=_datetime(newest))
            merged = _concat(_select(old, np.flatnonzero(old.minute_ms < newest)), added)
            rows = _newest_whole_minutes(merged, limit)
            if rows.size and self._resolved_since(version, horizon_bars, int(rows.minute_ms[0])) != rows.size:
                rows = None  # the table changed below the window's newest minute: read it whole
        if rows is None:
            rows = load_outcomes(self.engine, version, horizon_bars, limit=limit)
            self.full_reads += 1
            self._windows[(version, horizon_bars)] = (rows, now_s)
        else:
            self._windows[(version, horizon_bars)] = (rows, kept[1] if kept is not None else now_s)
        return rows

    def _resolved_since(self, version: str, horizon_bars: int, minute_ms: int) -> int:
        o = SignalOutcome
        stmt = select(func.count()).where(
            o.model_version == version,
            o.horizon_bars == horizon_bars,
            o.status == RESOLVED,
            o.minute >= _datetime(minute_ms),
        )
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)

    def _label(self, horizon_bars: int) -> str:
        return horizon_label(horizon_bars, self.settings.data.bar_minutes)


class _FigureFamilies:
    """The figure gauges, filled one (version, role, horizon) at a time; a figure the window cannot
    give (no actionable signal, too few minutes for a t-statistic) has no sample."""

    def __init__(self) -> None:
        def gauge(name: str, documentation: str, *extra: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, documentation, labels=[*FIGURE_LABELS, *extra])

        self.ic = gauge("mlsignals_quality_ic", "Mean per-minute Spearman IC of the window.")
        self.ic_t = gauge(
            "mlsignals_quality_ic_tstat",
            "The mean IC over its Newey-West standard error (absent while the window is too short).",
        )
        self.hit_rate = gauge(
            "mlsignals_quality_hit_rate_ratio",
            "Share of the window's actionable signals whose market-neutral return had their sign.",
            "direction",
        )
        self.net = gauge(
            "mlsignals_quality_mean_net_return_ratio",
            "Mean market-neutral return of the window's actionable signals, signed, after costs.",
            "direction",
        )
        self.ece = gauge("mlsignals_quality_calibration_ece", "Top-label expected calibration error.")
        self.brier = gauge("mlsignals_quality_brier_score", "Mean Brier score over LONG, SHORT, FLAT.")
        self.signals = gauge("mlsignals_quality_window_signals", "Resolved signals in the window.")
        self.actionable = gauge(
            "mlsignals_quality_window_actionable_signals", "Resolved actionable signals in the window."
        )

    def add(self, labels: Sequence[str], figures: Mapping[str, Any]) -> None:
        labels = list(labels)
        _put(self.ic, labels, figures["ic"]["mean"])
        _put(self.ic_t, labels, figures["ic"]["t"])
        directions = figures["directions"]
        _put(self.hit_rate, [*labels, ALL], figures["hit_rate"])
        _put(self.net, [*labels, ALL], _pooled_net_return(directions))
        for name in DIRECTIONS:
            _put(self.hit_rate, [*labels, name], directions[name]["hit_rate"])
            _put(self.net, [*labels, name], directions[name]["mean_net_return"])
        _put(self.ece, labels, figures["ece"])
        _put(self.brier, labels, figures["brier"])
        _put(self.signals, labels, figures["signals"])
        _put(self.actionable, labels, figures["actionable"])

    def all(self) -> list[Metric]:
        return [
            self.ic,
            self.ic_t,
            self.hit_rate,
            self.net,
            self.ece,
            self.brier,
            self.signals,
            self.actionable,
        ]


def _pooled_net_return(directions: Mapping[str, Mapping[str, Any]]) -> float | None:
    """The mean net return over both directions: their means weighted by their signals."""
    parts = [
        (d["signals"], d["mean_net_return"])
        for d in directions.values()
        if d["signals"] and d["mean_net_return"] is not None and math.isfinite(d["mean_net_return"])
    ]
    total = sum(n for n, _ in parts)
    return sum(n * mean for n, mean in parts) / total if total else None


def _select(rows: OutcomeRows, index: npt.NDArray[np.intp]) -> OutcomeRows:
    values: dict[str, Any] = {}
    for f in fields(rows):
        column = getattr(rows, f.name)
        values[f.name] = [column[i] for i in index] if isinstance(column, list) else column[index]
    return OutcomeRows(**values)


def _concat(a: OutcomeRows, b: OutcomeRows) -> OutcomeRows:
    values: dict[str, Any] = {}
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        values[f.name] = [*x, *y] if isinstance(x, list) else np.concatenate([x, y])
    return OutcomeRows(**values)


def _newest_whole_minutes(rows: OutcomeRows, limit: int) -> OutcomeRows:
    """The newest ``limit`` rows (oldest first, as ``load_outcomes`` orders them), without the
    oldest minute when the limit splits it: what ``load_outcomes(limit=...)`` returns."""
    if rows.size <= limit:
        return rows
    start = rows.size - limit
    cut = rows.minute_ms[start - 1]
    return _select(rows, start + np.flatnonzero(rows.minute_ms[start:] != cut))


def _put(family: GaugeMetricFamily, labels: list[str], value: float | int | None) -> None:
    if value is not None and math.isfinite(value):
        family.add_metric(labels, float(value))


def _datetime(minute_ms: int) -> datetime:
    return datetime.fromtimestamp(minute_ms / 1000, UTC)


def _timestamp(value: datetime) -> float:
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    return moment.timestamp()
