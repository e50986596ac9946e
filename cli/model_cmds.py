"""``mlsignals model …``: train, list, show, promote, rollback, evaluate and bootstrap model versions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from cli import compare_cmds, drift_cmds
from cli.common import clean_errors, console, ready_store, settings
from core.timegrid import iso_minute

# ml.* (and torch with it) is imported inside the commands that use it: it takes seconds.

app = typer.Typer(
    help="Model versions: train, inspect, promote, roll back, evaluate, live drift, champion vs challenger.",
    no_args_is_help=True,
)

DeviceOption = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda.")
VersionArgument = typer.Argument(..., help="A version id, or the alias champion / challenger.")


def _f(value: Any, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt)


def _pct(value: Any) -> str:
    return _f(None if value is None else 100 * value, ".1f") + ("" if _f(value) == "-" else " %")


def _ci(block: dict[str, Any] | None) -> str:
    """``mean [low, high]`` of an IC block."""
    if not block:
        return "-"
    low, high = _f(block.get("ci_low"), "+.3f"), _f(block.get("ci_high"), "+.3f")
    return f"{_f(block.get('mean'), '+.4f')} [{low}, {high}]"


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    """The stored (or just computed) evaluation: the test split, the held-out period before training
    when evaluated, and the primary horizon's headline. Metrics of older versions print what they have."""
    test = metrics.get("test")
    if not test:
        console.print("no held-out evaluation stored")
        return
    _print_period(test, f"{title}: test split (held-out)", confusion=True)
    holdout = metrics.get("holdout")
    if isinstance(holdout, dict) and holdout.get("available"):
        _print_period(holdout, f"{title}: held-out {holdout.get('days', 0):g} days before the training data")
        missing = holdout.get("missing_symbols") or []
        if missing:
            console.print(f"held-out period: no samples for {len(missing)} symbols: {', '.join(missing[:5])}")
        failed = (holdout.get("backfill") or {}).get("failed") or {}
        if failed:
            console.print(
                f"[bold yellow]held-out backfill failed for {len(failed)} symbols:[/] "
                f"{next(iter(failed.values()))}",
                highlight=False,
            )
    elif isinstance(holdout, dict):
        console.print(
            f"[bold yellow]held-out period {holdout.get('start', '?')} .. {holdout.get('end', '?')} not "
            f"evaluated:[/] {holdout.get('reason', 'unknown reason')}; the test split stands alone",
            highlight=False,
        )
    summary = metrics.get("summary")
    if summary:
        _print_summary(summary)


def _print_period(report: dict[str, Any], label: str, *, confusion: bool = False) -> None:
    table = Table(
        "horizon",
        "accuracy",
        "majority (class)",
        "beats",
        "macro-F1 (majority)",
        "IC per time",
        "IC pooled",
        "samples",
        title=f"{label}: {iso_minute(report['first_anchor_ms'])} .. "
        f"{iso_minute(report['last_anchor_ms'])}, {report['symbols']} symbols",
    )
    for h in report["horizons"]:
        table.add_row(
            f"{h['horizon_bars']} bars",
            _f(h["accuracy"]),
            f"{_f(h['majority_accuracy'])} ({h['majority_class']})",
            "yes" if h["beats_majority"] else "no",
            f"{_f(h.get('macro_f1'))} ({_f(h.get('majority_macro_f1'))})",
            _f(h["ic_per_time"], "+.4f"),
            _f(h["ic_pooled"], "+.4f"),
            str(h["samples"]),
        )
    console.print(table)
    if confusion:
        for h in report["horizons"]:
            conf = Table(
                "true \\ predicted", "LONG", "SHORT", "FLAT", title=f"confusion, {h['horizon_bars']} bars"
            )
            for name, row in zip(("LONG", "SHORT", "FLAT"), h["confusion"], strict=True):
                conf.add_row(name, *(str(v) for v in row))
            console.print(conf)
    if all("ic" in h for h in report["horizons"]):
        _print_ic(report)
    if all("calibration" in h for h in report["horizons"]):
        cal = Table("horizon", "ECE", "log-loss", "class-frequency log-loss", title="calibration (top label)")
        for h in report["horizons"]:
            c = h["calibration"]
            cal.add_row(
                f"{h['horizon_bars']} bars",
                _f(c.get("ece"), ".4f"),
                _f(c.get("log_loss"), ".4f"),
                _f(c.get("class_frequency_log_loss"), ".4f"),
            )
        console.print(cal)
    _print_signals(report)


