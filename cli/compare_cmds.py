"""``mlsignals model compare``: the champion and the shadow challenger side by side on the same live
minutes (quality/compare.py, docs/SIGNAL_QUALITY.md "Shadow challenger"). Registered on the ``model``
group (cli/model_cmds.py): ``app.command("compare")(compare_cmds.compare)``."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from cli.common import clean_errors, console, ready_store, settings
from cli.quality_cmds import parse_horizon, parse_time


@clean_errors
def compare(
    horizon: str | None = typer.Option(None, "--horizon", help="15m, 1h, 4h or 12h (default: all four)."),
    since: str | None = typer.Option(
        None, "--since", help="ISO time: the minutes from then on (default: the last quality.window_days)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Champion against challenger on the minutes both scored (the challenger runs in shadow): IC
    of each with a paired test of the difference, hit rate and net return per direction, ECE and
    Brier. Promoting stays your decision: `mlsignals model promote challenger`."""
    from ml.registry import open_registry
    from quality.champion import compare_champion
    from quality.compare import without_series
    from quality.outcomes import HORIZONS

    s = settings()
    report = compare_champion(
        ready_store(s).engine,
        s,
        open_registry(s.model.registry_dir),
        horizons=parse_horizon(horizon) or HORIZONS,
        since=parse_time(since),
    )
    champion, challenger = report["champion"], report["challenger"]
    if as_json:
        console.print_json(json.dumps(without_series(report), default=str))
        return
    console.print(
        f"champion {champion} against challenger {challenger}, minutes since {report['since']}: "
        "only the (minute, symbol) pairs both scored",
        highlight=False,
    )
    for item in report["horizons"]:
        console.print(_table(item))
        console.print(_paired_line(item["paired_ic"]), highlight=False)
    console.print("promotion stays a human decision: mlsignals model promote challenger", highlight=False)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _bps(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e4:+.1f}"


def _difference(a: float | None, b: float | None, fmt: str) -> str:
    return "-" if a is None or b is None else format(b - a, fmt)


def _table(item: dict[str, Any]) -> Table:
    a, b = item["champion"], item["challenger"]
    table = Table(
        title=f"{item['horizon']}: {item['pairs']} common signals over {item['minutes']} minutes",
        title_justify="left",
    )
    for name in ("figure", "champion", "challenger", "challenger - champion"):
        table.add_column(name, justify="left" if name == "figure" else "right")
    table.add_row(
        "IC (mean per minute)",
        _num(a["ic"]["mean"], "+.4f"),
        _num(b["ic"]["mean"], "+.4f"),
        _difference(a["ic"]["mean"], b["ic"]["mean"], "+.4f"),
    )
    table.add_row("IC t", _num(a["ic"]["t"], "+.1f"), _num(b["ic"]["t"], "+.1f"), "")
    table.add_row(
        "hit rate (actionable)",
        _num(a["hit_rate"], ".3f"),
        _num(b["hit_rate"], ".3f"),
        _difference(a["hit_rate"], b["hit_rate"], "+.3f"),
    )
    for direction in ("LONG", "SHORT"):
        da, db = a["directions"][direction], b["directions"][direction]
        table.add_row(f"{direction} signals", str(da["signals"]), str(db["signals"]), "")
        table.add_row(
            f"{direction} hit rate",
            _num(da["hit_rate"], ".3f"),
            _num(db["hit_rate"], ".3f"),
            _difference(da["hit_rate"], db["hit_rate"], "+.3f"),
        )
        table.add_row(
            f"{direction} mean net, bps",
            _bps(da["mean_net_return"]),
            _bps(db["mean_net_return"]),
            _difference(
                None if da["mean_net_return"] is None else da["mean_net_return"] * 1e4,
                None if db["mean_net_return"] is None else db["mean_net_return"] * 1e4,
                "+.1f",
            ),
        )
    for name, key in (("ECE", "ece"), ("Brier", "brier")):
        table.add_row(name, _num(a[key], ".4f"), _num(b[key], ".4f"), _difference(a[key], b[key], "+.4f"))
    return table


def _paired_line(paired: dict[str, Any]) -> str:
    if paired["mean"] is None:
        return "paired IC difference: no minute with an IC for both"
    head = (
        f"paired IC difference (challenger - champion): {paired['mean']:+.4f} "
        f"over {paired['minutes']} minutes"
    )
    if paired["se"] is None:
        return (
            f"{head}; no SE or t: the minutes span {paired['periods']} non-overlapping horizons, "
            f"fewer than the {paired['min_periods']} an honest error bar needs"
        )
    return f"{head}, Newey-West SE {paired['se']:.4f} (lag {paired['lag']}), t {paired['t']:+.2f}"
