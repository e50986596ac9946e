"""``mlsignals data …``: backfill, sync, import and status of the candle store."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.common import EXIT_PARTIAL, clean_errors, console, policy, ready_store, settings, split_symbols
from core.settings import Settings
from core.timegrid import MINUTE_MS, iso_minute, now_ms
from data.ingest import Ingestor, IngestReport
from data.sources.factory import make_source, resolve_symbols
from data.sources.files import read_candle_file
from data.validation import staleness_ms, validate_batch

app = typer.Typer(help="Market data: backfill, sync, import and status.", no_args_is_help=True)

SymbolsOption = typer.Option(None, "--symbols", "-s", help="Symbols, comma-separated or repeated.")


def _progress() -> Progress:
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
    s = settings()
    store = ready_store(s)
    source = make_source(s)
    names = resolve_symbols(s, source, split_symbols(symbols))
    ingestor = Ingestor(store, source, policy(s), max_workers=_workers(s))
    report = ingestor.sync(names, initial_minutes=s.data.sync_initial_minutes)
    _report(report)


@app.command("import")
@clean_errors
def import_file(
    file: Path = typer.Argument(..., help="CSV or Parquet OHLCV file (docs/DATA_IMPORT.md)."),
    symbol: str = typer.Option(..., "--symbol", help="Symbol the candles belong to."),
    exchange: str | None = typer.Option(
        None, help="Exchange label to store under (default: the configured source)."
    ),
) -> None:
    """Validate a file of 1-minute candles and store it; nothing is written if any rule fails."""
    s = settings()
    store = ready_store(s)
    label = exchange or make_source(s).name
    frame = read_candle_file(file)
    before = store.candle_before(label, symbol, int(frame["open_time"].min())) if len(frame) else None
    batch = validate_batch(
        frame,
        symbol,
        now_ms=now_ms(),
        policy=policy(s),
        expected_start_ms=None if before is None else before.open_time + MINUTE_MS,
        prev_close=None if before is None else before.close,
    )
    inserted = store.write(label, [batch])
    console.print(
        f"{file}: {len(frame)} candles read, {batch.filled_minutes} filled, "
        f"{inserted} new for {symbol} on {label}",
        highlight=False,
    )


@app.command()
@clean_errors
def status(
    symbols: list[str] | None = SymbolsOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Per symbol: newest candle, gaps, staleness and quarantine reason."""
    s = settings()
    store = ready_store(s)
    label = make_source(s).name
    rows = store.status(label, split_symbols(symbols))
    now = now_ms()
    records = []
    for r in rows:
        lag = staleness_ms(r.newest_open_ms, now)
        records.append(
            {
                "symbol": r.symbol,
                "candles": r.candles,
                "first": iso_minute(r.first_open_ms) if r.first_open_ms is not None else None,
                "newest": iso_minute(r.newest_open_ms) if r.newest_open_ms is not None else None,
                "missing_minutes": r.missing_minutes,
                "filled_minutes": r.filled_minutes,
                "staleness_s": None if lag is None else lag // 1000,
                "stale": lag is None or lag > s.data.stale_after_seconds * 1000,
                "quarantine": r.quarantine_rule,
                "reason": r.quarantine_detail,
            }
        )
    if as_json:
        console.print_json(json.dumps(records))
        return
    table = Table(title=f"candles on {label}")
    table.add_column("symbol", no_wrap=True, min_width=16)
    table.add_column("candles", justify="right")
    table.add_column("newest (UTC)", no_wrap=True, min_width=16)
    for name in ("gaps", "filled", "staleness"):
        table.add_column(name, justify="right")
    table.add_column("quarantine")
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
        )
    console.print(table)
    gaps = sum(int(str(rec["missing_minutes"])) for rec in records)
    console.print(f"{len(records)} symbols, {gaps} missing minutes in total", highlight=False)


def _workers(s: Settings) -> int:
    # Exchange fetches wait on the network; the simulator is CPU-bound and gains nothing from threads.
    return s.ml_integration.max_parallel if s.data.source == "exchange" else 1
