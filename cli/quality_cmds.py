"""``mlsignals signals quality`` and ``mlsignals signals score``: the live quality of the signals
(docs/SIGNAL_QUALITY.md). Registered on the ``signals`` group (cli/signals_cmds.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli.common import clean_errors, console, ready_store, settings


def parse_horizon(value: str | None) -> tuple[int, ...] | None:
    """The domain's horizon names (``quality.live``), imported only when a command runs: it loads
    NumPy and the model code, which ``mlsignals --help`` must not."""
    from quality.live import parse_horizon as parse

    return parse(value)


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    from core.timegrid import parse_minute

    return datetime.fromtimestamp(parse_minute(value) / 1000, tz=UTC)


@clean_errors
def quality(
    model: str = typer.Option("champion", "--model", help="Model version or alias."),
    horizon: str | None = typer.Option(None, "--horizon", help="15m, 1h, 4h or 12h (default: all four)."),
    since: str | None = typer.Option(
        None, "--since", help="ISO time: one window from then on (default: the last N signals and D days)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    plot: Path | None = typer.Option(None, "--plot", help="Write reliability and IC charts (PNG) here."),
) -> None:
    """Rolling live quality of a model's signals per horizon: hit rate and net return per direction,
    IC with its t-statistic, calibration (ECE, Brier); the breaker's state and recent events."""
    from ml.evaluation import json_ready
    from ml.registry import open_registry
    from quality.live import live_quality, report_version
    from quality.outcomes import HORIZONS
    from quality.report import without_series, write_quality_plots

    horizons, start = parse_horizon(horizon) or HORIZONS, parse_time(since)
    s = settings()
    engine = ready_store(s).engine
    version = report_version(open_registry(s.model.registry_dir), model)
    report = live_quality(engine, s, version, horizons=horizons, since=start)
    halted, why = report["trading"]["halted"], report["trading"]["reason"]
    written = write_quality_plots(report, plot) if plot is not None else []
    if as_json:
        console.print_json(json.dumps(json_ready(without_series(report)), default=str, allow_nan=False))
        return
    console.print(_table(report))
    if halted:
        console.print(f"[bold red]trading HALTED[/]: {why}", highlight=False)
    for e in report["breaker_events"][:5]:
        console.print(f"{e['at']} {e['kind']} ({e['source']}): {e['reason']}", highlight=False)
    for path in written:
        console.print(f"wrote {path}", highlight=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _bps(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e4:+.1f}"


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"live signal quality of {report['model_version']}")
    for name in (
        "horizon",
        "window",
        "signals",
        "minutes",
        "IC",
        "t",
        "hit rate",
        "LONG n / hit / net bps",
        "SHORT n / hit / net bps",
        "ECE",
        "Brier",
        "unresolved",
    ):
        table.add_column(name, justify="left" if name in {"horizon", "window"} else "right")
    for h in report["horizons"]:
        for window in ("since", "last_signals", "last_days"):
            if window not in h:
                continue
            f = h[window]
            d = f["directions"]
            ic = f["ic"]
            table.add_row(
                h["horizon"],
                window.replace("_", " "),
                str(f["signals"]),
                str(f["minutes"]),
                "-" if ic["mean"] is None else f"{ic['mean']:+.4f}",
                "-" if ic["t"] is None else f"{ic['t']:+.1f}",
                _pct(f["hit_rate"]),
                *(
                    f"{d[x]['signals']} / {_pct(d[x]['hit_rate'])} / {_bps(d[x]['mean_net_return'])}"
                    for x in ("LONG", "SHORT")
                ),
                _pct(f["ece"]),
                _pct(f["brier"]),
                str(f["unresolved"]),
            )
    return table


@clean_errors
def score(
    since: str | None = typer.Option(
        None, "--since", help="Rescan from this ISO minute (e.g. after replaying old minutes)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Score the signals whose horizons have passed and run the quality breaker once (what the beat
    task does every minute); idempotent."""
    from data.sources.factory import make_source
    from ml.registry import open_registry
    from quality.service import run_quality

    s = settings()
    summary = run_quality(
        ready_store(s).engine,
        s,
        exchange=make_source(s).name,
        registry=open_registry(s.model.registry_dir),
        since=parse_time(since),
    )
    if as_json:
        console.print_json(json.dumps(summary, default=str))
        return
    o, b = summary["outcomes"], summary["breaker"]
    console.print(
        f"scored {o['minutes']} minute-horizons: {o['resolved']} resolved, {o['unresolved']} unresolved "
        f"in {o['seconds']:.2f} s; breaker {b['state']}",
        highlight=False,
    )
    if b["reason"]:
        console.print(b["reason"], highlight=False)
