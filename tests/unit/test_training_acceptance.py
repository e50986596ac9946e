"""Acceptance: the default recipe learns the default simulator's effect (a few minutes on 2 cores).

Trains ``TrainingRecipe()`` exactly as ``mlsignals model train`` does, on a fixed eight-week window of
the default simulator (seed 7, the switching effect, 50 symbols, from 2024-02-01, so the result
does not depend on today's date), and checks the held-out test split: a positive information
coefficient per time at 1 h, roughly calibrated probabilities at every horizon, and actionable
signals on both sides. The committed report (docs/reports/default-recipe/) has the full
evaluation of the same recipe. Deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import pytest
import torch

from core.timegrid import MINUTE_MS, parse_minute
from data.sources.simulator import SimulatedMarket
from ml.baselines import fit_baselines
from ml.dataset import build_dataset
from ml.decoding import DecodeRules
from ml.evaluation import evaluate_outputs, predict_outputs
from ml.model import OutputSchema
from ml.training import TrainingRecipe, fit

START = parse_minute("2024-02-01T00:00:00Z")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_default_recipe_learns_the_effect_with_calibrated_probabilities() -> None:
    recipe = TrainingRecipe()
    market = SimulatedMarket(seed=7)
    end = START + int(recipe.days * 1440) * MINUTE_MS
    candles = {s: market.fetch(s, START, end) for s in market.list_symbols()[: recipe.symbols]}
    ds = build_dataset(candles, recipe.model, recipe.dataset_spec())
    result = fit(ds, recipe, torch.device("cpu"))
    test = ds.indices("test")
    outputs = predict_outputs(result.model, ds, test, torch.device("cpu"))
    baselines = fit_baselines(ds, ds.indices("train"), recipe, teacher=result.teacher).predict(ds, test)
    metrics = evaluate_outputs(
        outputs,
        result.model.temperature,
        OutputSchema.from_config(recipe.model),
        ds,
        test,
        DecodeRules(),
        baselines=baselines,
    )
    horizons = metrics["horizons"]
    summary = [
        (h["horizon_bars"], round(h["ic"]["network"]["mean"], 4), round(h["calibration"]["ece"], 4))
        for h in horizons
    ]
    print("held-out (bars, IC per time, ECE):", summary, "signals:", metrics["signals"]["by_direction"])
    # The test split is about two days: loose bounds (the committed report has the month-long view).
    assert horizons[1]["ic"]["network"]["mean"] > 0.02, summary
    assert all(h["calibration"]["ece"] <= 0.1 for h in horizons), summary
    signals = metrics["signals"]
    assert signals["long"] > 0, signals
    assert signals["short"] > 0, signals
