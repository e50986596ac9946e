"""ml-data: the candle store through MCP.

Read-only tools: ``list_symbols``, ``data_status``, ``get_candles``, ``get_bars``, ``get_features``;
the resource template ``candles://{symbol}/latest``. With ``mcp.allow_write``: ``backfill`` and
``import_file`` (audited). Everything reads the configured exchange's rows (the source's name labels
them), through the project's domain code (data/store.py, data/ingest.py, data/file_import.py,
quality/data_status.py, ml/features), never through the CLI.

This module does not use ``from __future__ import annotations``: the tools' parameter types carry
limits read from the settings when the server is built (``Field(le=settings.mcp.max_rows)``), and the
SDK evaluates string annotations in the module's globals, where ``settings`` does not exist.
"""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.from_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import BaseModel, Field

from core.settings import Settings
from core.timegrid import MINUTE_MS, dt_to_ms, floor_minute, iso_minute
from data.bars import BAR_FIELDS
from mcp_servers.common import Toolbox, as_tool_error, check_range, check_symbols, parse_time
from mcp_servers.domain import Domain
from mcp_servers.serving import HttpOptions, new_server
from quality.data_status import ExchangeOutage, SymbolHealth

if TYPE_CHECKING:
    import pandas as pd

    from data.bars import BarPanel
    from data.store import CandleStore
    from ml.scaling import RobustScaler

INSTRUCTIONS = """\
ml-data: the 1-minute candle store of the configured exchange, its health, the model's 15-minute bars
and the 240 features the model reads. Symbols are spelled as the store has them (e.g. BTC/USDT:USDT;
list_symbols names them all). Times are ISO 8601 UTC (2026-12-04T08:00Z) or 'now'. Every result is
bounded: at most mcp.max_rows rows, ranges of at most mcp.max_range_days days; a truncated result says
so. In the resource URI candles://{symbol}/latest the symbol is percent-encoded (RFC 6570):
candles://BTC%2FUSDT%3AUSDT/latest."""

# The newest candles the ``candles://{symbol}/latest`` resource returns.
LATEST_CANDLES = 60

Symbol = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="a symbol as the store spells it, e.g. BTC/USDT:USDT (list_symbols names them)",
    ),
]
Minute = Annotated[
    str | None,
    Field(description="ISO 8601 UTC minute, e.g. 2026-12-04T08:00Z, or 'now' (the default)"),
]


# -- results ---------------------------------------------------------------------------------------
class SymbolSummary(BaseModel):
    symbol: str
    candles: int = Field(description="1-minute candles stored")
    first: str | None = Field(description="open time of the oldest stored candle (UTC)")
    newest: str | None = Field(description="open time of the newest stored candle (UTC)")
    quarantine: str | None = Field(description="the rule that quarantined the symbol, if it is")


class SymbolList(BaseModel):
    exchange: str
    count: int = Field(description="symbols the store holds (or has quarantined) for the exchange")
    truncated: bool = Field(description="true when more symbols exist than the mcp.max_rows listed")
    symbols: list[SymbolSummary]


class DataStatus(BaseModel):
    exchange: str
    as_of: str = Field(description="the time the staleness figures are measured against (UTC)")
    stale: int = Field(description="symbols whose newest candle is older than data.stale_after_seconds")
    quarantined: int
    signal_blocked: int = Field(description="symbols whose window would give no signal this minute")
    truncated: bool = Field(description="true when more symbols exist than the mcp.max_rows listed")
    symbols: list[SymbolHealth]
    exchange_outages: list[ExchangeOutage] = Field(
        description="the same long gap in many symbols at once, over the last day"
    )


class Candle(BaseModel):
    open_time: str = Field(description="open time (UTC); the candle covers one minute from it")
    open: float
    high: float
    low: float
    close: float
    volume: float
    turnover: float | None = Field(description="quote volume; null when the source does not report it")
    filled: bool = Field(description="a flagged fill of a minute the source had no candle for (no trades)")


