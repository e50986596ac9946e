"""End-to-end jobs on the candle store and the registry: train a new version, evaluate a stored one.

Both read candles through ``CandleStore.read_candles`` and build samples with ``ml.dataset`` (the
anchored bars and the feature engine of the live path). The CLI, the first-run bootstrap and
(later) the training task are thin wrappers around these two functions.

Training also fits the linear baselines of ml/baselines.py on the training rows and stores them with
the version (``baselines.npz``), and the training distribution of every feature as quantile bins
(``feature_bins.npz``, ml/drift.py: the newest row of each training sample, scaled, at most
``FEATURE_BINS_MAX_ROWS``), against which the live windows' feature drift is measured. Evaluation
(ml/evaluation.py) reports two periods:

* ``test``: the version's own test split (after the purge gap that follows validation);
* ``holdout``: the ``holdout_days`` that end where the version's training candles start, a period
  the model never saw. Its samples' inputs *and* labels lie before that start (anchors whose
  look-ahead would reach into the training candles have no labels and are left out, so the last
  ~12 hours of the window hold no samples); the features' warm-up and the context are read from
  candles before the window. Missing candles are backfilled from the configured source first
  (``Ingestor.backfill`` ending at the window's end: idempotent, complete days are skipped; like
  ``mlsignals data backfill`` it quarantines a symbol the source fails for). When the source cannot
  provide them the held-out period is reported as unavailable, with the reason, and the test split
  stands alone.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.errors import MLSignalsError
from core.settings import Settings
from core.timegrid import MINUTE_MS, iso_minute
from data.ingest import Ingestor
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.baselines import BASELINE_NAMES, Baselines, fit_baselines
from ml.dataset import Dataset, DatasetError, SplitBounds, build_dataset, load_candles
from ml.decoding import DecodeRules
from ml.drift import FeatureBins
from ml.evaluation import evaluate_outputs, json_ready, predict_outputs, summarize, without_series
from ml.features import FEATURE_SPEC
from ml.model.network import UnifiedPatchTST
from ml.model.schema import OutputSchema
from ml.predictor import apply_thread_settings, select_device
from ml.progress import NullProgress, Progress
from ml.registry import LoadedModel, Registry
from ml.training import TrainingRecipe, fit

HOLDOUT_DAYS = 28.0
# Training rows behind the feature bins: a decile's proportion has a standard error of about 0.001 at
# 100k rows, far below what a PSI of 0.1 needs, and the float32 rows gathered stay under 100 MB.
FEATURE_BINS_MAX_ROWS = 100_000
DAY_MS = 1440 * MINUTE_MS


@dataclass(frozen=True)
class TrainOutcome:
    version: str
    alias: str
    metrics: dict[str, Any]
    training: dict[str, Any]
    seconds: float


def registry_for(settings: Settings) -> Registry:
    return Registry(settings.model.registry_dir)


def training_symbols(settings: Settings, store: CandleStore, exchange: str, count: int) -> list[str]:
    """The first ``count`` configured symbols (``data.symbols``, else the source's universe) that have
    stored candles."""
    stored = set(store.symbols(exchange))
    names = [s for s in resolve_symbols(settings, make_source(settings)) if s in stored]
    if not names:
        raise DatasetError(
            f"no stored candles on {exchange!r} for the configured symbols: run "
            "`mlsignals data backfill --days N` first (or `mlsignals model bootstrap`)"
        )
    return names[:count]


def history_range(store: CandleStore, exchange: str, symbols: list[str], days: float) -> tuple[int, int]:
    """``[start, end)`` of the newest ``days`` of history that every symbol has reached."""
    newest = store.newest(exchange, symbols)
    if not newest:
        raise DatasetError(f"no stored candles on {exchange!r} for {len(symbols)} symbols")
    end = min(c.open_time for c in newest.values()) + MINUTE_MS
    return end - int(days * 1440) * MINUTE_MS, end


def train_version(
    settings: Settings,
    store: CandleStore,
    recipe: TrainingRecipe,
    *,
    device: str = "auto",
    symbols: list[str] | None = None,
    progress: Progress | None = None,
    registry: Registry | None = None,
) -> TrainOutcome:
    """Build the dataset from the store, train, evaluate on the held-out period and register."""
    progress = progress or NullProgress()
    began = time.perf_counter()
    registry = registry or registry_for(settings)
    apply_thread_settings(settings.model.torch_threads)
    torch_device = select_device(device)
    exchange = make_source(settings).name
    names = symbols or training_symbols(settings, store, exchange, recipe.symbols)
    start_ms, end_ms = history_range(store, exchange, names, recipe.days)

    progress.start("reading candles", len(names))
    candles = load_candles(store, exchange, names, start_ms, end_ms, lambda _s, k, _n: progress.update(k))
    spec = recipe.dataset_spec()
    progress.start("features and labels", len(candles) * len(spec.phases))
    ds = build_dataset(candles, recipe.model, spec, progress=lambda _s, k, _n: progress.update(k))
    progress.note(
        f"{len(ds.symbols)} symbols, {iso_minute(start_ms)} .. {iso_minute(end_ms)}: "
        f"{ds.info['samples']['train']} training, {ds.info['samples']['val']} validation, "
        f"{ds.info['samples']['test']} test samples"
    )
    result = fit(ds, recipe, torch_device, progress)
    progress.start("baselines", 1)
    baselines = fit_baselines(ds, ds.indices("train"), recipe, teacher=result.teacher)
    progress.update(1)
    progress.start("feature distribution", 1)
    bins = training_feature_bins(ds, settings.quality.drift_bins)
    progress.update(1)

    test_idx = ds.indices("test")
    schema = OutputSchema.from_config(recipe.model)
    rules = DecodeRules.from_settings(settings)
    metrics: dict[str, Any] = {}
    if test_idx.size:
        progress.start("held-out evaluation", 1)
        test = evaluate_period(result.model, schema, ds, test_idx, rules, baselines, torch_device)
        metrics = assemble_metrics(result.model, rules, schema, test, None, baselines, "fitted")
        progress.update(1)
    training = {
        "exchange": exchange,
        "symbols": ds.symbols,
        "candles": {
            "start_ms": start_ms,
            "end_ms": end_ms,
            "start": iso_minute(start_ms),
            "end": iso_minute(end_ms),
        },
        "split": ds.split.to_dict(),
        "split_iso": {
            k.removesuffix("_ms"): iso_minute(v) for k, v in ds.split.to_dict().items() if k != "gap_ms"
        },
        "purge_gap_hours": ds.split.gap_ms / 3_600_000,
        "samples": ds.info,
        # As trained: with the teacher weight the pilot runs chose (ml/training.py).
        "recipe": (result.recipe or recipe).model_dump(mode="json"),
        "seed": recipe.seed,
        "device": str(torch_device),
        "fit": {
            "seconds": round(result.seconds, 2),
            "samples_seen": result.samples_seen,
            "samples_per_second": round(result.samples_seen / result.seconds, 1) if result.seconds else None,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "temperature": result.model.temperature,
            **result.extra,
        },
        "history": result.history,
        "target_stats": result.stats.to_dict(),
        "feature_spec_hash": FEATURE_SPEC.hash,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
    }
    metrics = json_ready(without_series(metrics))
    version, alias = registry.register(
        result.model.cpu(),
        ds.scaler,
        training,
        metrics,
        baselines=baselines.to_arrays(),
        feature_bins=None if bins is None else bins.to_arrays(),
    )
    return TrainOutcome(version, alias, metrics, training, time.perf_counter() - began)


def training_feature_bins(
    ds: Dataset, bins: int, max_rows: int = FEATURE_BINS_MAX_ROWS
) -> FeatureBins | None:
    """Quantile bins of the newest (scaled) row of each training sample, the row the live drift pass
    compares; at most ``max_rows`` rows, evenly spaced over the samples. None without training rows."""
    rows = ds.row[ds.indices("train")]
    if rows.size < 2:
        return None
    if rows.size > max_rows:
        # Evenly spaced rather than random: deterministic and covers every series and the whole period.
        rows = rows[np.linspace(0, rows.size - 1, max_rows).astype(np.int64)]
    return FeatureBins.fit(ds.x[rows], FEATURE_SPEC.names, bins)


def _version_dataset(
    candles: dict[str, Any],
    loaded: LoadedModel,
    recipe: TrainingRecipe,
    split: SplitBounds,
    progress: Progress,
    label: str,
) -> Dataset:
    """Samples of ``candles`` built for a stored version: its scaler, fixed split bounds."""
    spec = recipe.dataset_spec()
    progress.start(label, len(candles) * len(spec.phases))
    return build_dataset(
        candles,
        loaded.config,
        spec,
        scaler=loaded.scaler,
        split=split,
        progress=lambda _s, k, _n: progress.update(k),
    )


def evaluate_period(
    model: UnifiedPatchTST,
    schema: OutputSchema,
    ds: Dataset,
    idx: npt.NDArray[np.int64],
    rules: DecodeRules,
    baselines: Baselines,
    device: torch.device,
) -> dict[str, Any]:
    """The report (ml/evaluation.py) of the samples ``idx`` of ``ds``: network and baselines."""
    outputs = predict_outputs(model, ds, idx, device)
    scores = baselines.predict(ds, idx)
    return evaluate_outputs(outputs, model.temperature, schema, ds, idx, rules, baselines=scores)


def assemble_metrics(
    model: UnifiedPatchTST,
    rules: DecodeRules,
    schema: OutputSchema,
    test: dict[str, Any],
    holdout: dict[str, Any] | None,
    baselines: Baselines,
    source: str,
) -> dict[str, Any]:
    """The metrics document: both periods, the headline of the primary horizon and how it was made."""
    p = rules.primary_horizon
    summary: dict[str, Any] = {"primary_horizon_bars": int(schema.horizons[p]), "test": summarize(test, p)}
    metrics: dict[str, Any] = {"test": test}
    if holdout is not None:
        metrics["holdout"] = holdout
        summary["holdout"] = (
            summarize(holdout, p)
            if holdout.get("available")
            else {"available": False, "reason": holdout.get("reason")}
        )
    metrics["summary"] = summary
    metrics["baselines"] = {
        "names": list(BASELINE_NAMES),
        "past_return_feature": baselines.feature,
        "past_return_signs": baselines.signs.tolist(),
        "source": source,
    }
    metrics["decoding"] = {
        "primary_horizon": p,
        "confidence_threshold": rules.confidence_threshold,
        "round_trip_cost": rules.round_trip_cost,
        "edge_margin": rules.edge_margin,
    }
    metrics["horizon_temperatures"] = list(model.horizon_temperatures)
    metrics["evaluated_at_ms"] = int(time.time() * 1000)
    return metrics


def evaluate_version(
    settings: Settings,
    store: CandleStore,
    ref: str,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    registry: Registry | None = None,
    holdout_days: float = 0.0,
    record: bool = True,
) -> tuple[str, dict[str, Any]]:
    """Re-evaluate a stored version on its test split and on the ``holdout_days`` before its training
    data (0, the default here: the test split only; ``mlsignals model evaluate`` asks for
    ``HOLDOUT_DAYS``); with ``record`` (the default) the result replaces its metrics, without it the
    version's files stay as they are (a caller that only reads: the MCP tool ``evaluate_model``).

    Returns the version and the full metrics, the per-time series included (for ``--json`` and the
    plots); the registry stores them without the series (``ml.evaluation.without_series``).
    """
    progress = progress or NullProgress()
    registry = registry or registry_for(settings)
    apply_thread_settings(settings.model.torch_threads)
    loaded = registry.load(ref)
    recipe = TrainingRecipe.model_validate(loaded.training["recipe"])
    rules = DecodeRules.from_settings(settings)
    torch_device = select_device(device)
    model = loaded.model.to(torch_device)
    test, baselines, source = _evaluate_test(store, loaded, recipe, rules, torch_device, progress)
    holdout = (
        _evaluate_holdout(
            settings, store, loaded, recipe, rules, baselines, torch_device, holdout_days, progress
        )
        if holdout_days > 0
        else {"available": False, "reason": "not asked for (holdout days 0)", "days": 0.0}
    )
    metrics = {
        **loaded.metrics,
        **assemble_metrics(model, rules, loaded.schema, test, holdout, baselines, source),
    }
    if record:
        registry.update_metrics(loaded.version, json_ready(without_series(metrics)))
    return loaded.version, metrics


def _lead_ms(recipe: TrainingRecipe) -> int:
    """Candles needed before a sample's anchor: the features' warm-up, the context and a bar's phase."""
    return (FEATURE_SPEC.warmup + recipe.model.context + 2) * recipe.model.bar_minutes * MINUTE_MS


def _evaluate_test(
    store: CandleStore,
    loaded: LoadedModel,
    recipe: TrainingRecipe,
    rules: DecodeRules,
    device: torch.device,
    progress: Progress,
) -> tuple[dict[str, Any], Baselines, str]:
    """The test split's report, the baselines and where they came from (stored with the version, or
    refitted on its training rows for a version stored without them)."""
    training = loaded.training
    split = SplitBounds.from_dict(training["split"])
    stored = Baselines.from_arrays(loaded.baselines) if loaded.baselines is not None else None
    # The test windows, their features' warm-up and their labels' look-ahead; and without stored
    # baselines the training rows as well, to fit them on.
    start_ms = split.test_start_ms - _lead_ms(recipe) if stored else int(training["candles"]["start_ms"])
    end_ms = int(training["candles"]["end_ms"])
    symbols = list(training["symbols"])
    progress.start("reading candles", len(symbols))
    candles = load_candles(
        store, str(training["exchange"]), symbols, start_ms, end_ms, lambda _s, k, _n: progress.update(k)
    )
    ds = _version_dataset(candles, loaded, recipe, split, progress, "features and labels")
    test_idx = ds.indices("test")
    if not test_idx.size:
        raise DatasetError(
            f"the held-out period of {loaded.version} ({iso_minute(split.test_start_ms)} .. "
            f"{iso_minute(split.end_ms)}) has no usable samples in the candle store"
        )
    baselines, source = stored, "stored"
    if baselines is None:
        train_idx = ds.indices("train")
        if not train_idx.size:
            raise DatasetError(
                f"{loaded.version} has no stored baselines and its training period has no usable samples "
                "in the candle store to fit them on"
            )
        progress.start("baselines (refitted on the training rows)", 1)
        baselines, source = fit_baselines(ds, train_idx, recipe), "refitted"
        progress.update(1)
    progress.start("test split evaluation", 1)
    test = evaluate_period(loaded.model, loaded.schema, ds, test_idx, rules, baselines, device)
    progress.update(1)
    return test, baselines, source


def holdout_window(training: dict[str, Any], days: float) -> tuple[int, int]:
    """``[start, end)`` of the held-out period: ``days`` ending where the training candles start."""
    end_ms = int(training["candles"]["start_ms"])
    return end_ms - round(days * 1440) * MINUTE_MS, end_ms


def _evaluate_holdout(
    settings: Settings,
    store: CandleStore,
    loaded: LoadedModel,
    recipe: TrainingRecipe,
    rules: DecodeRules,
    baselines: Baselines,
    device: torch.device,
    days: float,
    progress: Progress,
) -> dict[str, Any]:
    training = loaded.training
    start_ms, end_ms = holdout_window(training, days)
    window = {
        "days": float(days),
        "start_ms": start_ms,
        "end_ms": end_ms,
        "start": iso_minute(start_ms),
        "end": iso_minute(end_ms),
    }
    exchange, symbols = str(training["exchange"]), list(training["symbols"])
    backfill: dict[str, Any] = {"needed": False}
    try:
        backfill = ensure_candles(
            settings, store, exchange, symbols, start_ms - _lead_ms(recipe), end_ms, progress
        )
        progress.start("reading held-out candles", len(symbols))
        candles = load_candles(
            store,
            exchange,
            symbols,
            start_ms - _lead_ms(recipe),
            end_ms,
            lambda _s, k, _n: progress.update(k),
        )
        if not candles:
            raise DatasetError(f"no candles of the version's symbols on {exchange!r} in the held-out period")
        # Every anchor of the window counts as "test"; none is training or validation.
        split = SplitBounds(start_ms, start_ms, start_ms, start_ms, start_ms, end_ms, 0)
        ds = _version_dataset(candles, loaded, recipe, split, progress, "held-out features and labels")
        idx = ds.indices("test")
        if not idx.size:
            raise DatasetError(
                f"the held-out period {window['start']} .. {window['end']} has no usable samples "
                f"(each symbol needs {days:g} days of complete candles plus the features' warm-up)"
            )
    except MLSignalsError as exc:
        reason = str(exc)
        failed = backfill.get("failed") or {}
        if failed:
            first = next(iter(failed.values()))
            reason += f"; the source could not provide {len(failed)} symbols ({first})"
        return {**window, "available": False, "reason": reason, "backfill": backfill}
    progress.start("held-out period evaluation", 1)
    report = evaluate_period(loaded.model, loaded.schema, ds, idx, rules, baselines, device)
    progress.update(1)
    with_samples = {ds.symbols[i] for i in set(ds.symbol[idx].tolist())}
    return {
        **window,
        "available": True,
        "missing_symbols": [s for s in symbols if s not in with_samples],
        "backfill": backfill,
        **report,
    }


def ensure_candles(
    settings: Settings,
    store: CandleStore,
    exchange: str,
    symbols: list[str],
    start_ms: int,
    end_ms: int,
    progress: Progress,
) -> dict[str, Any]:
    """Backfill ``[start, end)`` for the symbols whose stored candles do not cover it; what was done.

    Raises ``DatasetError`` when the configured source is another exchange than the version's.
    """
    minutes = (end_ms - start_ms) // MINUTE_MS
    counts = store.chunk_counts(exchange, symbols, start_ms, end_ms - start_ms, end_ms)
    missing = [s for s in symbols if counts.get((s, 0), 0) < minutes]
    if not missing:
        return {"needed": False}
    source = make_source(settings)
    if source.name != exchange:
        raise DatasetError(
            f"the held-out period lacks candles of {len(missing)} symbols and the configured source "
            f"({source.name}) is not the version's exchange ({exchange}): backfill them first"
        )
    progress.start("held-out backfill", len(missing) * -(-minutes // 1440))
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress.update(done)

    ingestor = Ingestor(store, source, ValidationPolicy.from_settings(settings))
    # ``days`` in minutes plus half a minute: backfill takes int(days * 1440) minutes before end_ms.
    report = ingestor.backfill(missing, (minutes + 0.5) / 1440, end_ms=end_ms, progress=advance)
    return {
        "needed": True,
        "symbols": len(missing),
        "inserted": int(report.inserted),
        "failed": {s: o.detail or o.rule or "" for s, o in report.failed.items()},
    }
