"""Acceptance: the default recipe learns the simulator's effect (about 3-4 minutes on 2 cores).

Trains ``TrainingRecipe()`` exactly as ``mlsignals model train`` does, on a fixed six-week window of
the simulator (seed 7, 50 symbols, from 2024-02-01, so the result does not depend on today's date),
and checks the held-out period: direction accuracy above the majority class for at least one
horizon, and a positive information coefficient per time (cross-sectional) at 15 minutes and 1 hour,
where docs/SIMULATOR.md puts the momentum effect. Deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import pytest
import torch

from core.timegrid import MINUTE_MS, parse_minute
from data.sources.simulator import SimulatedMarket
from ml.dataset import build_dataset
from ml.decoding import DecodeRules
from ml.evaluation import evaluate_outputs, predict_outputs
from ml.model import OutputSchema
from ml.training import TrainingRecipe, fit

START = parse_minute("2024-02-01T00:00:00Z")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_default_recipe_beats_the_majority_class_and_finds_the_momentum() -> None:
    recipe = TrainingRecipe()
    market = SimulatedMarket(seed=7)
    end = START + int(recipe.days * 1440) * MINUTE_MS
    candles = {s: market.fetch(s, START, end) for s in market.list_symbols()[: recipe.symbols]}
    ds = build_dataset(candles, recipe.model, recipe.dataset_spec())
    result = fit(ds, recipe, torch.device("cpu"))
    test = ds.indices("test")
    outputs = predict_outputs(result.model, ds, test, torch.device("cpu"))
    metrics = evaluate_outputs(
        outputs, result.model.temperature, OutputSchema.from_config(recipe.model), ds, test, DecodeRules()
    )
    horizons = metrics["horizons"]
    summary = [
        (
            h["horizon_bars"],
            round(h["accuracy"], 4),
            round(h["majority_accuracy"], 4),
            round(h["ic_per_time"], 4),
        )
        for h in horizons
    ]
    print("held-out (bars, accuracy, majority, IC per time):", summary)
    assert any(h["beats_majority"] for h in horizons), summary
    assert horizons[0]["ic_per_time"] > 0.02, summary
    assert horizons[1]["ic_per_time"] > 0.02, summary
