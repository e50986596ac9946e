"""Issue 13, the first run: a quick champion first, then the full recipe in a background process,
promoted only when it beats the quick model on the same held-out samples; the process never outlives
its run. Tiny recipes only: each training here takes seconds."""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from ml.background import (
    BackgroundEvent,
    BackgroundTraining,
    Comparison,
    Report,
    compare_held_out,
    recipe_name,
    run_upgrade,
    upgrade_champion,
    upgrade_needed,
)
from ml.bootstrap import BootstrapResult, ensure_champion, open_store
from ml.registry import Registry
from ml.training import TrainingRecipe
from tests.support.model_fixtures import random_model, random_scaler

# Explicit purge gaps: the default (the longest horizon, the context and the feature warm-up) would
# need weeks of history.
TINY_QUICK = TrainingRecipe(
    name="quick",
    days=12,
    symbols=6,
    train_fraction=0.5,
    val_fraction=0.25,
    purge_bars=144,
    epochs=1,
    samples_per_epoch=48,
    batch_size=48,
    val_max_samples=48,
    patience=1,
    distill_candidates=(),  # no pilot runs
)
TINY_FULL = TINY_QUICK.model_copy(update={"name": "default", "days": 13, "seed": 11})


def _settings(root: Path, registry: Path) -> Settings:
    return Settings(
        data_dir=root, data={"universe_size": 6}, model={"registry_dir": registry, "device": "cpu"}
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, BootstrapResult]:
    root = tmp_path_factory.mktemp("firstrun")
    settings = _settings(root, root / "models")
    return settings, ensure_champion(settings, recipe=TINY_QUICK)


@pytest.fixture
def quick_registry(first_run: tuple[Settings, BootstrapResult], tmp_path: Path) -> Settings:
    """The first run's registry (only the quick champion), copied: each test changes its own."""
    settings, _ = first_run
    shutil.copytree(settings.model.registry_dir, tmp_path / "models")
    return _settings(settings.data_dir, tmp_path / "models")


def forced(champion_ic: float, challenger_ic: float) -> Callable[[str, str], Comparison]:
    return lambda _champion, _challenger: Comparison(champion_ic, challenger_ic, 4, 100)


def test_the_quick_first_run_trains_once_and_then_does_nothing(
    first_run: tuple[Settings, BootstrapResult],
) -> None:
    settings, result = first_run
    assert result.trained
    assert result.outcome is not None
    registry = Registry(settings.model.registry_dir)
    assert registry.resolve("champion") == result.version
    assert recipe_name(registry.info(result.version).training) == "quick"
    again = ensure_champion(settings, recipe=TINY_QUICK)
    assert not again.trained
    assert again.version == result.version
    assert registry.versions() == [result.version]
    # Its champion is the quick model and no full-recipe version exists: the upgrade is due.
    assert upgrade_needed(registry, TINY_FULL) == result.version


def test_upgrade_is_due_only_for_a_quick_champion_without_a_full_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    assert upgrade_needed(registry) is None  # no champion at all

    def register(name: str | None) -> str:
        training: dict[str, Any] = {"symbols": ["BTC/USDT:USDT"]}
        if name is not None:
            training["recipe"] = {"name": name}
        version, _ = registry.register(random_model(len(registry.versions())), random_scaler(), training, {})
        return version

    quick = register("quick")
    assert upgrade_needed(registry) == quick
    register("experimental")  # another recipe: not the full one
    assert upgrade_needed(registry) == quick
    register(None)  # a version from before recipe names: the default recipe
    assert upgrade_needed(registry) is None

    other = Registry(tmp_path / "legacy")
    version, _ = other.register(random_model(), random_scaler(), {"symbols": []}, {})
    assert recipe_name(other.info(version).training) == "default"
    assert upgrade_needed(other) is None  # a default champion is never "upgraded"


def test_comparison_needs_a_strictly_higher_defined_ic() -> None:
    assert Comparison(0.01, 0.02, 4, 10).challenger_wins
    assert not Comparison(0.02, 0.02, 4, 10).challenger_wins
    assert not Comparison(0.03, 0.02, 4, 10).challenger_wins
    assert not Comparison(0.01, math.nan, 4, 10).challenger_wins
    assert Comparison(math.nan, -0.01, 4, 10).challenger_wins


