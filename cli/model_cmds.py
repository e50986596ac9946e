"""``mlsignals model …``: train, list, show, promote, rollback, evaluate and bootstrap model versions."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from cli.common import clean_errors, console, ready_store, settings
from core.timegrid import iso_minute

# ml.* (and torch with it) is imported inside the commands that use it: it takes seconds.

app = typer.Typer(help="Model versions: train, inspect, promote, roll back, evaluate.", no_args_is_help=True)

DeviceOption = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda.")
VersionArgument = typer.Argument(..., help="A version id, or the alias champion / challenger.")


def _f(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    test = metrics.get("test")
    if not test:
        console.print("no held-out evaluation stored")
        return
    table = Table(
        "horizon",
        "accuracy",
        "majority (class)",
        "beats",
        "IC per time",
        "IC pooled",
        "samples",
        title=f"{title}: held-out {iso_minute(test['first_anchor_ms'])} .. "
        f"{iso_minute(test['last_anchor_ms'])}, {test['symbols']} symbols",
    )
    for h in test["horizons"]:
        table.add_row(
            f"{h['horizon_bars']} bars",
            _f(h["accuracy"]),
            f"{_f(h['majority_accuracy'])} ({h['majority_class']})",
            "yes" if h["beats_majority"] else "no",
            _f(h["ic_per_time"], "+.4f"),
            _f(h["ic_pooled"], "+.4f"),
            str(h["samples"]),
        )
    console.print(table)
    for h in test["horizons"]:
        conf = Table(
            "true \\ predicted", "LONG", "SHORT", "FLAT", title=f"confusion, {h['horizon_bars']} bars"
        )
        for name, row in zip(("LONG", "SHORT", "FLAT"), h["confusion"], strict=True):
            conf.add_row(name, *(str(v) for v in row))
        console.print(conf)
    sig = test["signals"]
    console.print(
        f"signals at {sig['primary_horizon_bars']} bars, confidence >= {sig['confidence_threshold']}: "
        f"{sig['actionable']} actionable ({sig['long']} long, {sig['short']} short), "
        f"hit rate {_f(sig['hit_rate'])}, mean signed return {_f(sig['mean_signed_return'], '+.5f')}; "
        f"temperature {test['temperature']:.3f}",
        highlight=False,
    )
    sweep = test.get("signals_by_threshold") or []
    if sweep:
        console.print(
            "at other thresholds: "
            + "; ".join(
                f"{s['confidence_threshold']}: {s['actionable']} (hit {_f(s['hit_rate'])})" for s in sweep
            ),
            highlight=False,
        )


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
    from ml.jobs import registry_for

    registry = registry_for(settings())
    versions = registry.versions()
    if not versions:
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
    for version in versions:
        info = registry.info(version)
        test = info.metrics.get("test") or {}
        hs = test.get("horizons") or []
        acc = f"{_f(hs[0]['accuracy'])} / {_f(hs[0]['majority_accuracy'])}" if hs else "-"
        ic = _f(hs[1]["ic_per_time"], "+.4f") if len(hs) > 1 else "-"
        candles = info.training.get("candles", {})
        table.add_row(
            version,
            ", ".join(info.aliases),
            str(len(info.training.get("symbols", []))),
            f"{candles.get('start', '?')} .. {candles.get('end', '?')}",
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

    promoted = registry_for(settings()).promote(version)
    console.print(f"champion is now {promoted}", highlight=False)


@app.command()
@clean_errors
def rollback() -> None:
    """Return the champion alias to the previous champion."""
    from ml.jobs import registry_for

    restored = registry_for(settings()).rollback()
    console.print(f"champion rolled back to {restored}", highlight=False)


@app.command()
@clean_errors
def evaluate(version: str = VersionArgument, device: str = DeviceOption) -> None:
    """Evaluate VERSION on its held-out period from the candle store; stores and prints the metrics."""
    from ml.jobs import evaluate_version
    from ml.progress import RichProgress

    s = settings()
    store = ready_store(s)
    with RichProgress(console) as progress:
        resolved, metrics = evaluate_version(s, store, version, device=device, progress=progress)
    print_metrics(metrics, resolved)


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
