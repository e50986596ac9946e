"""``mlsignals data …``: backfill, sync, import and status of the candle store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import EXIT_PARTIAL, clean_errors, console, policy, ready_store, settings, split_symbols
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms

if TYPE_CHECKING:
    from rich.progress import Progress

    from core.settings import Settings
    from data.ingest import IngestReport
    from data.stream.service import CandleStreamService
    from data.validation import Gap

app = typer.Typer(help="Market data: backfill, sync, import and status.", no_args_is_help=True)

SymbolsOption = typer.Option(None, "--symbols", "-s", help="Symbols, comma-separated or repeated.")


def _progress() -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


def _report(report: IngestReport) -> None:
    rate = report.inserted / report.elapsed_s if report.elapsed_s else 0.0
    console.print(
        f"{report.kind}: {len(report.outcomes)} symbols, {report.fetched} candles fetched, "
        f"{report.inserted} new, {len(report.failed)} failed in {report.elapsed_s:.2f} s "
        f"({rate:,.0f} new candles/s); window {iso_minute(report.start_ms)} .. {iso_minute(report.end_ms)}",
        highlight=False,
    )
    if report.failed:
        table = Table("symbol", "rule", "detail", title="quarantined")
        for symbol, outcome in sorted(report.failed.items()):
            table.add_row(escape(symbol), escape(outcome.rule or ""), escape(outcome.detail or ""))
        console.print(table)
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
@clean_errors
def backfill(
    days: float = typer.Option(..., "--days", min=1 / 1440, help="How many days of history to load."),
    symbols: list[str] | None = SymbolsOption,
) -> None:
    """Load DAYS of closed 1-minute candles for every symbol; resumable and idempotent."""
    from data.ingest import Ingestor
    from data.sources.factory import make_source, resolve_symbols

    s = settings()
    store = ready_store(s)
    source = make_source(s)
    names = resolve_symbols(s, source, split_symbols(symbols))
    ingestor = Ingestor(store, source, policy(s), max_workers=_workers(s))
    chunks = len(names) * int(-(-days // 1))
    with _progress() as bar:
        task = bar.add_task("backfill", total=chunks)
        report = ingestor.backfill(names, days, progress=lambda n: bar.advance(task, n))
    _report(report)


@app.command()
@clean_errors
def sync(symbols: list[str] | None = SymbolsOption) -> None:
    """Fetch only the closed candles newer than what is stored."""
    from data.ingest import Ingestor
    from data.sources.factory import make_source, resolve_symbols

    s = settings()
    store = ready_store(s)
    source = make_source(s)
    names = resolve_symbols(s, source, split_symbols(symbols))
    ingestor = Ingestor(store, source, policy(s), max_workers=_workers(s))
    report = ingestor.sync(names, initial_minutes=s.data.sync_initial_minutes)
    _report(report)


@app.command()
@clean_errors
def stream(symbols: list[str] | None = SymbolsOption) -> None:
    """Stream closed candles from the exchange's WebSocket into the store until stopped (one per deployment).

    Every (re)connect and every hole is repaired over REST first; watermarks and completed minutes
    go to Redis, where the minute's feature tasks wait for them (docs/DATA.md).
    """
    import asyncio

    import redis

    from data.sources.factory import make_source, resolve_symbols
    from data.stream.factory import check_streamable, make_stream_service
    from data.stream.watermark import RedisWatermarks

    s = settings()
    check_streamable(s)
    store = ready_store(s)
    source = make_source(s)
    names = resolve_symbols(s, source, split_symbols(symbols))
    client = redis.Redis.from_url(s.redis_url, socket_timeout=10, health_check_interval=30)
    service = make_stream_service(s, store, source, RedisWatermarks(client), names)
    console.print(
        f"streaming {len(names)} symbols from {service.feed.name} into {db_label(s)}; Ctrl-C stops",
        highlight=False,
    )
    asyncio.run(_until_signalled(service))
    console.print(
        f"stream stopped: {service.stats.written} candles written, {service.stats.reconnects} reconnects",
        highlight=False,
    )


@app.command("stream-status")
@clean_errors
def stream_status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Is the stream service alive, and how far are the symbols' watermarks? Exit 1 when not alive."""
    import redis

    from data.sources.factory import make_source, resolve_symbols
    from data.stream.watermark import RedisWatermarks

    s = settings()
    source = make_source(s)
    names = resolve_symbols(s, source)
    marks = RedisWatermarks(redis.Redis.from_url(s.redis_url, socket_timeout=5))
    alive = marks.is_alive(source.name)
    got = marks.get(source.name, names)
    newest_closed = floor_minute(now_ms()) - MINUTE_MS
    behind = sorted(n for n in names if got.get(n, -1) < newest_closed)
    record = {
        "exchange": source.name,
        "alive": alive,
        "symbols": len(names),
        "current": len(names) - len(behind),
        "behind": behind[:50],
        "oldest_mark": iso_minute(min(got.values())) if got else None,
    }
    if as_json:
        console.print_json(json.dumps(record))
    else:
        state = "alive" if alive else "NOT RUNNING"
        console.print(
            f"stream on {source.name}: {state}; {record['current']}/{len(names)} symbols stored through "
            f"{iso_minute(newest_closed)}",
            highlight=False,
        )
        if behind:
            console.print(f"behind: {', '.join(behind[:20])}", highlight=False)
    if not alive:
        raise typer.Exit(EXIT_PARTIAL)