def test_a_better_full_version_is_registered_then_promoted(quick_registry: Settings) -> None:
    settings = quick_registry
    registry = Registry(settings.model.registry_dir)
    quick = registry.resolve("champion")
    decision = upgrade_champion(settings, TINY_FULL, scorer=forced(0.01, 0.05))
    assert decision.promoted
    assert decision.champion == quick
    assert registry.resolve("champion") == decision.challenger != quick
    assert recipe_name(registry.info(decision.challenger).training) == "default"
    assert registry.aliases()["previous_champions"] == [quick]
    assert "promoted" in decision.summary()
    assert "+0.0500 vs +0.0100" in decision.summary()
    assert upgrade_needed(registry, TINY_FULL) is None

    # The real scorer: both models on the same samples, the new version's test period from the
    # later of both test starts on.
    store = open_store(settings)
    real = compare_held_out(settings, store, registry, quick, decision.challenger, device="cpu")
    split = registry.info(decision.challenger).training["split"]
    assert real.since_ms is not None
    assert real.since_ms >= split["test_start_ms"]
    assert real.samples > 0
    assert real.horizon_bars == 4
    assert math.isfinite(real.champion_ic)
    assert math.isfinite(real.challenger_ic)
    assert real.champion_ic != real.challenger_ic


def test_a_worse_full_version_stays_the_challenger(quick_registry: Settings) -> None:
    settings = quick_registry
    registry = Registry(settings.model.registry_dir)
    quick = registry.resolve("champion")
    decision = upgrade_champion(settings, TINY_FULL, scorer=forced(0.05, 0.01))
    assert not decision.promoted
    assert registry.resolve("champion") == quick
    assert registry.resolve("challenger") == decision.challenger
    assert "kept the quick model" in decision.summary()
    assert "+0.0100 vs +0.0500" in decision.summary()
    # The comparison was made: the next run does not train the full recipe again.
    assert upgrade_needed(registry, TINY_FULL) is None


# -- the child process: targets are module-level (spawn imports them by name) ---------------------
def block_until_terminated(_settings: Settings, recipe: TrainingRecipe, report: Report) -> None:
    report("note", f"pid {os.getpid()} nice {os.nice(0)} recipe {recipe.name}")
    threading.Event().wait()


def promote_a_random_model(settings: Settings, recipe: TrainingRecipe, report: Report) -> None:
    """A stand-in for the training (tests/integration/test_run_command.py): registers a version with
    ``recipe``'s name, promotes it, says so, then waits to be terminated with the run."""
    registry = Registry(settings.model.registry_dir)
    training = {"symbols": ["BTC/USDT:USDT"], "recipe": {"name": recipe.name}}
    version, _ = registry.register(random_model(7), random_scaler(7), training, {})
    registry.promote(version)
    report("promoted", f"promoted {version}")
    threading.Event().wait()


def fail(_settings: Settings, _recipe: TrainingRecipe, _report: Report) -> None:
    raise RuntimeError("no candles today")


def events_until_finished(job: BackgroundTraining, timeout_s: float) -> list[BackgroundEvent]:
    deadline = time.monotonic() + timeout_s
    events: list[BackgroundEvent] = []
    while not job.finished and time.monotonic() < deadline:
        events += job.poll(timeout=1.0)
    return events


def test_the_child_runs_at_low_priority_and_is_gone_after_stop(tmp_path: Path) -> None:
    settings = _settings(tmp_path, tmp_path / "models")
    with BackgroundTraining.start(settings, TINY_FULL, target=block_until_terminated) as job:
        pid = job.pid
        assert pid is not None
        assert pid != os.getpid()
        events = job.poll(timeout=60)
        assert [e.kind for e in events] == ["note"]
        assert events[0].text == f"pid {pid} nice {min(os.nice(0) + 10, 19)} recipe default"
        assert job.alive()
    assert not job.alive()
    assert job.process.exitcode is not None  # reaped: neither running nor a zombie
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "background training started" in (tmp_path / "logs" / "background-training.log").read_text()


def test_a_failing_child_reports_why_and_exits(tmp_path: Path) -> None:
    settings = _settings(tmp_path, tmp_path / "models")
    with BackgroundTraining.start(settings, TINY_FULL, target=fail) as job:
        events = events_until_finished(job, 60)
    assert [e.kind for e in events] == ["failed"]
    assert "RuntimeError: no candles today" in events[0].text
    assert job.outcome == events[0]
    assert job.process.exitcode == 1
    assert "no candles today" in (tmp_path / "logs" / "background-training.log").read_text()


def test_the_child_trains_compares_and_reports_its_decision(quick_registry: Settings) -> None:
    """The real target in a real child: backfill, train, compare with the real scorer, decide."""
    settings = quick_registry
    registry = Registry(settings.model.registry_dir)
    quick = registry.resolve("champion")
    # At the machine's priority: niceness is tested above, and a loaded test machine would starve it.
    with BackgroundTraining.start(settings, TINY_FULL, target=run_upgrade, nice=0) as job:
        events = events_until_finished(job, 240)
    assert job.process.exitcode == 0, events
    assert any(e.kind == "note" and "training the default recipe" in e.text for e in events)
    outcome = job.outcome
    assert outcome is not None, events
    assert outcome.kind in ("promoted", "kept"), events
    challenger = next(v for v in registry.versions() if v != quick)
    assert (registry.resolve("champion") == challenger) == (outcome.kind == "promoted")
    assert "held-out IC per time at 4 bars" in outcome.text