class Candles(BaseModel):
    symbol: str
    exchange: str
    start: str = Field(description="inclusive start of the range read (UTC)")
    end: str = Field(description="exclusive end of the range read (UTC)")
    count: int = Field(description="candles returned")
    truncated: bool = Field(description="true when the range holds more candles than `limit`")
    remaining: int = Field(description="candles of the range after the last one returned")
    next_start: str | None = Field(description="pass as `start` to read on (when truncated)")
    candles: list[Candle]


class Bar(BaseModel):
    open_time: str
    end_time: str = Field(description="exclusive end: the bar covers [open_time, end_time)")
    open: float | None = Field(description="null when the bar is incomplete")
    high: float | None
    low: float | None
    close: float | None
    volume: float | None
    complete: bool = Field(description="all of the bar's 1-minute candles are stored")
    filled_minutes: int = Field(description="minutes of the bar that are flagged fills, not trades")


class Bars(BaseModel):
    symbol: str
    exchange: str
    anchor: str = Field(description="the minute the bars end at (exclusive; the forming candle's open)")
    bar_minutes: int
    count: int
    incomplete: int = Field(description="bars lacking at least one 1-minute candle")
    bars: list[Bar] = Field(description="oldest first")


class FeatureValue(BaseModel):
    name: str
    group: str
    raw: float = Field(description="the feature as computed from the bars")
    scaled: float = Field(description="after the model's robust scaler (clipped): what the model reads")


class WindowQuality(BaseModel):
    bars: int = Field(description="bars of the model's window (its context)")
    warmup_bars: int = Field(description="bars before the window the features need")
    bar_minutes: int
    newest_bar_end: str = Field(description="end of the newest bar: the minute asked for (UTC)")
    filled_minutes: int = Field(description="minutes of the window that are flagged fills, not trades")
    filled_share: float = Field(description="filled_minutes / the window's minutes")
    newest_bar_real_share: float = Field(description="share of the newest bar's minutes really traded")
    signal_blocked: str | None = Field(
        description="why the pipeline would give this window no signal (pipeline.max_filled_share, "
        "pipeline.min_real_share_newest_bar); null when it would"
    )


class Features(BaseModel):
    symbol: str
    exchange: str
    minute: str = Field(description="the minute the window ends at (UTC)")
    model_version: str = Field(description="the model version whose scaler scaled the values")
    feature_spec: str = Field(description="version and hash of the feature spec")
    close: float = Field(description="close of the newest bar")
    quality: WindowQuality
    features: list[FeatureValue] = Field(description="the 240 features of the window's newest bar, in order")


class BackfillOutcome(BaseModel):
    symbol: str
    ok: bool
    fetched: int = Field(description="candles fetched from the source")
    filled: int = Field(description="missing minutes filled (flagged)")
    newest: str | None = Field(description="the newest stored candle afterwards (UTC)")
    rule: str | None = Field(description="why the symbol failed (it is quarantined), if it did")
    detail: str | None
    gaps: int = Field(description="gaps found in the fetched history")


class BackfillResult(BaseModel):
    exchange: str
    start: str
    end: str
    inserted: int = Field(description="candles new to the store (0 when all were stored already)")
    fetched: int
    failed: int
    seconds: float
    outages: int = Field(description="exchange-wide outages found (the same gap in many symbols)")
    symbols: list[BackfillOutcome]


class ImportedGap(BaseModel):
    start: str
    end: str
    minutes: int
    filled: int
    long: bool = Field(description="longer than data.max_fill_gap_minutes (an outage)")


class ImportResult(BaseModel):
    file: str = Field(description="the file, relative to the import directory")
    symbol: str
    exchange: str
    read: int = Field(description="candles in the file")
    inserted: int = Field(description="candles new to the store (0 on a re-import)")
    filled_minutes: int
    gaps: list[ImportedGap] = Field(description="the longest gaps (at most 20)")
    gap_count: int


# -- the server --------------------------------------------------------------------------------------
def build(settings: Settings, domain: Domain, http: HttpOptions | None = None) -> MCPServer:
    server, tools = new_server("data", INSTRUCTIONS, settings, domain, http)
    data = _Data(settings, domain)
    _store_tools(tools, data)
    _model_tools(tools, data)
    _latest_resource(server, data)
    _write_tools(tools, data)
    return server