def _print_ic(report: dict[str, Any]) -> None:
    names = list(report.get("baselines") or [])
    table = Table(
        "horizon",
        "network IC [95 % CI]",
        *names,
        "best",
        "network - best (SE)",
        "beats",
        title="IC per time against the baselines (Newey-West SE)",
    )
    for h in report["horizons"]:
        ic = h["ic"]
        vs = ic.get("vs_best_baseline") or {}
        table.add_row(
            f"{h['horizon_bars']} bars",
            _ci(ic.get("network")),
            *(_f((ic.get(n) or {}).get("mean"), "+.4f") for n in names),
            str(ic.get("best_baseline") or "-"),
            f"{_f(vs.get('difference'), '+.4f')} ({_f(vs.get('se'), '.4f')})",
            "yes" if vs.get("beats_best_baseline") else "no",
        )
    console.print(table)


def _print_signals(report: dict[str, Any]) -> None:
    sig = report["signals"]
    console.print(
        f"signals at {sig['primary_horizon_bars']} bars, confidence >= {sig['confidence_threshold']}: "
        f"{sig['actionable']} actionable ({sig['long']} long, {sig['short']} short), "
        f"hit rate {_f(sig['hit_rate'])}, mean signed return {_f(sig['mean_signed_return'], '+.5f')}; "
        f"temperature {report['temperature']:.3f}",
        highlight=False,
    )
    if "by_direction" in sig:
        console.print(
            f"actionable {_pct(sig.get('actionable_share'))} of {sig.get('rows')} rows, mix long "
            f"{_pct(sig.get('long_share'))} / short {_pct(sig.get('short_share'))}; realised up "
            f"{_pct(sig.get('realised_up_share'))} / down {_pct(sig.get('realised_down_share'))}; "
            f"round-trip cost {_f(sig.get('round_trip_cost'), '.4f')}",
            highlight=False,
        )
        table = Table(
            "direction",
            "count",
            "hit (neutral)",
            "gross (neutral)",
            "net (neutral)",
            "hit (raw)",
            "gross (raw)",
            "net (raw)",
            title="signals per direction (returns over the primary horizon)",
        )
        for name, d in sig["by_direction"].items():
            table.add_row(
                name,
                str(d["count"]),
                _f(d["neutral"]["hit_rate"]),
                _f(d["neutral"]["mean_gross"], "+.5f"),
                _f(d["neutral"]["mean_net"], "+.5f"),
                _f(d["raw"]["hit_rate"]),
                _f(d["raw"]["mean_gross"], "+.5f"),
                _f(d["raw"]["mean_net"], "+.5f"),
            )
        console.print(table)
    sweep = report.get("signals_by_threshold") or []
    if sweep:
        console.print(
            "at other thresholds: "
            + "; ".join(
                f"{s['confidence_threshold']}: {s['actionable']} (hit {_f(s['hit_rate'])})" for s in sweep
            ),
            highlight=False,
        )
    bt = report.get("backtest")
    if bt:
        raw, neu = bt["raw"], bt["neutral"]
        console.print(
            f"backtest every {bt['horizon_bars']} bars: {bt['periods']} periods ({bt['active_periods']} with "
            f"positions), mean net {_f(raw['mean'], '+.5f')} raw / {_f(neu['mean'], '+.5f')} neutral, "
            f"Sharpe {_f(raw['sharpe'], '+.2f')} / {_f(neu['sharpe'], '+.2f')}, max drawdown "
            f"{_f(raw['max_drawdown'], '.4f')} / {_f(neu['max_drawdown'], '.4f')}, turnover "
            f"{_f(bt['turnover'], '.2f')}, period hit rate {_f(raw['hit_rate'])}",
            highlight=False,
        )


