"""Backfill and incremental sync: fetch, validate and bulk-write closed candles for many symbols.

Both are idempotent (stored candles are never rewritten) and resumable (work already stored is
skipped chunk by chunk). A symbol that fails is quarantined with its reason; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from core.errors import DataValidationError, MLSignalsError, TemporaryError, UnknownSymbolError
from core.logging import get_logger
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data.sources.base import CandleSource
from data.store import CandleStore, GapRecord, Outage, group_outages
from data.validation import Gap, ValidatedBatch, ValidationPolicy, is_stale, validate_batch

log = get_logger(__name__)

CHUNK_MINUTES = 1440
# A backfill this large changes the table's statistics enough to matter to the bar read's plan.
ANALYZE_AFTER_ROWS = 100_000


@dataclass
class SymbolOutcome:
    symbol: str
    fetched: int = 0
    filled: int = 0
    newest_open_ms: int | None = None
    rule: str | None = None
    detail: str | None = None
    gaps: list[Gap] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rule is None


@dataclass
class IngestReport:
    kind: str
    start_ms: int
    end_ms: int
    outcomes: dict[str, SymbolOutcome] = field(default_factory=dict)
    inserted: int = 0
    elapsed_s: float = 0.0
    # Outages many symbols shared (reported once); the others stay in each outcome's ``gaps``.
    outages: list[Outage] = field(default_factory=list)

    @property
    def fetched(self) -> int:
        return sum(o.fetched for o in self.outcomes.values())

    @property
    def failed(self) -> dict[str, SymbolOutcome]:
        return {s: o for s, o in self.outcomes.items() if not o.ok}

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _Cursor:
    """Where a symbol's next chunk continues stored (or just fetched) history."""

    expected_start: int | None
    prev_close: float | None


ProgressFn = Callable[[int], None]


