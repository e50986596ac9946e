"""``train_version`` and ``evaluate_version`` (ml/jobs.py) end to end on a small simulated store: the
baselines stored with a version, both evaluation periods, an older version without baselines, and a
held-out period the source cannot provide.

The network's training is replaced by a seeded random model (``fake_fit``): what these tests check
is the evaluation around it, and a real fit costs half a minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import SourceUnavailableError
from core.settings import Settings
from data.ingest import Ingestor
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.bootstrap import open_store
from ml.dataset import Dataset
from ml.jobs import evaluate_version, holdout_window, train_version
from ml.losses import target_stats
from ml.model import ModelConfig, build_model
from ml.progress import Progress
from ml.registry import Registry
from ml.training import FitResult, TrainingRecipe

# A small network (the evaluation does not care about its size) on 5 symbols, the fewest an IC needs.
RECIPE = TrainingRecipe(
    model=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, head_hidden=32),
    days=8,
    symbols=5,
    train_fraction=0.5,
    val_fraction=0.25,
    purge_bars=24,
    teacher_ridge=100.0,
)
HOLDOUT_DAYS = 1.5
BAR_MS = 15 * 60_000


def fake_fit(
    ds: Dataset,
    recipe: TrainingRecipe,
    device: torch.device,  # noqa: ARG001 - fit's signature
    progress: Progress | None = None,  # noqa: ARG001
) -> FitResult:
    torch.manual_seed(0)
    model = build_model(recipe.model)
    for head in (model.returns_head, model.direction_head, model.risk_head):
        last = head[-1]
        assert isinstance(last, torch.nn.Linear)
        torch.nn.init.normal_(last.weight, std=0.2)  # the heads start at zero: no ranks at all
    return FitResult(
        model=model.eval(),
        history=[],
        best_epoch=1,
        stats=target_stats(ds, ds.indices("train"), recipe),
        seconds=0.1,
        samples_seen=0,
        stopped_early=False,
        extra={"temperatures": [1.0, 1.0, 1.0, 1.0]},
    )


@dataclass
class Workspace:
    root: Path
    settings: Settings
    store: CandleStore
    registry: Registry
    version: str
    metrics: dict[str, Any]
    training: dict[str, Any]


def build_workspace(root: Path) -> Workspace:
    """A store with 8 days of 5 simulated symbols and one registered version (the champion)."""
    settings = Settings(data_dir=root, model={"registry_dir": root / "models", "device": "cpu"})
    store = open_store(settings)
    source = make_source(settings)
    symbols = resolve_symbols(settings, source)[: RECIPE.symbols]
    Ingestor(store, source, ValidationPolicy.from_settings(settings)).backfill(symbols, RECIPE.days)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("ml.jobs.fit", fake_fit)
        outcome = train_version(settings, store, RECIPE, device="cpu", symbols=symbols)
    return Workspace(
        root,
        settings,
        store,
        Registry(settings.model.registry_dir),
        outcome.version,
        outcome.metrics,
        outcome.training,
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("evaluate"))


def test_training_stores_the_baselines_and_the_new_metrics(ws: Workspace) -> None:
    loaded = ws.registry.load(ws.version)
    assert loaded.baselines is not None
    assert loaded.training["fit"]["temperatures"] == [1.0, 1.0, 1.0, 1.0]
    metrics = loaded.metrics
    assert metrics == ws.metrics
    assert set(metrics) >= {"test", "summary", "baselines", "decoding", "evaluated_at_ms"}
    assert "series" not in metrics["test"]
    assert metrics["baselines"]["source"] == "fitted"
    assert metrics["baselines"]["past_return_feature"] == "ret_4"
    assert metrics["summary"]["primary_horizon_bars"] == 4
    for h in metrics["test"]["horizons"]:
        assert set(h["ic"]) >= {"network", "ridge", "logistic", "past_return", "vs_best_baseline"}
        assert np.array(h["confusion"]).sum() == h["samples"] == metrics["test"]["samples"]


def test_evaluate_reports_the_test_split_and_the_period_before_training(ws: Workspace) -> None:
    version, metrics = evaluate_version(
        ws.settings, ws.store, "champion", device="cpu", holdout_days=HOLDOUT_DAYS
    )
    assert version == ws.version
    assert metrics["baselines"]["source"] == "stored"
    # The same samples and baselines as at training time give the same figures.
    before, after = ws.metrics["test"], metrics["test"]
    assert after["samples"] == before["samples"]
    for a, b in zip(after["horizons"], before["horizons"], strict=True):
        for name in ("network", "ridge", "logistic", "past_return"):
            assert np.isfinite(a["ic"][name]["mean"])
            assert a["ic"][name]["mean"] == pytest.approx(b["ic"][name]["mean"], abs=1e-6)
    holdout = metrics["holdout"]
    assert holdout["available"], holdout
    assert holdout["backfill"]["needed"]
    assert holdout["backfill"]["failed"] == {}
    start, end = holdout_window(ws.training, HOLDOUT_DAYS)
    assert end == ws.training["candles"]["start_ms"]
    assert (holdout["start_ms"], holdout["end_ms"]) == (start, end)
    assert holdout["samples"] > 0
    assert holdout["missing_symbols"] == []
    # Inputs and labels before the training data: the last anchor leaves room for the 48-bar labels.
    assert holdout["first_anchor_ms"] >= start
    assert holdout["last_anchor_ms"] + 48 * BAR_MS <= end
    assert {"test", "holdout"} <= set(metrics["summary"])
    assert metrics["summary"]["holdout"]["samples"] == holdout["samples"]
    assert "series" in holdout  # the full result carries the series …
    stored = ws.registry.load(version).metrics  # … the stored one does not
    assert "series" not in stored["holdout"]
    assert stored["holdout"]["samples"] == holdout["samples"]
    # A second run finds the candles stored: no backfill.
    _, again = evaluate_version(ws.settings, ws.store, "champion", device="cpu", holdout_days=HOLDOUT_DAYS)
    assert again["holdout"]["backfill"] == {"needed": False}


def test_a_version_without_baselines_gets_them_refitted(ws: Workspace) -> None:
    loaded = ws.registry.load(ws.version)
    # Same weights, another registration time: the version id (time + weights hash) stays unique.
    old, _ = ws.registry.register(
        loaded.model, loaded.scaler, loaded.training, {}, now=datetime(2029, 1, 1, tzinfo=UTC)
    )
    assert ws.registry.load(old).baselines is None
    _, metrics = evaluate_version(ws.settings, ws.store, old, device="cpu", holdout_days=0)
    assert metrics["baselines"]["source"] == "refitted"
    assert metrics["holdout"]["available"] is False
    for a, b in zip(metrics["test"]["horizons"], ws.metrics["test"]["horizons"], strict=True):
        assert a["ic"]["ridge"]["mean"] == pytest.approx(b["ic"]["ridge"]["mean"], abs=1e-6)


class DownSource:
    """The configured simulator's symbols, but every fetch fails (an exchange outage)."""

    def __init__(self, settings: Settings) -> None:
        self.inner = make_source(settings)
        self.name = self.inner.name

    def list_symbols(self) -> list[str]:
        return self.inner.list_symbols()

    def fetch(self, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:  # noqa: ARG002
        raise SourceUnavailableError(f"{self.name} is down")


def test_a_held_out_period_the_source_cannot_provide_is_reported_not_raised(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = ws.registry.load(ws.version)
    training = {**loaded.training}
    # Training data that starts 20 days earlier: nothing of the held-out period is stored.
    training["candles"] = {
        **training["candles"],
        "start_ms": training["candles"]["start_ms"] - 20 * 86_400_000,
    }
    assert loaded.baselines is not None
    # Same weights: a different registration time keeps the version id (time + weights hash) apart
    # from the original's, which may have been registered within the same second.
    later = datetime(2030, 1, 1, tzinfo=UTC)
    moved, _ = ws.registry.register(
        loaded.model, loaded.scaler, training, {}, baselines=loaded.baselines, now=later
    )
    monkeypatch.setattr("ml.jobs.make_source", DownSource)
    _, metrics = evaluate_version(ws.settings, ws.store, moved, device="cpu", holdout_days=1)
    holdout = metrics["holdout"]
    assert holdout["available"] is False
    assert "could not provide 5 symbols" in holdout["reason"]
    assert "is down" in holdout["reason"]
    assert metrics["summary"]["holdout"] == {"available": False, "reason": holdout["reason"]}
    assert metrics["test"]["samples"] == ws.metrics["test"]["samples"]
