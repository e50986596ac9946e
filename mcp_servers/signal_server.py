"""ml-signal: the signals the minute pipeline made, why each is what it is, how the minutes ran and
how good the signals have been; with ``mcp.allow_write``, one mutation: start a minute.

Read tools: ``latest_signals``, ``signal_history``, ``explain_signal``, ``pipeline_status``,
``signal_quality``. Write tool (audited): ``run_minute``. docs/MCP.md has examples.

``latest_signals`` answers with one model version's *newest minute* (not the newest signal per
symbol): the signals one minute's run published together, so that a symbol missing from it is
visibly missing rather than silently older.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from core.settings import Settings
from mcp_servers.common import check_limit, check_range, parse_time
from mcp_servers.domain import Domain
from mcp_servers.serving import HttpOptions, new_server
from pipeline.explain import SignalExplanation
from pipeline.signal_queries import DirectionFilter, HistoryRow, SignalRow

if TYPE_CHECKING:
    from data.models import PipelineRun, SignalRecord
    from pipeline.explain import ArtefactCache, ModelArtefacts
    from pipeline.signal_queries import NewestMinute

INSTRUCTIONS = (
    "ml-signal: the trading signals of the minute pipeline (one per symbol and minute per model "
    "version; LONG/SHORT/NEUTRAL with confidence, entry, stop-loss and take-profit). latest_signals: "
    "the newest minute of the champion (or a version); signal_history: one symbol over a range; "
    "explain_signal: the raw outputs, the decoder's rule that fired and the window's extreme features; "
    "pipeline_status: the last minutes' runs; signal_quality: live hit rates, IC and calibration. "
    "Times are ISO 8601 UTC (e.g. 2026-12-04T08:00Z)."
)

# latest_signals looks back this far for a version's newest minute: a version without a minute in
# it has no *latest* signals (signal_history reads older ones).
LATEST_LOOKBACK = timedelta(days=1)
HISTORY_DEFAULT = timedelta(days=1)
# How many symbols an error message offers as valid.
HINT_SYMBOLS = 5
# A ledger row lists at most this many of its failed symbols (a failed minute can name 500).
MAX_FAILURES_LISTED = 20
# Celery: the task beat sends each minute, and how long sending it may take before the tool gives up.
RUN_MINUTE_TASK = "tasks.pipeline.run_minute"
SEND_TIMEOUT_S = 15.0
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

Model = Annotated[
    str,
    Field(min_length=1, max_length=64, description="champion (default), challenger, or a version id."),
]
Symbol = Annotated[str, Field(min_length=1, max_length=64, description="e.g. BTC/USDT:USDT")]
HorizonName = Literal["15m", "1h", "4h", "12h"]


# -- results -----------------------------------------------------------------------------------------
class LatestSignals(BaseModel):
    model_version: str
    minute: datetime | None = Field(description="The version's newest minute (None: none in the last day).")
    age_seconds: float | None = Field(description="How long ago that minute began.")
    matched: int = Field(description="Signals of that minute matching the filters.")
    returned: int
    truncated: bool = Field(description="True when more matched than the limit returned.")
    directions: dict[str, int] = Field(description="Returned signals per direction.")
    signals: list[SignalRow] = Field(description="Most confident first.")
    notes: list[str] = Field(default_factory=list)


class SignalHistory(BaseModel):
    symbol: str
    since: datetime
    until: datetime
    model_version: str | None = Field(description="The version asked for; None: every version.")
    returned: int
    truncated: bool = Field(description="True when the range holds more than the limit: narrow it.")
    signals: list[HistoryRow] = Field(description="Newest first.")
    notes: list[str] = Field(default_factory=list)


class LedgerMinute(BaseModel):
    minute: datetime
    status: str = Field(description="running, done, partial, failed, skipped_late or missed.")
    model_version: str | None
    symbols_asked: int
    signals_made: int
    failed: int = Field(description="Symbols that got no signal.")
    failures: dict[str, str] = Field(description=f"Symbol -> reason, the first {MAX_FAILURES_LISTED}.")
    timings: dict[str, float] = Field(description="Seconds per stage (minute_total: the whole minute).")
    note: str | None
    started_at: datetime
    finished_at: datetime | None
    attempts: int
    stage: str | None


class PipelineStatus(BaseModel):
    champion: str | None = Field(description="The registry's champion now.")
    returned: int
    statuses: dict[str, int] = Field(description="Minutes per status among those returned.")
    minutes: list[LedgerMinute] = Field(description="Newest first.")


class TradingState(BaseModel):
    halted: bool
    reason: str | None


class BreakerEvent(BaseModel):
    at: datetime
    kind: str
    source: str
    model_version: str | None
    reason: str
    figures: dict[str, Any] | None


class QualityReport(BaseModel):
    model_version: str
    windows: dict[str, dict[str, Any]] = Field(
        description="The report's windows: last_signals (limit) and last_days (since), or since."
    )
    horizons: list[dict[str, Any]] = Field(
        description="Per horizon and window: signals, minutes, hit rate, per-direction hit and net return, "
        "IC (mean, t), ECE, Brier, unresolved."
    )
    trading: TradingState
    breaker_events: list[BreakerEvent] = Field(description="The quality breaker's newest events.")


class MinuteRun(BaseModel):
    task_id: str = Field(description="The Celery id of the run_minute task sent.")
    minute: datetime | None = Field(description="The minute asked (None: the minute current at the worker).")
    replay: bool
    broker: str = Field(description="Where the task went (password masked).")
    status: str = Field(
        description="queued (no answer within the wait), running, duplicate, failed, skipped_late, "
        "or the ledger's final status (done, partial, failed) once the minute finished."
    )
    waited_seconds: float
    outcome: dict[str, Any] | None = Field(description="The run_minute task's own answer.")
    run: LedgerMinute | None = Field(description="The ledger's row of the minute once it finished.")
    notes: list[str] = Field(default_factory=list)


# -- the server --------------------------------------------------------------------------------------
def build(settings: Settings, domain: Domain, http: HttpOptions | None = None) -> MCPServer:
    server, tools = new_server("signal", INSTRUCTIONS, settings, domain, http)
    helper = _Helper(settings, domain)

    @tools.read(title="Latest signals")
    def latest_signals(
        symbols: Annotated[
            list[str] | None,
            Field(description="Only these symbols (at most mcp.max_symbols, 500 by default); default: all."),
        ] = None,
        min_confidence: Annotated[
            float | None, Field(ge=0.0, le=1.0, description="Only signals at least this confident.")
        ] = None,
        direction: Annotated[
            DirectionFilter | None,
            Field(description="LONG, SHORT, NEUTRAL, or ACTIONABLE (LONG or SHORT); default: all."),
        ] = None,
        model: Model = "champion",
        limit: Annotated[
            int | None,
            Field(
                ge=1, description="At most this many rows (default and limit: mcp.max_rows, 1000 by default)."
            ),
        ] = None,
    ) -> LatestSignals:
        """The newest minute's signals of the champion (or of `model`), most confident first, filtered by
        symbols, minimum confidence and direction. Looks back one day for the version's newest minute;
        rows are capped at mcp.max_rows. Unknown symbols are an error; symbols without a signal in that
        minute are listed in notes."""
        version = helper.version(model)
        row_limit = check_limit(settings.mcp.max_rows if limit is None else limit, settings)
        asked = helper.symbol_list(symbols)
        result = helper.newest(version, asked, min_confidence, direction, row_limit)
        notes: list[str] = []
        if result.minute is None:
            notes.append(
                f"no signals of {version} in the last {LATEST_LOOKBACK.days} day: see pipeline_status, or "
                "signal_history for older ones"
            )
        if asked is not None:
            notes += helper.missing_symbols(version, asked, result.rows, result.minute)
        return LatestSignals(
            model_version=version,
            minute=result.minute,
            age_seconds=None
            if result.minute is None
            else round((datetime.now(UTC) - result.minute).total_seconds(), 3),
            matched=result.matched,
            returned=len(result.rows),
            truncated=result.matched > len(result.rows),
            directions=dict(Counter(r.direction for r in result.rows)),
            signals=result.rows,
            notes=notes,
        )

    @tools.read(title="Signal history of a symbol")
    def signal_history(
        symbol: Symbol,
        since: Annotated[
            str | None, Field(description="ISO 8601 start, inclusive (default: one day before until).")
        ] = None,
        until: Annotated[str | None, Field(description="ISO 8601 end, exclusive (default: now).")] = None,
        limit: Annotated[
            int, Field(ge=1, description="At most this many rows (1..mcp.max_rows, 1000 by default).")
        ] = 100,
        model: Annotated[
            str | None,
            Field(max_length=64, description="champion, challenger or a version id; default: every version."),
        ] = None,
    ) -> SignalHistory:
        """One symbol's stored signals in [since, until), newest first, each marked `served` when its
        version was that minute's champion (published and traded) rather than a shadow challenger.
        The range may span at most mcp.max_range_days days and the rows mcp.max_rows."""
        end = parse_time(until, "until", default=datetime.now(UTC))
        start = parse_time(since, "since", default=end - HISTORY_DEFAULT)
        check_range(start, end, settings, "since..until")
        check_limit(limit, settings)
        version = None if model is None else helper.version(model)
        name = helper.spelling(symbol)
        from pipeline.signal_queries import symbol_history

        rows, truncated = symbol_history(
            domain.engine, name, since=start, until=end, limit=limit, version=version
        )
        notes = [] if rows else [f"{name} has no signal in this range: widen it or see latest_signals"]
        if truncated:
            notes.append(f"more than {limit} signals in the range: narrow it or raise the limit")
        return SignalHistory(
            symbol=name,
            since=start,
            until=end,
            model_version=version,
            returned=len(rows),
            truncated=truncated,
            signals=rows,
            notes=notes,
        )

    @tools.read(title="Explain a signal")
    def explain_signal(
        symbol: Symbol,
        minute: Annotated[str, Field(description="The signal's minute, ISO 8601 (e.g. 2026-12-04T08:00Z).")],
        model: Annotated[
            str | None,
            Field(
                max_length=64,
                description="champion, challenger or a version id; default: the version that served the "
                "minute as champion (the ledger's).",
            ),
        ] = None,
        top_features: Annotated[
            int, Field(ge=1, le=50, description="How many of the window's most extreme features.")
        ] = 10,
    ) -> SignalExplanation:
        """Why one stored signal is what it is: the model's 20 raw outputs, the decoded probabilities and
        returns per horizon, the decoder's rule with its numbers (edge vs cost + margin, agreement of
        the probabilities, confidence vs threshold: which one made it LONG, SHORT or NEUTRAL), entry,
        stop-loss and take-profit, and the newest row's most extreme scaled features of the window
        (recomputed from the stored candles with the version's own scaler)."""
        at = parse_time(minute, "minute").replace(second=0, microsecond=0)
        return helper.explain(symbol, at, model, top_features)

    @tools.read(title="Pipeline status")
    def pipeline_status(
        minutes: Annotated[
            int, Field(ge=1, description="How many of the newest minutes (1..mcp.max_rows, 1000 by default).")
        ] = 10,
    ) -> PipelineStatus:
        """The pipeline ledger's newest minutes: status (done, partial, failed, skipped_late, missed,
        running), the model version, symbols asked, signals made, failures with reasons (the first
        20 per minute), timings per stage, note, attempts. At most mcp.max_rows minutes."""
        check_limit(minutes, settings)
        runs = domain.ledger.recent(limit=minutes)
        rows = [ledger_minute(r) for r in runs]
        return PipelineStatus(
            champion=helper.champion(),
            returned=len(rows),
            statuses=dict(Counter(r.status for r in rows)),
            minutes=rows,
        )

    @tools.read(title="Live signal quality")
    def signal_quality(
        model: Model = "champion",
        horizon: Annotated[HorizonName | None, Field(description="One horizon; default: all four.")] = None,
        since: Annotated[
            str | None,
            Field(
                description="ISO 8601: one window from then on (at most mcp.max_range_days back); default: "
                "the last quality.window_signals signals and the last quality.window_days days."
            ),
        ] = None,
    ) -> QualityReport:
        """The live quality of a version's signals per horizon (as `mlsignals signals quality --json`):
        hit rate and net return per direction, IC with its t-statistic, calibration (ECE, Brier),
        unresolved outcomes; the trading switch and the quality breaker's newest events."""
        from ml.evaluation import json_ready
        from quality.live import live_quality, parse_horizon
        from quality.outcomes import HORIZONS
        from quality.report import without_series

        start = None
        if since is not None:
            start = parse_time(since, "since")
            check_range(start, datetime.now(UTC), settings, "since..now")
        version = helper.report_version(model)
        horizons = parse_horizon(horizon) or HORIZONS
        report = live_quality(domain.engine, settings, version, horizons=horizons, since=start)
        return QualityReport.model_validate(json_ready(without_series(report)))

    @tools.write(title="Run a minute", destructive=False, idempotent=False)
    def run_minute(
        minute: Annotated[
            str | None,
            Field(description="ISO 8601 minute (default: the current one). A past minute needs replay."),
        ] = None,
        replay: Annotated[
            bool, Field(description="Run a past minute on purpose (no lateness check), as `run --replay`.")
        ] = False,
    ) -> MinuteRun:
        """Send the pipeline's minute task (tasks.pipeline.run_minute) to the Celery broker, as beat
        does, and wait up to mcp.run_minute_wait_seconds for the minute to finish; answers with the
        task id either way. A minute runs once (the ledger): one already there is an error. Sending is
        bounded: an unreachable broker is an error after about 15 s, never a hang."""
        return helper.run_minute(minute, replay)

    return server


def ledger_minute(run: PipelineRun) -> LedgerMinute:
    from core.timegrid import as_utc

    failures = dict(run.failures or {})
    timings = {
        str(k): float(v)
        for k, v in (run.timings or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return LedgerMinute(
        minute=as_utc(run.minute),
        status=run.status,
        model_version=run.model_version,
        symbols_asked=run.symbols_asked,
        signals_made=run.signals_made,
        failed=len(failures),
        failures={str(k): str(v) for k, v in list(failures.items())[:MAX_FAILURES_LISTED]},
        timings=timings,
        note=run.note,
        started_at=as_utc(run.started_at),
        finished_at=None if run.finished_at is None else as_utc(run.finished_at),
        attempts=run.attempts,
        stage=run.stage,
    )


class _Helper:
    """The tools' shared steps: model and symbol checks, and the longer tools' bodies."""

    def __init__(self, settings: Settings, domain: Domain) -> None:
        self.settings = settings
        self.domain = domain
        self._artefacts: ArtefactCache | None = None
        self._lock = threading.Lock()

    # -- models -------------------------------------------------------------------------------------
    def version(self, model: str) -> str:
        """The version ``model`` names in the registry, or a tool error saying what is valid."""
        from ml.registry import RegistryError

        try:
            return self.domain.registry.resolve(model)
        except RegistryError as exc:
            raise ToolError(f"{exc}; {self.valid_models()}") from None

    def valid_models(self) -> str:
        registry = self.domain.registry
        aliases = registry.aliases()
        versions = registry.versions()
        shown = ", ".join(versions[-HINT_SYMBOLS:]) + (", …" if len(versions) > HINT_SYMBOLS else "")
        return (
            f"valid: champion ({aliases.get('champion') or 'none'}), challenger "
            f"({aliases.get('challenger') or 'none'}) or a version id ({len(versions)} stored"
            f"{': ' + shown if versions else ''})"
        )

    def champion(self) -> str | None:
        value = self.domain.registry.aliases().get("champion")
        return str(value) if value else None

    def report_version(self, model: str) -> str:
        """As ``mlsignals signals quality``: a version no longer in the registry is still reported when
        it has scored signals; one that has neither is an error."""
        from ml.registry import RegistryError
        from quality.live import has_outcomes, report_version

        try:
            version = report_version(self.domain.registry, model)
        except RegistryError as exc:
            raise ToolError(f"{exc}; {self.valid_models()}") from None
        if version not in self.domain.registry.versions() and not has_outcomes(self.domain.engine, version):
            raise ToolError(
                f"unknown model version {version!r}: not in the registry and no scored signals; "
                f"{self.valid_models()}"
            )
        return version

    # -- symbols ------------------------------------------------------------------------------------
    def symbol_list(self, symbols: list[str] | None) -> list[str] | None:
        if symbols is None:
            return None
        asked = list(dict.fromkeys(s.strip() for s in symbols if s.strip()))
        if not asked:
            raise ToolError("symbols is empty: give at least one symbol, or leave it out for all")
        if len(asked) > self.settings.mcp.max_symbols:
            raise ToolError(
                f"{len(asked)} symbols asked; at most {self.settings.mcp.max_symbols} (mcp.max_symbols)"
            )
        return asked

    def spelling(self, symbol: str) -> str:
        """``symbol`` as the signals table spells it (as given, else upper case), or a tool error."""
        from pipeline.signal_queries import symbols_with_signals

        name = symbol.strip()
        found = symbols_with_signals(self.domain.engine, [name, name.upper()])
        if name in found:
            return name
        if name.upper() in found:
            return name.upper()
        raise ToolError(self.unknown_message([name]))

    def unknown_message(self, unknown: list[str]) -> str:
        from pipeline.signal_queries import newest_symbols

        champion = self.champion()
        hint: list[str] = []
        if champion is not None:
            since = datetime.now(UTC) - LATEST_LOOKBACK
            hint = newest_symbols(self.domain.engine, champion, since, HINT_SYMBOLS + 1)
        shown = ", ".join(hint[:HINT_SYMBOLS]) + (", …" if len(hint) > HINT_SYMBOLS else "")
        plural, them = ("s", "them") if len(unknown) > 1 else ("", "it")
        newest = f"; symbols of the newest minute: {shown}" if shown else ""
        return (
            f"unknown symbol{plural}: {', '.join(unknown)} (no signal was ever stored for {them}{newest}; "
            "latest_signals lists them all)"
        )

    def newest(
        self,
        version: str,
        asked: list[str] | None,
        min_confidence: float | None,
        direction: DirectionFilter | None,
        limit: int,
    ) -> NewestMinute:
        from pipeline.signal_queries import newest_minute_signals

        # Both spellings in one IN list: the common case (exact) costs nothing extra.
        wanted = None if asked is None else sorted({*asked, *(s.upper() for s in asked)})
        return newest_minute_signals(
            self.domain.engine,
            version,
            since=datetime.now(UTC) - LATEST_LOOKBACK,
            limit=limit,
            symbols=wanted,
            min_confidence=min_confidence,
            direction=direction,
        )

    def missing_symbols(
        self, version: str, asked: list[str], rows: list[SignalRow], minute: datetime | None
    ) -> list[str]:
        """Notes on the asked symbols without a returned row; a tool error when one was never signalled."""
        from pipeline.signal_queries import symbols_with_signals

        got = {r.symbol for r in rows}
        missing = [s for s in asked if s not in got and s.upper() not in got]
        if not missing:
            return []
        known = symbols_with_signals(self.domain.engine, [*missing, *(s.upper() for s in missing)])
        unknown = [s for s in missing if s not in known and s.upper() not in known]
        if unknown:
            raise ToolError(self.unknown_message(unknown))
        if minute is None:
            return []
        when = minute.strftime("%Y-%m-%dT%H:%MZ")
        return [
            f"no signal of {version} at {when} matching the filters for: {', '.join(missing)} "
            "(filtered out, or not signalled that minute: signal_history has their newest)"
        ]

    # -- explain ------------------------------------------------------------------------------------
    def artefacts(self) -> ArtefactCache:
        with self._lock:
            if self._artefacts is None:
                from pipeline.explain import ArtefactCache

                self._artefacts = ArtefactCache(self.domain.registry)
            return self._artefacts

    def explain(self, symbol: str, minute: datetime, model: str | None, top: int) -> SignalExplanation:
        from pipeline.explain import explain_record
        from pipeline.signal_queries import champion_of_minute, prediction_at, signals_at

        engine = self.domain.engine
        name = symbol.strip()
        rows = signals_at(engine, name, minute)
        if not rows and name.upper() != name:
            name = name.upper()
            rows = signals_at(engine, name, minute)
        if not rows:
            raise ToolError(self.no_signal_message(symbol.strip(), minute))
        served_by = champion_of_minute(engine, minute)
        record, notes = self.pick(rows, model, served_by, minute)
        artefacts, why = self.load_artefacts(record.model_version)
        if why:
            notes.append(why)
        return explain_record(
            record,
            prediction_at(engine, name, minute, record.model_version),
            artefacts,
            store=self.domain.store,
            exchange=self.domain.exchange,
            settings=self.settings,
            served_by=served_by,
            top=top,
            notes=notes,
        )

    def no_signal_message(self, symbol: str, minute: datetime) -> str:
        from pipeline.signal_queries import nearest_minutes, symbols_with_signals

        engine = self.domain.engine
        found = symbols_with_signals(engine, [symbol, symbol.upper()])
        if not found:
            return self.unknown_message([symbol])
        name = symbol if symbol in found else symbol.upper()
        before, after = nearest_minutes(engine, name, minute)
        near = [
            f"{label} {m.strftime('%Y-%m-%dT%H:%MZ')}"
            for label, m in (("before:", before), ("after:", after))
            if m is not None
        ]
        return (
            f"no signal of {name} at {minute.strftime('%Y-%m-%dT%H:%MZ')}; its nearest signals: "
            f"{', '.join(near)}"
        )

    def pick(
        self, rows: list[SignalRecord], model: str | None, served_by: str | None, minute: datetime
    ) -> tuple[SignalRecord, list[str]]:
        """The row of the version asked for; by default the minute's champion's."""
        by_version = {r.model_version: r for r in rows}
        there = ", ".join(sorted(by_version))
        when = minute.strftime("%Y-%m-%dT%H:%MZ")
        if model is not None:
            version = model if model in by_version else self.version(model)
            if version not in by_version:
                raise ToolError(f"no signal of {version} at {when} for this symbol; versions there: {there}")
            return by_version[version], []
        if served_by in by_version:
            return by_version[str(served_by)], []
        if len(rows) == 1:
            return rows[0], []
        champion = self.champion()
        if champion in by_version:
            return by_version[str(champion)], [
                f"several versions signalled at {when} ({there}): the champion's"
            ]
        raise ToolError(f"several versions signalled at {when} ({there}): name one with model")

    def load_artefacts(self, version: str) -> tuple[ModelArtefacts | None, str | None]:
        from core.errors import PermanentError

        try:
            return self.artefacts().get(version), None
        except PermanentError as exc:
            return None, f"the version's scaler and output schema cannot be loaded ({exc}): default schema"

    # -- run_minute ---------------------------------------------------------------------------------
    def run_minute(self, minute: str | None, replay: bool) -> MinuteRun:
        when = self.check_minute(minute, replay)
        from kombu.utils.url import maybe_sanitize_url

        from worker.app import app

        broker = str(maybe_sanitize_url(app.conf.broker_write_url or app.conf.broker_url or "memory://"))
        kwargs: dict[str, Any] = {"replay": replay}
        if when is not None:
            kwargs["minute"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        began = time.monotonic()
        job = _MinuteJob(kwargs, self.settings.mcp.run_minute_wait_seconds)
        task_id = job.send(SEND_TIMEOUT_S, broker)
        job.finished.wait(max(0.0, self.settings.mcp.run_minute_wait_seconds - (time.monotonic() - began)))
        waited = round(time.monotonic() - began, 3)
        notes: list[str] = []
        outcome = job.outcome
        run = None
        if job.error is not None:
            notes.append(job.error)
        if outcome is None:
            status = "queued"
            if job.error is None:
                notes.append(
                    f"no answer within {self.settings.mcp.run_minute_wait_seconds:g} s "
                    "(mcp.run_minute_wait_seconds): no worker consumes the control queue, or it is busy; "
                    "the task stays queued: pipeline_status shows the minute once it runs"
                )
        else:
            status = str(outcome.get("status"))
            if job.chord_done and outcome.get("minute"):
                from pipeline.clock import minute_dt

                row = self.domain.ledger.get(minute_dt(str(outcome["minute"])))
                if row is not None:
                    run = ledger_minute(row)
                    status = run.status
            elif "result_id" in outcome and job.error is None:
                notes.append("the minute is still running: pipeline_status shows it once it finishes")
        return MinuteRun(
            task_id=task_id,
            minute=when,
            replay=replay,
            broker=broker,
            status=status,
            waited_seconds=waited,
            outcome=outcome,
            run=run,
            notes=notes,
        )

    def check_minute(self, minute: str | None, replay: bool) -> datetime | None:
        if minute is None:
            if replay:
                raise ToolError("replay needs a minute: name the past minute to run (ISO 8601)")
            return None
        when = parse_time(minute, "minute")
        if when.second or when.microsecond:
            raise ToolError(f"minute {minute!r} is not on the minute grid (e.g. 2026-12-04T08:00Z)")
        now = datetime.now(UTC)
        if when > now:
            raise ToolError(f"minute {when.isoformat()} is in the future (now {now.isoformat()})")
        delay = (now - when).total_seconds()
        limit = self.settings.pipeline.max_start_delay_seconds
        if not replay and delay > limit:
            raise ToolError(
                f"minute {when.isoformat()} began {delay:.0f} s ago, more than "
                f"pipeline.max_start_delay_seconds ({limit:g} s): a live start would be skipped as late; "
                "pass replay=true to run a past minute on purpose"
            )
        existing = self.domain.ledger.get(when)
        if existing is not None:
            raise ToolError(
                f"minute {when.isoformat()} already has a run (status {existing.status}): the ledger allows "
                "one run per minute"
            )
        return when


class _MinuteJob:
    """One run_minute: sent, then waited for, on a thread of its own, so that the tool's own wait is
    bounded whatever the broker or the result backend do (a connection that never answers included).
    The thread ends on its own by the same deadline."""

    def __init__(self, kwargs: dict[str, Any], wait_s: float) -> None:
        self.kwargs = kwargs
        self.wait_s = wait_s
        self.sent = threading.Event()
        self.finished = threading.Event()
        self.task_id: str | None = None
        self.send_error: BaseException | None = None
        self.outcome: dict[str, Any] | None = None
        self.chord_done = False
        self.error: str | None = None

    def send(self, timeout_s: float, broker: str) -> str:
        threading.Thread(target=self._run, name="mcp-run-minute", daemon=True).start()
        if not self.sent.wait(timeout_s):
            raise ToolError(
                f"the broker at {broker} did not take the task within {timeout_s:g} s: is it running? "
                "(the send goes on in the background and may still arrive)"
            )
        if self.send_error is not None or self.task_id is None:
            exc = self.send_error
            raise ToolError(
                f"could not send {RUN_MINUTE_TASK} to the broker at {broker}: {type(exc).__name__}: {exc}"
            )
        return self.task_id

    def _run(self) -> None:
        from celery.exceptions import TimeoutError as CeleryTimeout

        from worker.app import app

        began = time.monotonic()
        try:
            result = app.send_task(
                RUN_MINUTE_TASK, kwargs=self.kwargs, retry=True, retry_policy=SEND_RETRY_POLICY
            )
            self.task_id = result.id
        except Exception as exc:  # noqa: BLE001 - handed to the tool's thread, which words the error
            self.send_error = exc
            return
        finally:
            self.sent.set()
        try:
            outcome = result.get(timeout=self.wait_s, propagate=True)
            self.outcome = dict(outcome) if isinstance(outcome, dict) else {"value": outcome}
            chord_id = self.outcome.get("result_id")
            if chord_id:
                left = max(0.1, self.wait_s - (time.monotonic() - began))
                app.AsyncResult(str(chord_id)).get(timeout=left, propagate=True)
                self.chord_done = True
        except CeleryTimeout:
            pass
        except Exception as exc:  # noqa: BLE001 - reported in the tool's answer
            self.error = f"the minute's task failed or its result is unreadable: {type(exc).__name__}: {exc}"
        finally:
            self.finished.set()