class Ingestor:
    def __init__(
        self,
        store: CandleStore,
        source: CandleSource,
        policy: ValidationPolicy,
        *,
        exchange: str | None = None,
        max_workers: int = 1,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.store = store
        self.source = source
        self.policy = policy
        self.exchange = exchange or source.name
        self.max_workers = max(1, max_workers)
        self.clock = clock

    def backfill(
        self,
        symbols: Sequence[str],
        days: float,
        *,
        end_ms: int | None = None,
        progress: ProgressFn | None = None,
    ) -> IngestReport:
        end = self._end(end_ms)
        start = end - int(days * 1440) * MINUTE_MS
        report = IngestReport("backfill", start, end)
        active = self._known(symbols, report)
        stored = self.store.chunk_counts(self.exchange, active, start, CHUNK_MINUTES * MINUTE_MS, end)
        chunks = list(range(start, end, CHUNK_MINUTES * MINUTE_MS))
        # Resumable: chunks already complete in the store are not fetched again.
        todo = {
            s: [
                c
                for i, c in enumerate(chunks)
                if stored.get((s, i), 0) < (min(c + CHUNK_MINUTES * MINUTE_MS, end) - c) // MINUTE_MS
            ]
            for s in active
        }
        self._run(report, todo, end, progress)
        if report.inserted >= ANALYZE_AFTER_ROWS:
            self.store.analyze()
        return report

    def sync(
        self,
        symbols: Sequence[str],
        *,
        initial_minutes: int,
        end_ms: int | None = None,
        progress: ProgressFn | None = None,
    ) -> IngestReport:
        """Fetch only candles newer than each symbol's newest stored one (``initial_minutes`` if none)."""
        end = self._end(end_ms)
        report = IngestReport("sync", end - initial_minutes * MINUTE_MS, end)
        active = self._known(symbols, report)
        newest = self.store.newest(self.exchange, active)
        todo: dict[str, list[int]] = {}
        for s in active:
            first = newest[s].open_time + MINUTE_MS if s in newest else report.start_ms
            todo[s] = list(range(first, end, CHUNK_MINUTES * MINUTE_MS))
            if not todo[s]:
                report.outcomes[s] = SymbolOutcome(s, newest_open_ms=newest[s].open_time)
        self._run(report, todo, end, progress)
        return report

    # -------------------------------------------------------------------------------------------
    def _end(self, end_ms: int | None) -> int:
        """Exclusive end: the open time of the forming candle, so only closed candles are asked for."""
        return floor_minute(self.clock() if end_ms is None else end_ms)

    def _known(self, symbols: Sequence[str], report: IngestReport) -> list[str]:
        listed = set(self.source.list_symbols())
        unknown = {
            s: ("unknown_symbol", f"{self.source.name} does not list {s}") for s in symbols if s not in listed
        }
        for s, (rule, detail) in unknown.items():
            report.outcomes[s] = SymbolOutcome(s, rule=rule, detail=detail)
        self.store.quarantine(self.exchange, unknown)
        return [s for s in symbols if s not in unknown]

    def _run(
        self, report: IngestReport, todo: dict[str, list[int]], end: int, progress: ProgressFn | None
    ) -> None:
        began = time.perf_counter()
        cursors: dict[str, _Cursor | None] = dict.fromkeys(todo)
        rounds = max((len(v) for v in todo.values()), default=0)
        with ThreadPoolExecutor(self.max_workers) as pool:
            for r in range(rounds):
                jobs = [
                    (s, chunks[r]) for s, chunks in todo.items() if r < len(chunks) and self._alive(report, s)
                ]
                fetched = pool.map(lambda job: self._fetch(job[0], job[1], end), jobs)
                batches: list[ValidatedBatch] = []
                for (symbol, chunk_start), result in zip(jobs, fetched, strict=True):
                    outcome = report.outcomes.setdefault(symbol, SymbolOutcome(symbol))
                    batch = self._check(outcome, result, chunk_start, cursors)
                    if batch is not None:
                        batches.append(batch)
                report.inserted += self.store.write(self.exchange, batches)
                if progress is not None:
                    progress(len(jobs))
        self._finish(report, end)
        report.elapsed_s = time.perf_counter() - began
        log.info(
            f"{report.kind} done",
            symbols=len(report.outcomes),
            fetched=report.fetched,
            inserted=report.inserted,
            failed=len(report.failed),
            seconds=round(report.elapsed_s, 3),
        )

    @staticmethod
    def _alive(report: IngestReport, symbol: str) -> bool:
        outcome = report.outcomes.get(symbol)
        return outcome is None or outcome.ok

    def _fetch(self, symbol: str, chunk_start: int, end: int) -> pd.DataFrame | MLSignalsError:
        try:
            return self.source.fetch(symbol, chunk_start, min(chunk_start + CHUNK_MINUTES * MINUTE_MS, end))
        except MLSignalsError as exc:
            return exc

    def _check(
        self,
        outcome: SymbolOutcome,
        result: pd.DataFrame | MLSignalsError,
        chunk_start: int,
        cursors: dict[str, _Cursor | None],
    ) -> ValidatedBatch | None:
        symbol = outcome.symbol
        if isinstance(result, MLSignalsError):
            rule = (
                "unknown_symbol"
                if isinstance(result, UnknownSymbolError)
                else "source_unavailable"
                if isinstance(result, TemporaryError)
                else "source_error"
            )
            outcome.rule, outcome.detail = rule, str(result)
            return None
        cursor = cursors[symbol]
        if cursor is None or cursor.expected_start != chunk_start:
            before = self.store.candle_before(self.exchange, symbol, chunk_start)
            cursor = (
                _Cursor(None, None) if before is None else _Cursor(before.open_time + MINUTE_MS, before.close)
            )
        try:
            batch = validate_batch(
                result,
                symbol,
                now_ms=self.clock(),
                policy=self.policy,
                expected_start_ms=cursor.expected_start,
                prev_close=cursor.prev_close,
            )
        except DataValidationError as exc:
            outcome.rule, outcome.detail = exc.rule, str(exc)
            return None
        outcome.fetched += len(result)
        outcome.filled += batch.filled_minutes
        outcome.gaps.extend(batch.gaps)
        if batch.newest_open_ms is not None:
            outcome.newest_open_ms = batch.newest_open_ms
            cursors[symbol] = _Cursor(batch.newest_open_ms + MINUTE_MS, float(batch.frame["close"].iloc[-1]))
        else:
            cursors[symbol] = None
        return batch

    def _finish(self, report: IngestReport, end: int) -> None:
        """Quarantine failures and stale symbols; release the symbols that are clean and fresh."""
        fresh_check = [s for s, o in report.outcomes.items() if o.ok]
        newest = self.store.newest(self.exchange, fresh_check)
        for s in fresh_check:
            outcome = report.outcomes[s]
            outcome.newest_open_ms = newest[s].open_time if s in newest else None
            if is_stale(outcome.newest_open_ms, end, self.policy):
                seen = (
                    "no candle stored"
                    if outcome.newest_open_ms is None
                    else iso_minute(outcome.newest_open_ms)
                )
                outcome.rule, outcome.detail = (
                    "stale",
                    f"newest candle {seen} is older than the staleness bound",
                )
        failed = {s: (o.rule or "", o.detail or "") for s, o in report.outcomes.items() if not o.ok}
        self.store.quarantine(self.exchange, failed)
        self.store.release(self.exchange, [s for s, o in report.outcomes.items() if o.ok])
        for s, (rule, detail) in failed.items():
            log.warning("symbol quarantined", symbol=s, rule=rule, detail=detail)
        self._report_outages(report)

    def _report_outages(self, report: IngestReport) -> None:
        """One line per exchange-wide outage, one per symbol's own: never 500 lines for one event."""
        records = [
            GapRecord(s, g.start_ms, g.end_ms, g.minutes, g.filled, g.outage)
            for s, o in report.outcomes.items()
            for g in o.gaps
            if g.outage
        ]
        report.outages, own = group_outages(records, len(report.outcomes), self.policy.outage_min_share)
        for outage in report.outages:
            log.warning(
                "exchange outage",
                exchange=self.exchange,
                start=iso_minute(outage.start_ms),
                end=iso_minute(outage.end_ms),
                minutes=outage.minutes,
                symbols=len(outage.symbols),
            )
        for gap in own:
            log.warning(
                "symbol outage",
                symbol=gap.symbol,
                start=iso_minute(gap.start_ms),
                end=iso_minute(gap.end_ms),
                minutes=gap.minutes,
            )