class _Data:
    """What the tools share: the settings, the domain's handles, the argument checks."""

    def __init__(self, settings: Settings, domain: Domain) -> None:
        self.settings = settings
        self.limits = settings.mcp
        self.domain = domain
        self.bar_minutes = settings.data.bar_minutes
        self.scalers = _Scalers(domain)

    @property
    def exchange(self) -> str:
        return self.domain.exchange

    @property
    def store(self) -> "CandleStore":
        return self.domain.store

    def known_symbol(self, symbol: str) -> str:
        """``symbol`` as the store spells it, or a tool error naming what exists."""
        # One index look-up on the common path; the full list only to explain a miss.
        if self.store.newest(self.exchange, [symbol]):
            return symbol
        return check_symbols([symbol], self.store.symbols(self.exchange), self.settings)[0]

    def listed_symbols(self, symbols: list[str]) -> list[str]:
        """``symbols`` as the configured source lists them, or a tool error naming the others."""
        listed = self.domain.source.list_symbols()
        by_upper = {s.upper(): s for s in listed}
        unknown = [s for s in symbols if s.upper() not in by_upper]
        if unknown:
            raise ToolError(
                f"{self.exchange} does not list {', '.join(unknown)} ({len(listed)} symbols listed, "
                f"e.g. {', '.join(listed[:3])})"
            )
        return [by_upper[s.upper()] for s in symbols]

    def minute_of(self, value: str | None, name: str) -> int:
        return floor_minute(dt_to_ms(parse_time(value, name, default=datetime.now(UTC))))