def _print_summary(summary: dict[str, Any]) -> None:
    periods = [p for p in ("test", "holdout") if p in summary]
    table = Table(
        "", *periods, title=f"headline at the primary horizon ({summary['primary_horizon_bars']} bars)"
    )

    def row(name: str, fn: Any) -> None:
        cells = []
        for p in periods:
            s = summary[p]
            cells.append(fn(s) if s.get("available", True) else "-")
        table.add_row(name, *cells)

    row("network IC (SE)", lambda s: f"{_f(s['network_ic'], '+.4f')} ({_f(s['network_ic_se'], '.4f')})")
    row("best baseline (IC)", lambda s: f"{s['best_baseline'] or '-'} ({_f(s['best_baseline_ic'], '+.4f')})")
    row("difference (SE)", lambda s: f"{_f(s['difference'], '+.4f')} ({_f(s['difference_se'], '.4f')})")
    row("beats best baseline", lambda s: "yes" if s["beats_best_baseline"] else "no")
    row("ECE by horizon", lambda s: " / ".join(_f(v, ".3f") for v in s["ece"].values()))
    row("long / short mix", lambda s: f"{_pct(s['long_share'])} / {_pct(s['short_share'])}")
    row(
        "net return long / short (neutral)",
        lambda s: " / ".join(_f(s["net_return"].get(d), "+.5f") for d in ("LONG", "SHORT")),
    )
    row(
        "backtest Sharpe raw / neutral",
        lambda s: f"{_f(s['backtest_sharpe'], '+.2f')} / {_f(s['backtest_sharpe_neutral'], '+.2f')}",
    )
    console.print(table)
    for p in periods:
        if not summary[p].get("available", True):
            console.print(f"{p}: not evaluated ({summary[p].get('reason')})", highlight=False)


@app.command()
@clean_errors
def train(
    days: float = typer.Option(
        None, "--days", min=1, help="Days of stored history to use (default: recipe's)."
    ),
    epochs: int = typer.Option(
        None, "--epochs", min=1, help="Maximum epochs (early stopping may end sooner)."
    ),
    symbols: int = typer.Option(None, "--symbols", min=1, help="How many symbols (default: recipe's)."),
    device: str = DeviceOption,
) -> None:
    """Train a new version on stored candles and register it (champion if the registry is empty)."""
    from ml.jobs import train_version
    from ml.progress import RichProgress
    from ml.training import TrainingRecipe

    s = settings()
    store = ready_store(s)
    changes = {k: v for k, v in {"days": days, "epochs": epochs, "symbols": symbols}.items() if v is not None}
    recipe = TrainingRecipe().model_copy(update=changes)
    recipe = TrainingRecipe.model_validate(recipe.model_dump())
    with RichProgress(console) as progress:
        outcome = train_version(s, store, recipe, device=device, progress=progress)
    console.print(
        f"registered {outcome.version} as {outcome.alias} in {outcome.seconds:.0f} s", highlight=False
    )
    print_metrics(outcome.metrics, outcome.version)


@app.command("list")
@clean_errors
def list_versions() -> None:
    """Every stored version with its aliases and held-out headline figures."""
    from ml.catalog import version_summaries
    from ml.jobs import registry_for

    registry = registry_for(settings())
    summaries = version_summaries(registry)
    if not summaries:
        console.print(
            f"no model versions in {registry.root}: run `mlsignals model bootstrap` or `model train`"
        )
        return
    table = Table(
        "version",
        "aliases",
        "symbols",
        "history",
        "acc 15m / majority",
        "IC 1h per time",
        title=f"models in {registry.root}",
    )
    for summary in summaries:
        hs = summary.test
        acc = f"{_f(hs[0].accuracy)} / {_f(hs[0].majority_accuracy)}" if hs else "-"
        ic = _f(hs[1].ic_per_time, "+.4f") if len(hs) > 1 else "-"
        table.add_row(
            summary.version,
            ", ".join(summary.aliases),
            str(summary.symbols),
            f"{summary.history_start or '?'} .. {summary.history_end or '?'}",
            acc,
            ic,
        )
    console.print(table)


