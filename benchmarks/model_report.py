"""The committed evaluation report of the default recipe: what docs/MODEL.md and docs/SIGNALS.md quote.

    python -m benchmarks.model_report                 # writes docs/reports/default-recipe/ (~15 min)

On a fixed window of the default simulator (seed 7, the switching effect, the first 50 symbols,
candles up to ``--end``), so the figures do not depend on the day it runs: backfill the recipe's
days plus the held-out period and its warm-up into a private work folder, train the recipe
exactly as ``mlsignals model train`` does (``ml.jobs.train_version``), then evaluate it as
``mlsignals model evaluate V --holdout-days 28`` does (``ml.jobs.evaluate_version``). It writes
``evaluation.json`` (the evaluation without the per-time series, plus the training's figures:
seconds, samples/s, the chosen teacher weight, the temperatures) and the evaluation's PNG charts.
A test (tests/unit/test_model_report.py) re-derives a small version of the report and checks that
its structure matches the committed one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.timegrid import iso_minute, parse_minute
from data.ingest import Ingestor
from data.sources.factory import make_source, resolve_symbols
from data.validation import ValidationPolicy
from ml.bootstrap import open_store
from ml.evaluation import json_ready, without_series
from ml.jobs import evaluate_version, train_version
from ml.progress import LogProgress, Progress
from ml.training import TrainingRecipe

DEFAULT_END = "2026-11-01T00:00:00Z"
DEFAULT_OUT = Path("docs/reports/default-recipe")
HOLDOUT_DAYS = 28.0
# The held-out period's first windows need the features' warm-up and the context before it.
WARMUP_DAYS = 4.0
COMMAND = "python -m benchmarks.model_report"


def build_report(
    workdir: Path,
    out: Path,
    *,
    recipe: TrainingRecipe,
    end: str = DEFAULT_END,
    holdout_days: float = HOLDOUT_DAYS,
    device: str = "cpu",
    progress: Progress | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Backfill, train, evaluate; write ``out/evaluation.json`` (and the charts); return the document."""
    progress = progress or LogProgress()
    settings = Settings(data_dir=workdir, model={"registry_dir": workdir / "models", "device": device})
    store = open_store(settings)
    source = make_source(settings)
    symbols = resolve_symbols(settings, source)[: recipe.symbols]
    end_ms = parse_minute(end)
    Ingestor(store, source, ValidationPolicy.from_settings(settings)).backfill(
        symbols, recipe.days + holdout_days + WARMUP_DAYS, end_ms=end_ms
    )
    began = time.perf_counter()
    outcome = train_version(settings, store, recipe, device=device, symbols=symbols, progress=progress)
    trained_s = time.perf_counter() - began
    version, metrics = evaluate_version(
        settings, store, outcome.version, device=device, progress=progress, holdout_days=holdout_days
    )
    if plots:
        from ml.plots import write_plots

        write_plots(metrics, out, version)
    metrics = without_series(metrics)
    fit = outcome.training["fit"]
    doc: dict[str, Any] = {
        "command": COMMAND,
        "simulator": settings.simulator.model_dump(mode="json"),
        "end": iso_minute(end_ms),
        "recipe": outcome.training["recipe"],
        "version": version,
        "training": {
            "command_seconds": round(trained_s, 1),
            "fit_seconds": fit["seconds"],
            "samples_seen": fit["samples_seen"],
            "samples_per_second": fit["samples_per_second"],
            "best_epoch": fit["best_epoch"],
            # Epoch 0 is the linear path alone (the closed-form fit), when the model has one.
            "val_ic_1h_by_epoch": json_ready(
                [
                    {"epoch": int(h["epoch"]), "val_ic_1h": h.get("val_ic_h4")}
                    for h in outcome.training["history"]
                ]
            ),
            "distill_weight": fit.get("distill_weight"),
            "distill_pilot_val_ic": fit.get("distill_pilot_val_ic"),
            "temperatures": fit.get("temperatures"),
            "split": outcome.training["split_iso"],
            "samples": outcome.training["samples"]["samples"],
            "device": outcome.training["device"],
        },
        **json_ready(metrics),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=Path("var/model-report"))
    parser.add_argument("--end", default=DEFAULT_END)
    parser.add_argument("--holdout-days", type=float, default=HOLDOUT_DAYS)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    doc = build_report(
        args.workdir,
        args.out,
        recipe=TrainingRecipe(),
        end=args.end,
        holdout_days=args.holdout_days,
        device=args.device,
    )
    summary = doc.get("summary", {})
    print(json.dumps({"version": doc["version"], "training": doc["training"], "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