def _store_tools(tools: Toolbox, data: _Data) -> None:
    limits, settings = data.limits, data.settings

    @tools.read(title="List the stored symbols")
    def list_symbols() -> SymbolList:
        """The symbols the candle store holds for the configured exchange (and the quarantined ones),
        each with its number of 1-minute candles, first and newest open time and quarantine rule.
        At most mcp.max_rows symbols (``truncated`` says when there are more)."""
        rows = data.store.status(data.exchange)
        shown = rows[: limits.max_rows]
        return SymbolList(
            exchange=data.exchange,
            count=len(rows),
            truncated=len(rows) > len(shown),
            symbols=[
                SymbolSummary(
                    symbol=r.symbol,
                    candles=r.candles,
                    first=None if r.first_open_ms is None else iso_minute(r.first_open_ms),
                    newest=None if r.newest_open_ms is None else iso_minute(r.newest_open_ms),
                    quarantine=r.quarantine_rule,
                )
                for r in shown
            ],
        )

    @tools.read(title="Data health per symbol")
    def data_status(
        symbols: Annotated[
            list[str] | None,
            Field(
                max_length=limits.max_symbols,
                description=f"only these symbols (at most {limits.max_symbols}); default: all",
            ),
        ] = None,
    ) -> DataStatus:
        """What ``mlsignals data status`` reports, per symbol: candles stored, first and newest candle,
        missing minutes inside that span, filled minutes, staleness (seconds the newest candle lags
        behind now) and whether that is stale, the quarantine rule and reason, why this minute's
        window would give no signal (too many filled minutes, incomplete bars), the symbol's own long
        gap of the last day; and the exchange-wide outages of the last day. At most mcp.max_rows
        symbols."""
        from quality.data_status import store_health

        names = None
        if symbols:
            known = set(data.store.symbols(data.exchange)) | set(data.store.quarantined(data.exchange))
            names = check_symbols(symbols, sorted(known), settings)
        health = store_health(settings, data.store, data.exchange, names)
        rows = health.symbols
        return DataStatus(
            exchange=health.exchange,
            as_of=_iso(_dt(health.as_of_ms)),
            stale=sum(r.stale for r in rows),
            quarantined=sum(r.quarantine is not None for r in rows),
            signal_blocked=sum(r.signal_blocked is not None for r in rows),
            truncated=len(rows) > limits.max_rows,
            symbols=rows[: limits.max_rows],
            exchange_outages=health.exchange_outages,
        )

    @tools.read(title="1-minute candles")
    def get_candles(
        symbol: Symbol,
        start: Annotated[
            str | None,
            Field(description="inclusive start, ISO 8601 UTC; default: `limit` minutes before `end`"),
        ] = None,
        end: Annotated[str | None, Field(description="exclusive end, ISO 8601 UTC; default: now")] = None,
        limit: Annotated[
            int,
            Field(ge=1, le=limits.max_rows, description=f"most candles returned (at most {limits.max_rows})"),
        ] = 100,
    ) -> Candles:
        """Stored 1-minute candles of a symbol with open time in [start, end), oldest first: OHLCV,
        turnover, and whether each is a flagged fill. The range may span at most mcp.max_range_days
        days; at most ``limit`` candles come back, and a truncated answer gives ``next_start`` to
        read on from."""
        name = data.known_symbol(symbol)
        # By default the range ends at the forming minute: `limit` closed minutes before it.
        end_dt = parse_time(end, "end", default=_dt(floor_minute(dt_to_ms(datetime.now(UTC)))))
        longest = timedelta(days=limits.max_range_days)
        start_dt = parse_time(start, "start", default=end_dt - min(timedelta(minutes=limit), longest))
        check_range(start_dt, end_dt, settings)
        start_ms, end_ms = dt_to_ms(start_dt), dt_to_ms(end_dt)
        # Read at most `limit` minutes (the store holds one candle a minute at most), then count the rest.
        first_ms = -(-start_ms // MINUTE_MS) * MINUTE_MS
        window_end = min(end_ms, first_ms + limit * MINUTE_MS)
        frame = data.store.read_candles(data.exchange, name, start_ms, window_end)
        remaining = 0
        if window_end < end_ms:
            rest = data.store.coverage(data.exchange, [name], window_end, end_ms).get(name)
            remaining = 0 if rest is None else rest[2]
        return Candles(
            symbol=name,
            exchange=data.exchange,
            start=_iso(start_dt),
            end=_iso(end_dt),
            count=len(frame),
            truncated=remaining > 0,
            remaining=remaining,
            next_start=iso_minute(window_end) if remaining else None,
            candles=_candles(frame),
        )


def _model_tools(tools: Toolbox, data: _Data) -> None:
    limits, settings, bar_minutes = data.limits, data.settings, data.bar_minutes

    @tools.read(title="The model's 15-minute bars")
    def get_bars(
        symbol: Symbol,
        minute: Annotated[
            str | None,
            Field(description="the minute the bars end at (exclusive), ISO 8601 UTC; default: now"),
        ] = None,
        count: Annotated[
            int,
            Field(ge=1, le=limits.max_rows, description=f"bars returned (at most {limits.max_rows})"),
        ] = 96,
    ) -> Bars:
        """The anchored bars the model's feature step reads (data/bars.py): the ``count`` bars of
        data.bar_minutes (15) minutes ending at ``minute``, oldest first, each aggregated from the
        stored 1-minute candles (open of its first minute, close of its last). A bar lacking any
        minute is incomplete and has null prices. The bars may span at most mcp.max_range_days days."""
        name = data.known_symbol(symbol)
        anchor = data.minute_of(minute, "minute")
        span = count * bar_minutes * MINUTE_MS
        check_range(_dt(anchor - span), _dt(anchor), settings, what=f"{count} bars of {bar_minutes} min")
        panel = data.store.read_bars(data.exchange, [name], anchor, count, bar_minutes)
        bars = _bars(panel)
        return Bars(
            symbol=name,
            exchange=data.exchange,
            anchor=iso_minute(anchor),
            bar_minutes=bar_minutes,
            count=len(bars),
            incomplete=sum(not b.complete for b in bars),
            bars=bars,
        )

    @tools.read(title="The model's features at a minute")
    def get_features(
        symbol: Symbol,
        minute: Minute = None,
        model_version: Annotated[
            str | None,
            Field(description="whose scaler to apply: a version id or 'champion' (default), 'challenger'"),
        ] = None,
    ) -> Features:
        """The 240 named features of the model's live window at ``minute`` (its newest row), raw and
        scaled with the model's scaler (the champion's unless ``model_version`` names another), as the
        pipeline's feature step computes them from the stored candles: 96 bars of 15 minutes plus the
        features' warm-up, ending at ``minute``. Also the window's quality: filled minutes, how much of
        the newest bar really traded, and why the pipeline would block the signal, if it would.
        A window with an incomplete bar or a non-finite feature has no features: a tool error says why."""
        from ml.features import FEATURE_SPEC
        from ml.features.live import live_features

        name = data.known_symbol(symbol)
        anchor = data.minute_of(minute, "minute")
        version, scaler = data.scalers.get(model_version or "champion")
        FEATURE_SPEC.check_hash(scaler.spec_hash, f"the scaler of model {version}")
        panel = data.store.read_bars(data.exchange, [name], anchor, FEATURE_SPEC.window, bar_minutes)
        raw = live_features(panel)
        if name not in raw.symbols:
            newest = data.store.newest(data.exchange, [name]).get(name)
            stored = "none" if newest is None else iso_minute(newest.open_time)
            raise ToolError(
                f"no features for {name} at {iso_minute(anchor)}: {raw.quality[name].reason} "
                f"(the window needs {FEATURE_SPEC.window} complete {bar_minutes}-minute bars ending then; "
                f"newest stored candle: {stored})"
            )
        values = raw.values[raw.symbols.index(name), -1]
        scaled = scaler.transform(values)
        return Features(
            symbol=name,
            exchange=data.exchange,
            minute=iso_minute(anchor),
            model_version=version,
            feature_spec=f"{FEATURE_SPEC.version} {FEATURE_SPEC.hash[:12]}",
            close=float(panel.close[0, -1]),
            quality=_window_quality(panel, settings, FEATURE_SPEC.context, FEATURE_SPEC.warmup),
            features=[
                FeatureValue(name=f.name, group=f.group, raw=float(r), scaled=float(s))
                for f, r, s in zip(FEATURE_SPEC.features, values.tolist(), scaled.tolist(), strict=True)
            ],
        )


def _latest_resource(server: MCPServer, data: _Data) -> None:
    @server.resource(
        "candles://{symbol}/latest",
        name="latest_candles",
        title="A symbol's newest candles",
        description=(
            f"The newest {LATEST_CANDLES} stored 1-minute candles of a symbol as JSON (oldest first). The "
            "symbol is percent-encoded: candles://BTC%2FUSDT%3AUSDT/latest for BTC/USDT:USDT."
        ),
        mime_type="application/json",
    )
    def latest_candles(symbol: str) -> str:
        try:
            name = data.known_symbol(symbol)
            newest = data.store.newest(data.exchange, [name])[name].open_time
            start = newest - (LATEST_CANDLES - 1) * MINUTE_MS
            frame = data.store.read_candles(data.exchange, name, start, newest + MINUTE_MS)
        except Exception as exc:  # noqa: BLE001 - every failure reaches the client as a clear message
            raise ResourceError(str(as_tool_error(exc, "candles://{symbol}/latest"))) from None
        doc = Candles(
            symbol=name,
            exchange=data.exchange,
            start=iso_minute(start),
            end=iso_minute(newest + MINUTE_MS),
            count=len(frame),
            truncated=False,
            remaining=0,
            next_start=None,
            candles=_candles(frame),
        )
        return doc.model_dump_json()


def _write_tools(tools: Toolbox, data: _Data) -> None:
    """The mutating tools: registered only with mcp.allow_write, each call audited."""
    limits, settings = data.limits, data.settings

    @tools.write(title="Backfill history from the source", destructive=False, idempotent=True)
    async def backfill(
        symbols: Annotated[
            list[str],
            Field(
                min_length=1,
                max_length=limits.max_symbols,
                description=f"symbols the source lists (at most {limits.max_symbols})",
            ),
        ],
        days: Annotated[
            float,
            Field(
                ge=1 / 1440,
                le=limits.max_backfill_days,
                description=f"days of history up to now (at most {limits.max_backfill_days})",
            ),
        ],
        ctx: Context[Any, Any],
    ) -> BackfillResult:
        """Fetch, validate and store ``days`` of closed 1-minute candles for ``symbols`` from the
        configured source (``mlsignals data backfill``). Resumable and idempotent: stored candles are
        never rewritten, complete days are not fetched again. A symbol that fails is quarantined with
        its reason; the others go on. Returns each symbol's outcome. Reports progress (days fetched)."""
        from data.ingest import Ingestor, SymbolOutcome
        from data.validation import ValidationPolicy

        names = data.listed_symbols(symbols)
        # Exchange fetches wait on the network; the simulator is CPU-bound and gains nothing from threads.
        workers = settings.ml_integration.max_parallel if settings.data.source == "exchange" else 1
        ingestor = Ingestor(
            data.store, data.domain.source, ValidationPolicy.from_settings(settings), max_workers=workers
        )
        total = len(names) * int(-(-days // 1))
        done = 0

        def advanced(n: int) -> None:
            nonlocal done
            done += n
            anyio.from_thread.run(ctx.report_progress, done, total, f"{done}/{total} symbol-days")

        report = await anyio.to_thread.run_sync(lambda: ingestor.backfill(names, days, progress=advanced))
        # A symbol whose history was complete already was not fetched, so the report has no outcome for it.
        current = data.store.newest(data.exchange, [n for n in names if n not in report.outcomes])
        outcomes = [
            report.outcomes.get(n)
            or SymbolOutcome(n, newest_open_ms=getattr(current.get(n), "open_time", None))
            for n in names
        ]
        return BackfillResult(
            exchange=ingestor.exchange,
            start=iso_minute(report.start_ms),
            end=iso_minute(report.end_ms),
            inserted=report.inserted,
            fetched=report.fetched,
            failed=len(report.failed),
            seconds=round(report.elapsed_s, 3),
            outages=len(report.outages),
            symbols=[
                BackfillOutcome(
                    symbol=o.symbol,
                    ok=o.ok,
                    fetched=o.fetched,
                    filled=o.filled,
                    newest=None if o.newest_open_ms is None else iso_minute(o.newest_open_ms),
                    rule=o.rule,
                    detail=o.detail,
                    gaps=len(o.gaps),
                )
                for o in outcomes
            ],
        )

    @tools.write(title="Import a candle file", destructive=False, idempotent=True)
    def import_file(
        path: Annotated[
            str,
            Field(
                min_length=1,
                max_length=500,
                description="a file in the import directory (mcp.import_dir), relative to it",
            ),
        ],
        symbol: Annotated[
            str, Field(min_length=1, max_length=64, description="the symbol the candles belong to")
        ],
    ) -> ImportResult:
        """Validate a file of 1-minute candles (CSV, Parquet or ccxt/freqtrade JSON, docs/DATA_IMPORT.md)
        and store it for ``symbol`` under the configured exchange, continuing its stored history
        (``mlsignals data import``). Nothing is written if any rule fails; missing minutes are filled
        (flagged) and reported. Only files inside the import directory (mcp.import_dir, default
        DATA_DIR/imports) are read: anything resolving outside it (``..``, absolute paths elsewhere,
        symlinks leading out) is refused. Re-importing a file inserts nothing."""
        from data.file_import import import_candle_file
        from data.validation import ValidationPolicy

        file = _inside(data.domain.import_dir, path)
        name = _importable_symbol(data, symbol)
        done = import_candle_file(
            data.store, file, name, ValidationPolicy.from_settings(settings), exchange=data.exchange
        )
        longest = sorted(done.gaps, key=lambda g: (-g.minutes, g.start_ms))[:20]
        return ImportResult(
            file=str(file.relative_to(data.domain.import_dir.resolve())),
            symbol=name,
            exchange=done.exchange,
            read=done.read,
            inserted=done.inserted,
            filled_minutes=done.filled_minutes,
            gaps=[
                ImportedGap(
                    start=iso_minute(g.start_ms),
                    end=iso_minute(g.end_ms),
                    minutes=g.minutes,
                    filled=g.filled,
                    long=g.outage,
                )
                for g in sorted(longest, key=lambda g: g.start_ms)
            ],
            gap_count=len(done.gaps),
        )


# -- helpers ---------------------------------------------------------------------------------------
class _Scalers:
    """Model scalers by version, loaded (and verified) once: the live path's own scaler source."""

    def __init__(self, domain: Domain) -> None:
        self._domain = domain
        self._held: dict[str, RobustScaler] = {}
        self._lock = threading.Lock()

    def get(self, ref: str) -> tuple[str, "RobustScaler"]:
        version = self._domain.registry.resolve(ref)
        with self._lock:
            if version not in self._held:
                self._held[version] = self._domain.registry.load(version).scaler
            return version, self._held[version]


def _dt(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def _iso(dt: datetime) -> str:
    """``2026-12-04T08:00:00Z`` (with milliseconds when it has them)."""
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds").replace("+00:00", "Z")


def _finite(value: float) -> float | None:
    return None if value != value else float(value)


def _candles(frame: "pd.DataFrame") -> list[Candle]:
    columns: list[list[Any]] = [
        frame[c].tolist()
        for c in ("open_time", "open", "high", "low", "close", "volume", "turnover", "is_filled")
    ]
    return [
        Candle(
            open_time=iso_minute(int(t)),
            open=o,
            high=h,
            low=lo,
            close=c,
            volume=v,
            turnover=_finite(q),
            filled=bool(f),
        )
        for t, o, h, lo, c, v, q, f in zip(*columns, strict=True)
    ]


def _bars(panel: "BarPanel") -> list[Bar]:
    """The panel's one symbol's bars; an incomplete bar's NaN prices become null."""
    bar_ms = panel.bar_minutes * MINUTE_MS
    values = [getattr(panel, name)[0].tolist() for name in BAR_FIELDS]
    rows = zip(panel.bar_open_ms.tolist(), *values, panel.complete[0].tolist(), strict=True)
    filled = panel.filled_minutes()[0].tolist()
    return [
        Bar(
            open_time=iso_minute(int(t)),
            end_time=iso_minute(int(t) + bar_ms),
            open=_finite(o),
            high=_finite(h),
            low=_finite(lo),
            close=_finite(c),
            volume=_finite(v),
            complete=bool(ok),
            filled_minutes=int(n),
        )
        for (t, o, h, lo, c, v, ok), n in zip(rows, filled, strict=True)
    ]


def _window_quality(panel: "BarPanel", settings: Settings, context: int, warmup: int) -> WindowQuality:
    filled = panel.filled_minutes()[0, -context:]
    blocked = panel.quality_reasons(
        context, settings.pipeline.max_filled_share, settings.pipeline.min_real_share_newest_bar
    )
    return WindowQuality(
        bars=context,
        warmup_bars=warmup,
        bar_minutes=panel.bar_minutes,
        newest_bar_end=iso_minute(panel.anchor_ms),
        filled_minutes=int(filled.sum()),
        filled_share=round(float(filled.sum()) / (context * panel.bar_minutes), 6),
        newest_bar_real_share=round(1.0 - float(filled[-1]) / panel.bar_minutes, 6),
        signal_blocked=blocked.get(panel.symbols[0]),
    )


def _inside(root: Path, path: str) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved with every symlink followed, when it is
    an existing file inside ``root``; a tool error otherwise."""
    base = root.resolve()
    if "\0" in path:
        raise ToolError("path contains a NUL byte")
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        raise ToolError(
            f"{path!r} lies outside the import directory {base} (after following links): "
            "only files inside it (mcp.import_dir) can be imported"
        )
    if not target.is_file():
        raise ToolError(
            f"no file {path!r} in the import directory {base}"
            + (" (it is a directory)" if target.is_dir() else "")
        )
    return target


def _importable_symbol(data: _Data, symbol: str) -> str:
    """A symbol the store holds, or one the configured source lists (its store spelling)."""
    if data.store.newest(data.exchange, [symbol]):
        return symbol
    stored = {s.upper(): s for s in data.store.symbols(data.exchange)}
    return stored.get(symbol.upper()) or data.listed_symbols([symbol])[0]
