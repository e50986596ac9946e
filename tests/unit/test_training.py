"""Training: a tiny end-to-end run (first-run bootstrap included), determinism, the loss, the temperature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.settings import Settings
from data.sources.simulator import SimulatedMarket
from ml.bootstrap import ensure_champion, open_store
from ml.dataset import build_dataset
from ml.jobs import evaluate_version, train_version
from ml.losses import TargetStats, fit_log_temperature, loss_terms, target_stats
from ml.predictor import Predictor
from ml.registry import Registry
from ml.training import TrainingRecipe, fit
from tests.support.feature_fixtures import START_MS

TINY = TrainingRecipe(
    days=12,
    purge_bars=48 + 96,  # 12 days leave no room for the default gap, which adds the 200-bar warm-up
    symbols=6,
    train_fraction=0.5,
    val_fraction=0.25,
    epochs=2,
    samples_per_epoch=96,
    batch_size=48,
    val_max_samples=96,
    patience=1,
    # Six symbols give no usable validation IC (NaN), so the best epoch goes by the loss here.
    early_stopping="val_loss",
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("ml")
    settings = Settings(data_dir=root, model={"registry_dir": root / "models", "device": "cpu"})
    result = ensure_champion(settings, recipe=TINY)
    return {"settings": settings, "result": result, "store": open_store(settings)}


def test_first_run_trains_a_champion_and_then_does_nothing(workspace: dict) -> None:  # type: ignore[type-arg]
    settings, result = workspace["settings"], workspace["result"]
    assert result.trained
    assert result.outcome is not None
    registry = Registry(settings.model.registry_dir)
    assert registry.resolve("champion") == result.version
    again = ensure_champion(settings, recipe=TINY)
    assert not again.trained
    assert again.version == result.version
    assert registry.versions() == [result.version]


def test_the_trained_version_is_complete_and_loadable(workspace: dict) -> None:  # type: ignore[type-arg]
    settings, result = workspace["settings"], workspace["result"]
    registry = Registry(settings.model.registry_dir)
    loaded = registry.load(result.version)
    t = loaded.training
    assert len(t["symbols"]) == 6
    assert t["seed"] == TINY.seed
    assert t["recipe"]["epochs"] == 2
    assert t["split"]["val_start_ms"] - t["split"]["train_end_ms"] == (48 + 96) * 15 * 60_000
    assert t["samples"]["samples"]["train"] > 0
    assert t["fit"]["samples_seen"] > 0
    assert t["history"]
    assert "val_loss" in t["history"][0]
    test = loaded.metrics["test"]
    assert [h["horizon_bars"] for h in test["horizons"]] == [1, 4, 16, 48]
    for h in test["horizons"]:
        assert np.array(h["confusion"]).sum() == h["samples"] == test["samples"]
        assert 0 <= h["accuracy"] <= 1
        assert 0 <= h["majority_accuracy"] <= 1
    assert test["signals"]["actionable"] == test["signals"]["long"] + test["signals"]["short"]
    predictor = Predictor.load(registry, "champion", settings)
    assert predictor.predict(np.zeros((2, 96, 240), np.float32)).shape == (2, 20)


def test_evaluate_reproduces_the_training_time_evaluation(workspace: dict) -> None:  # type: ignore[type-arg]
    settings, result, store = workspace["settings"], workspace["result"], workspace["store"]
    before = result.outcome.metrics["test"]
    version, metrics = evaluate_version(settings, store, "champion", device="cpu")
    assert version == result.version
    after = metrics["test"]
    assert after["samples"] == before["samples"]
    for a, b in zip(after["horizons"], before["horizons"], strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=2e-3)
        assert a["ic_per_time"] == pytest.approx(b["ic_per_time"], abs=2e-3)
    # The new metrics are stored, and the re-signed version still verifies.
    registry = Registry(settings.model.registry_dir)
    assert registry.load(version).metrics["evaluated_at_ms"] == metrics["evaluated_at_ms"]


def test_training_is_deterministic() -> None:
    market = SimulatedMarket(seed=3)
    candles = {s: market.fetch(s, START_MS, START_MS + 12 * 86_400_000) for s in market.list_symbols()[:4]}
    recipe = TINY.model_copy(update={"epochs": 1})
    ds = build_dataset(candles, recipe.model, recipe.dataset_spec())
    first, second = fit(ds, recipe, torch.device("cpu")), fit(ds, recipe, torch.device("cpu"))
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The trained epoch's validation figures too (the best epoch may be 0, the linear path alone).
    assert [h["epoch"] for h in first.history] == [0.0, 1.0]
    assert first.history[1]["val_loss"] != first.history[0]["val_loss"]
    for key in ("val_loss", "val_acc_h4", "train_loss"):
        assert first.history[1][key] == second.history[1][key]


def test_the_linear_path_is_the_stored_linear_baseline_and_stays_fixed(workspace: dict) -> None:  # type: ignore[type-arg]
    """Training loads the closed-form ridge / logistic fit into the model's linear path and never
    moves it: the stored model's linear weights are the stored baselines' coefficients."""
    from ml.baselines import Baselines

    settings, result = workspace["settings"], workspace["result"]
    loaded = Registry(settings.model.registry_dir).load(result.version)
    assert loaded.model.linear is not None
    assert loaded.baselines is not None
    teacher = Baselines.from_arrays(loaded.baselines).teacher
    linear = loaded.model.linear
    returns_weight = linear.returns.weight.detach().numpy().T
    np.testing.assert_allclose(returns_weight, teacher.returns_coef[:-1], rtol=1e-5, atol=1e-7)
    direction_bias = linear.direction.bias.detach().numpy()
    np.testing.assert_allclose(direction_bias, teacher.direction_coef[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(linear.input_scale.numpy(), teacher.direction_scale, rtol=1e-5)
    assert loaded.training["history"][0]["epoch"] == 0


def test_a_second_training_run_registers_a_challenger(workspace: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    settings, store = workspace["settings"], workspace["store"]
    registry = Registry(tmp_path / "other")
    first = train_version(settings, store, TINY.model_copy(update={"epochs": 1}), registry=registry)
    second = train_version(
        settings, store, TINY.model_copy(update={"epochs": 1, "seed": 8}), registry=registry
    )
    assert (first.alias, second.alias) == ("champion", "challenger")
    assert first.version != second.version


def _stats(n_h: int = 4) -> TargetStats:
    return TargetStats(
        return_var=torch.ones(n_h),
        risk_var=torch.ones(4),
        class_weights=torch.ones(n_h, 3),
        return_clip=np.ones(n_h),
        risk_clip=np.full(4, 10.0),
    )


def test_cross_sectional_loss_ignores_what_every_symbol_of_a_time_shares() -> None:
    torch.manual_seed(0)
    out = torch.randn(6, 20)
    ret, risk = torch.randn(6, 4), torch.rand(6, 4)
    cls = torch.randint(0, 3, (6, 4))
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    base = loss_terms(out, ret, cls, risk, _stats(), 1.0, groups)
    shifted = out.clone()
    shifted[:3, :4] += 0.7  # a common move at time 0
    shifted[3:, :4] -= 0.2
    moved = loss_terms(shifted, ret, cls, risk, _stats(), 1.0, groups)
    torch.testing.assert_close(base[0], moved[0])
    plain = loss_terms(shifted, ret, cls, risk, _stats(), 1.0, None)
    assert plain[0] > base[0]


def test_class_weights_average_one_over_the_training_labels() -> None:
    market = SimulatedMarket(seed=3)
    candles = {s: market.fetch(s, START_MS, START_MS + 12 * 86_400_000) for s in market.list_symbols()[:3]}
    ds = build_dataset(candles, TINY.model, TINY.dataset_spec())
    train = ds.indices("train")
    stats = target_stats(ds, train, TINY)
    for h in range(4):
        freq = np.bincount(ds.classes[train, h], minlength=3) / train.size
        w = stats.class_weights[h].numpy()
        assert float((freq * w).sum()) == pytest.approx(1.0, abs=1e-6)
        assert np.argmax(w) == np.argmin(freq)  # the rarest class weighs most


def test_temperature_fit_recovers_a_known_temperature() -> None:
    torch.manual_seed(0)
    true_logits = torch.randn(20_000, 2, 3) * 1.5
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    log_t = fit_log_temperature(true_logits * 2.5, labels)  # over-confident by 2.5
    assert np.exp(log_t) == pytest.approx(2.5, rel=0.05)


def test_the_teacher_weight_is_chosen_by_the_pilots_validation_ic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each candidate weight gets a pilot run; the one with the best validation IC at 1 h trains the
    model, and every pilot's figure is reported."""
    import ml.training as training

    market = SimulatedMarket(seed=3)
    candles = {s: market.fetch(s, START_MS, START_MS + 12 * 86_400_000) for s in market.list_symbols()[:4]}
    recipe = TINY.model_copy(update={"epochs": 1, "distill_candidates": (0.0, 0.5, 0.8)})
    ds = build_dataset(candles, recipe.model, recipe.dataset_spec())
    planted = {0.0: 0.01, 0.5: 0.05, 0.8: 0.03}
    seen: list[float] = []
    real_validate = training.validate

    def validate(model, ds, idx, recipe, stats, device):
        metrics = real_validate(model, ds, idx, recipe, stats, device)
        if recipe.distill_candidates == ():  # a pilot (the full run keeps the candidates)
            seen.append(recipe.distill_returns)
            metrics["val_ic_h4"] = planted[recipe.distill_returns]
        return metrics

    monkeypatch.setattr(training, "validate", validate)
    result = fit(ds, recipe, torch.device("cpu"))
    assert seen == [0.0, 0.5, 0.8]
    assert result.extra["distill_weight"] == 0.5
    assert result.extra["distill_pilot_val_ic"] == {"0": 0.01, "0.5": 0.05, "0.8": 0.03}
    assert result.recipe is not None
    assert (result.recipe.distill_returns, result.recipe.distill_direction) == (0.5, 0.5)
    assert len(result.extra["temperatures"]) == 4
    assert result.model.horizon_temperatures == pytest.approx(tuple(result.extra["temperatures"]))
    assert result.model.temperature == pytest.approx(1.0)