@app.command()
@clean_errors
def show(version: str = VersionArgument) -> None:
    """Training range, recipe, fit and held-out metrics of one version (verifies its files)."""
    from ml.jobs import registry_for

    registry = registry_for(settings())
    registry.verify(version)
    info = registry.info(version)
    t = info.training
    fit = t.get("fit", {})
    candles = t.get("candles", {})
    names = list(t.get("symbols", []))
    table = Table("", "", title=f"model {info.version}")
    table.add_row("aliases", ", ".join(info.aliases) or "-")
    table.add_row("created", info.created)
    table.add_row(
        "history", f"{candles.get('start', '?')} .. {candles.get('end', '?')} on {t.get('exchange', '?')}"
    )
    table.add_row("symbols", f"{len(names)}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}")
    split = t.get("split_iso", {})
    if split:
        table.add_row(
            "split",
            f"train {split['start']} .. {split['train_end']}, validation {split['val_start']} .. "
            f"{split['val_end']}, test {split['test_start']} .. {split['end']} "
            f"(purge gaps {t.get('purge_gap_hours', '?')} h)",
        )
    table.add_row(
        "samples", ", ".join(f"{k} {v}" for k, v in t.get("samples", {}).get("samples", {}).items()) or "-"
    )
    table.add_row(
        "fit",
        f"{fit.get('seconds', '?')} s, {fit.get('samples_seen', '?')} samples, best epoch "
        f"{fit.get('best_epoch', '?')}, device {t.get('device', '?')}",
    )
    table.add_row("temperature", _f(fit.get("temperature")))
    table.add_row("feature spec", str(t.get("feature_spec_hash", ""))[:16] + "…")
    console.print(table)
    print_metrics(info.metrics, info.version)


@app.command()
@clean_errors
def promote(version: str = VersionArgument) -> None:
    """Make VERSION the champion (the previous champion can be restored with rollback)."""
    from ml.jobs import registry_for
    from quality.champion import promote as promote_champion

    s = settings()
    change = promote_champion(ready_store(s).engine, s, registry_for(s), version)
    console.print(f"champion is now {change.champion}", highlight=False)
    _print_breaker_lift(change.champion, change.breaker_lifted)


@app.command()
@clean_errors
def rollback() -> None:
    """Return the champion alias to the previous champion."""
    from ml.jobs import registry_for
    from quality.champion import rollback as rollback_champion

    s = settings()
    change = rollback_champion(ready_store(s).engine, s, registry_for(s))
    console.print(f"champion rolled back to {change.champion}", highlight=False)
    _print_breaker_lift(change.champion, change.breaker_lifted)


def _print_breaker_lift(champion: str, lifted: bool) -> None:
    """A new champion ends a quality-breaker halt of the one before (docs/SIGNAL_QUALITY.md)."""
    if lifted:
        console.print(f"quality breaker lifted: {champion} is champion, trading resumed", highlight=False)


@app.command()
@clean_errors
def evaluate(
    version: str = VersionArgument,
    device: str = DeviceOption,
    holdout_days: float = typer.Option(
        28.0,  # ml.jobs.HOLDOUT_DAYS (not imported here: ml.* loads torch)
        "--holdout-days",
        min=0,
        help="Days before the version's training data to evaluate too (backfilled if missing; 0: none).",
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write PNG charts into this folder."),
    json_path: Path | None = typer.Option(None, "--json", help="Write every figure as JSON to this file."),
) -> None:
    """Evaluate VERSION on its test split and on the days before its training data: skill against
    the majority class and linear baselines, calibration, signals net of costs, a backtest."""
    from ml.evaluation import json_ready
    from ml.jobs import evaluate_version
    from ml.progress import RichProgress

    s = settings()
    store = ready_store(s)
    with RichProgress(console) as progress:
        resolved, metrics = evaluate_version(
            s, store, version, device=device, progress=progress, holdout_days=holdout_days
        )
    print_metrics(metrics, resolved)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"version": resolved, **json_ready(metrics)}
        json_path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        console.print(f"wrote {json_path}", highlight=False)
    if plot is not None:
        from ml.plots import write_plots

        written = write_plots(metrics, plot, resolved)
        console.print(f"wrote {len(written)} charts to {plot}", highlight=False)


@app.command()
@clean_errors
def bootstrap(device: str = DeviceOption) -> None:
    """First run: if there is no champion, backfill simulated history and train one (a few minutes)."""
    from ml.bootstrap import ensure_champion
    from ml.progress import RichProgress

    s = settings()
    store = ready_store(s)
    with RichProgress(console) as progress:
        result = ensure_champion(s, progress=progress, store=store, device=device)
    if not result.trained:
        console.print(f"champion already present: {result.version}", highlight=False)
        return
    console.print(f"champion {result.version} trained in {result.seconds:.0f} s", highlight=False)
    if result.outcome is not None:
        print_metrics(result.outcome.metrics, result.version)


# Defined beside the quality package's other commands; listed last in `mlsignals model --help`.
app.command("drift")(drift_cmds.drift)
app.command("compare")(compare_cmds.compare)