async def _until_signalled(service: CandleStreamService) -> None:
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.run(stop)


def db_label(s: Settings) -> str:
    return s.database_url.rsplit("@", 1)[-1]


@app.command("import")
@clean_errors
def import_file(
    file: Path = typer.Argument(..., help="CSV, Parquet or ccxt/freqtrade JSON file (docs/DATA_IMPORT.md)."),
    symbol: str = typer.Option(..., "--symbol", help="Symbol the candles belong to."),
    exchange: str | None = typer.Option(
        None,
        help="Exchange label to store under (default: the freqtrade folder it lies in, else 'import').",
    ),
) -> None:
    """Validate a file of 1-minute candles and store it; nothing is written if any rule fails.

    Missing minutes are filled (flagged, never counted as trades) and reported with where they are.
    """
    from data.file_import import import_candle_file

    s = settings()
    done = import_candle_file(ready_store(s), file, symbol, policy(s), exchange=exchange)
    console.print(
        f"{file}: {done.read} candles read, {done.filled_minutes} filled in {len(done.gaps)} gaps, "
        f"{done.inserted} new for {symbol} on {done.exchange}",
        highlight=False,
    )
    _print_gaps(done.gaps)


def _print_gaps(gaps: Sequence[Gap], shown: int = 10) -> None:
    if not gaps:
        return
    outages = [g for g in gaps if g.outage]
    longest = sorted(gaps, key=lambda g: (-g.minutes, g.start_ms))[:shown]
    console.print(
        f"gaps: {len(gaps)}, longest {longest[0].minutes} min, {len(outages)} longer than "
        f"{settings().data.max_fill_gap_minutes} min (long gaps); the {len(longest)} longest:",
        highlight=False,
    )
    for gap in sorted(longest, key=lambda g: g.start_ms):
        console.print(f"  {gap.describe()}", highlight=False)


@app.command()
@clean_errors
def status(
    symbols: list[str] | None = SymbolsOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per symbol: newest candle, gaps, staleness and quarantine reason."""
    from data.sources.factory import make_source
    from quality.data_status import store_health

    s = settings()
    health = store_health(s, ready_store(s), make_source(s).name, split_symbols(symbols))
    doc = health.to_json()
    records, outage_records = doc["symbols"], doc["exchange_outages"]
    if as_json:
        console.print_json(json.dumps(doc))
        return
    table = Table(title=f"candles on {health.exchange}")
    table.add_column("symbol", no_wrap=True, min_width=16)
    table.add_column("candles", justify="right")
    table.add_column("newest (UTC)", no_wrap=True, min_width=16)
    for name in ("gaps", "filled", "staleness"):
        table.add_column(name, justify="right")
    table.add_column("quarantine")
    table.add_column("signal")
    for rec in records:
        lag_s = rec["staleness_s"]
        table.add_row(
            str(rec["symbol"]),
            str(rec["candles"]),
            str(rec["newest"] or "-").replace("T", " ").removesuffix(":00Z"),
            str(rec["missing_minutes"]),
            str(rec["filled_minutes"]),
            "-" if lag_s is None else f"{lag_s} s" + (" STALE" if rec["stale"] else ""),
            escape(f"{rec['quarantine']}: {rec['reason']}") if rec["quarantine"] else "",
            escape(str(rec["signal_blocked"] or "ok")),
        )
    console.print(table)
    gaps = sum(int(str(rec["missing_minutes"])) for rec in records)
    console.print(f"{len(records)} symbols, {gaps} missing minutes in total", highlight=False)
    for o in outage_records:
        console.print(
            f"exchange outage: {o['start']} .. {o['end']} ({o['minutes']} min, {o['symbols']} symbols)",
            highlight=False,
        )
    for rec in records:
        if rec["last_outage"]:
            console.print(f"{rec['symbol']}: {rec['last_outage']}", highlight=False)


def _workers(s: Settings) -> int:
    # Exchange fetches wait on the network; the simulator is CPU-bound and gains nothing from threads.
    return s.ml_integration.max_parallel if s.data.source == "exchange" else 1
