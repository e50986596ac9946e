"""``mlsignals model drift``: the feature drift of a model's live inputs, as the newest quality pass
measured it (``quality.drift``, docs/SIGNAL_QUALITY.md "Feature drift"). Registered on the ``model``
group (cli/model_cmds.py)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import clean_errors, console, ready_store, settings

if TYPE_CHECKING:
    from core.settings import Settings
    from quality.drift import DriftResult

STYLES = {"ok": "green", "moderate": "yellow", "major": "bold red", "n/a": "dim"}


@clean_errors
def drift(
    model: str = typer.Argument("champion", help="A version id, or the alias champion / challenger."),
    top: int | None = typer.Option(
        None, "--top", min=1, max=240, help="How many of the worst features (default: quality.drift_top)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the newest result as JSON (every feature)."),
) -> None:
    """The features of a model's live inputs that drifted most from its training data: the population
    stability index of the live windows' newest rows (the last 15 minutes) against the training
    distribution stored with the version. ok < 0.1 <= moderate < quality.drift_alert_psi <= major."""
    from ml.registry import RegistryError, open_registry
    from quality.drift import latest_drift

    s = settings()
    registry = open_registry(s.model.registry_dir)
    has_bins: bool | None
    try:
        version = registry.resolve(model)
        has_bins = registry.feature_bins(version) is not None
    except RegistryError:
        if model in {"champion", "challenger"}:
            raise
        version, has_bins = model, None  # a version no longer in the registry keeps its results
    result = latest_drift(ready_store(s).engine, version)
    limit = top or s.quality.drift_top
    if as_json:
        console.print_json(json.dumps(_document(s, version, has_bins, result, limit), default=str))
        return
    if has_bins is False:
        console.print(
            f"no training distribution stored with model {escape(version)}: it was registered before "
            "feature drift existed (no feature_bins.npz); train a new version to measure drift",
            highlight=False,
        )
        return
    if result is None:
        console.print(
            f"no drift result for {escape(version)} yet: the quality pass (tasks.quality.score, every "
            f"{s.quality.interval_seconds:g} s) measures it while the minute pipeline runs"
            + ("" if s.quality.drift_enabled else "; quality.drift_enabled is false"),
            highlight=False,
        )
        return
    _print(s, result, limit)


def ranked(result: DriftResult, limit: int) -> list[tuple[str, float]]:
    """The ``limit`` features of highest PSI, highest first (ties in the stored, spec order)."""
    items = [(name, float(v)) for name, v in result.psi.items() if v is not None]
    items.sort(key=lambda kv: -kv[1])
    return items[:limit]


def _document(
    s: Settings, version: str, has_bins: bool | None, result: DriftResult | None, limit: int
) -> dict[str, Any]:
    from ml.drift import MODERATE_PSI, status

    doc: dict[str, Any] = {
        "model_version": version,
        "training_distribution": has_bins,
        "moderate_psi": MODERATE_PSI,
        "alert_psi": s.quality.drift_alert_psi,
        "result": None if result is None else result.as_dict(),
    }
    if result is not None:
        doc["top"] = [
            {"feature": name, "psi": value, "status": status(value, s.quality.drift_alert_psi)}
            for name, value in ranked(result, limit)
        ]
    return doc


def _print(s: Settings, result: DriftResult, limit: int) -> None:
    from ml.drift import MODERATE_PSI, status

    alert = s.quality.drift_alert_psi
    when = result.computed_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    age = (datetime.now(UTC) - result.computed_at).total_seconds()
    if result.status != "ok":
        console.print(
            f"feature drift of {escape(str(result.model_version))} at {when}: {result.status}: "
            f"{escape(result.reason or '')}",
            highlight=False,
        )
    else:
        newest = result.newest_minute.strftime("%H:%M") if result.newest_minute else "?"
        plural = "" if result.minutes == 1 else "s"
        console.print(
            f"feature drift of {escape(str(result.model_version))}: {result.samples} live rows over "
            f"{result.minutes} minute{plural} up to {newest} against {result.bins} training bins "
            f"(computed {when})",
            highlight=False,
        )
        table = Table()
        table.add_column("#", justify="right")
        table.add_column("feature")
        table.add_column("PSI", justify="right")
        table.add_column("status")
        for k, (name, value) in enumerate(ranked(result, limit), start=1):
            state = status(value, alert)
            table.add_row(str(k), name, f"{value:.3f}", f"[{STYLES[state]}]{state}[/]")
        console.print(table)
        values = [v for v in result.psi.values() if v is not None]
        major = sum(v >= alert for v in values)
        moderate = sum(MODERATE_PSI <= v < alert for v in values)
        # PSI's sampling noise: about (bins - 1) / rows per feature, more on its worst of 240.
        noise = (result.bins - 1) / result.samples if result.samples else math.nan
        console.print(
            f"{major} of {len(values)} features major (PSI >= {alert:g}), {moderate} moderate "
            f"(>= {MODERATE_PSI:g}); sampling noise alone is about {noise:.3f} per feature",
            highlight=False,
        )
    context = _context_line(result.detail)
    if context:
        console.print(context, highlight=False)
    if age > 3 * s.quality.interval_seconds:
        console.print(
            f"[yellow]the newest result is {age / 60:.0f} minutes old[/]: is the quality pass "
            "(tasks.quality.score) running?",
            highlight=False,
        )


def _context_line(detail: dict[str, Any]) -> str:
    """The data-quality context of the newest minute the pass saw, in one line."""
    run = detail.get("newest_run")
    if not run:
        return ""
    minute = str(run.get("minute", "?"))[11:16]
    line = (
        f"newest minute {minute}: {run.get('signals_made', '?')} of {run.get('symbols_asked', '?')} "
        f"symbols got a signal"
    )
    if run.get("failed"):
        reasons = ", ".join(f"{escape(str(k))} {v}" for k, v in (run.get("reasons") or {}).items())
        line += f"; {run['failed']} failed" + (f" ({reasons})" if reasons else "")
    if detail.get("windows_missing"):
        line += f"; {detail['windows_missing']} windows had expired before the pass read them"
    return line
