"""The rolling quality report of a model version (``mlsignals signals quality``, the exporter's
gauges): per horizon, the figures of ``quality.rolling`` over the newest ``quality.window_signals``
resolved signals and over the last ``quality.window_days`` days, or over the signals since a time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from core.settings import Settings
from ml.outputs import horizon_label
from quality.outcomes import HORIZONS
from quality.rolling import count_unresolved, load_outcomes, window_figures

LAST_SIGNALS, LAST_DAYS, SINCE = "last_signals", "last_days", "since"


def quality_report(
    engine: Engine,
    settings: Settings,
    model_version: str,
    *,
    horizons: Sequence[int] = HORIZONS,
    since: datetime | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``{"model_version", "windows", "horizons": [{"horizon_bars", "horizon", <window>: figures}]}``."""
    q = settings.quality
    now = now or datetime.now(UTC)
    windows: dict[str, dict[str, Any]]
    if since is not None:
        windows = {SINCE: {"since": since}}
    else:
        windows = {
            LAST_SIGNALS: {"limit": q.window_signals},
            LAST_DAYS: {"since": now - timedelta(days=q.window_days)},
        }
    out = []
    for h in horizons:
        item: dict[str, Any] = {"horizon_bars": h, "horizon": horizon_label(h, settings.data.bar_minutes)}
        for name, bounds in windows.items():
            rows = load_outcomes(engine, model_version, h, **bounds)
            figures = window_figures(rows, h, settings.data.bar_minutes)
            figures["unresolved"] = count_unresolved(engine, model_version, h, bounds.get("since"))
            item[name] = figures
        out.append(item)
    described = {
        name: {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in b.items()}
        for name, b in windows.items()
    }
    return {"model_version": model_version, "windows": described, "horizons": out}


def without_series(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without the per-minute IC series (for ``--json`` and the gauges)."""
    horizons = []
    for h in report["horizons"]:
        item = dict(h)
        for name in (LAST_SIGNALS, LAST_DAYS, SINCE):
            if name in item:
                figures = dict(item[name])
                figures["ic"] = {k: v for k, v in figures["ic"].items() if k != "series"}
                item[name] = figures
        horizons.append(item)
    return {**report, "horizons": horizons}


def write_quality_plots(report: Mapping[str, Any], directory: Path | str) -> list[Path]:
    """``quality_reliability.png`` and ``quality_ic.png`` of the report's widest window."""
    from ml.plots import ic_figure, reliability_figure, save_png

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    window = next(w for w in (SINCE, LAST_DAYS, LAST_SIGNALS) if w in report["horizons"][0])
    title = f"{report['model_version']} ({window.replace('_', ' ')})"
    cal = [
        {
            "horizon_bars": h["horizon_bars"],
            "calibration": {"ece": h[window]["ece"], "bins": h[window]["reliability"]},
        }
        for h in report["horizons"]
    ]
    series = [
        {
            "horizon_bars": h["horizon_bars"],
            "time_ms": h[window]["ic"]["series"]["time_ms"],
            "network": h[window]["ic"]["series"]["ic"],
        }
        for h in report["horizons"]
    ]
    return [
        save_png(reliability_figure(cal, f"live {title}"), out / "quality_reliability.png"),
        save_png(ic_figure(series, [None] * len(series), f"live {title}"), out / "quality_ic.png"),
    ]
