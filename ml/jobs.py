"""End-to-end jobs on the candle store and the registry: train a new version, evaluate a stored one.

Both read candles through ``CandleStore.read_candles`` and build samples with ``ml.dataset`` (the
anchored bars and the feature engine of the live path). The CLI, the first-run bootstrap and
(later) the training task are thin wrappers around these two functions.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any

import torch

from core.settings import Settings
from core.timegrid import MINUTE_MS, iso_minute
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from ml.dataset import DatasetError, SplitBounds, build_dataset, load_candles
from ml.decoding import DecodeRules
from ml.evaluation import evaluate_outputs, predict_outputs
from ml.features import FEATURE_SPEC
from ml.model.schema import OutputSchema
from ml.predictor import apply_thread_settings, select_device
from ml.progress import NullProgress, Progress
from ml.registry import Registry
from ml.training import TrainingRecipe, fit


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

    test_idx = ds.indices("test")
    schema = OutputSchema.from_config(recipe.model)
    rules = DecodeRules.from_settings(settings)
    metrics: dict[str, Any] = {}
    if test_idx.size:
        progress.start("held-out evaluation", 1)
        outputs = predict_outputs(result.model, ds, test_idx, torch_device)
        metrics = {
            "test": evaluate_outputs(outputs, result.model.temperature, schema, ds, test_idx, rules),
            "evaluated_at_ms": int(time.time() * 1000),
        }
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
        "recipe": recipe.model_dump(mode="json"),
        "seed": recipe.seed,
        "device": str(torch_device),
        "fit": {
            "seconds": round(result.seconds, 2),
            "samples_seen": result.samples_seen,
            "samples_per_second": round(result.samples_seen / result.seconds, 1) if result.seconds else None,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "temperature": result.model.temperature,
        },
        "history": result.history,
        "target_stats": result.stats.to_dict(),
        "feature_spec_hash": FEATURE_SPEC.hash,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
    }
    version, alias = registry.register(result.model.cpu(), ds.scaler, training, metrics)
    return TrainOutcome(version, alias, metrics, training, time.perf_counter() - began)


def evaluate_version(
    settings: Settings,
    store: CandleStore,
    ref: str,
    *,
    device: str = "auto",
    progress: Progress | None = None,
    registry: Registry | None = None,
) -> tuple[str, dict[str, Any]]:
    """Re-evaluate a stored version on its held-out period; the result replaces its metrics."""
    progress = progress or NullProgress()
    registry = registry or registry_for(settings)
    apply_thread_settings(settings.model.torch_threads)
    loaded = registry.load(ref)
    training = loaded.training
    recipe = TrainingRecipe.model_validate(training["recipe"])
    split = SplitBounds.from_dict(training["split"])
    bar_ms = recipe.model.bar_minutes * MINUTE_MS
    # The test windows, their features' warm-up and their labels' look-ahead: nothing else is needed.
    start_ms = split.test_start_ms - (FEATURE_SPEC.warmup + recipe.model.context + 2) * bar_ms
    end_ms = int(training["candles"]["end_ms"])
    symbols = list(training["symbols"])
    progress.start("reading candles", len(symbols))
    candles = load_candles(
        store, str(training["exchange"]), symbols, start_ms, end_ms, lambda _s, k, _n: progress.update(k)
    )
    spec = recipe.dataset_spec()
    progress.start("features and labels", len(candles) * len(spec.phases))
    ds = build_dataset(
        candles,
        loaded.config,
        spec,
        scaler=loaded.scaler,
        split=split,
        progress=lambda _s, k, _n: progress.update(k),
    )
    test_idx = ds.indices("test")
    if not test_idx.size:
        raise DatasetError(
            f"the held-out period of {loaded.version} ({iso_minute(split.test_start_ms)} .. "
            f"{iso_minute(split.end_ms)}) has no usable samples in the candle store"
        )
    torch_device = select_device(device)
    progress.start("held-out evaluation", 1)
    outputs = predict_outputs(loaded.model.to(torch_device), ds, test_idx, torch_device)
    test = evaluate_outputs(
        outputs, loaded.temperature, loaded.schema, ds, test_idx, DecodeRules.from_settings(settings)
    )
    progress.update(1)
    metrics = {**loaded.metrics, "test": test, "evaluated_at_ms": int(time.time() * 1000)}
    registry.update_metrics(loaded.version, metrics)
    return loaded.version, metrics
