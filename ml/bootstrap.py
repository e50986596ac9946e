"""First run: make sure the registry has a champion, training a small model on stored history if not.

``ensure_champion`` is a no-op when a champion exists. Otherwise it (1) upgrades a SQLite database
in place (a server database must already be migrated), (2) backfills ``recipe.days`` of 1-minute
candles for the first ``recipe.symbols`` symbols from the configured source — the built-in
simulator by default, resumable and idempotent like ``mlsignals data backfill`` — and (3) trains
the recipe and registers the result, which becomes the champion of the empty registry.

The recipe is the caller's: ``mlsignals model bootstrap`` trains the default recipe (a few minutes
on 2 CPU cores, docs/MODEL.md); ``mlsignals run`` passes ``QUICK_RECIPE`` (ml/training.py) so that
its first minute runs within a few minutes of a fresh install, and then trains the default recipe
in the background, promoting it only if it beats the quick model (ml/background.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from rich.console import Console

from core.errors import ConfigError
from core.logging import get_logger
from core.settings import Settings
from data import db
from data.ingest import Ingestor, IngestReport
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.features import FEATURE_SPEC
from ml.jobs import TrainOutcome, registry_for, train_version
from ml.progress import LogProgress, Progress, RichProgress
from ml.registry import Registry, RegistryError
from ml.training import TrainingRecipe

log = get_logger(__name__)


@dataclass(frozen=True)
class BootstrapResult:
    version: str
    trained: bool
    outcome: TrainOutcome | None = None
    seconds: float = 0.0


def current_champion(registry: Registry) -> str | None:
    try:
        return registry.resolve("champion")
    except RegistryError:
        return None


def open_store(settings: Settings) -> CandleStore:
    url = db.normalise_url(settings.database_url)
    if url.startswith("sqlite"):
        if settings.data_dir and url.startswith("sqlite:///"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        db.upgrade(url)
    elif db.current_revision(url) != db.head_revision():
        raise ConfigError("database schema is not at head: run `mlsignals db upgrade` before the first run")
    return CandleStore(db.get_engine(url))


def live_history_days(settings: Settings) -> float:
    """Days of 1-minute candles a live minute reads: the feature window of anchored bars, plus one
    bar for the anchor phase and an hour for candles still missing at the newest edge."""
    minutes = (FEATURE_SPEC.window + 1) * settings.data.bar_minutes + 60
    return math.ceil(minutes / 1440 * 4) / 4


def ensure_live_history(settings: Settings, *, store: CandleStore | None = None) -> IngestReport:
    """Backfill the live window for every configured symbol (idempotent: complete days are skipped),
    so a run on a new database, or with more symbols than the first-run training used, has the
    history its minutes need instead of failing each symbol with "insufficient history"."""
    store = store or open_store(settings)
    source = make_source(settings)
    policy = ValidationPolicy.from_settings(settings)
    return Ingestor(store, source, policy).backfill(
        resolve_symbols(settings, source), live_history_days(settings)
    )


def backfill_recipe(
    settings: Settings, store: CandleStore, recipe: TrainingRecipe, progress: Progress
) -> list[str]:
    """Backfill ``recipe.days`` for the first ``recipe.symbols`` configured symbols (complete days
    already stored are skipped); returns the symbols that have usable history."""
    source = make_source(settings)
    symbols = resolve_symbols(settings, source)[: recipe.symbols]
    policy = ValidationPolicy.from_settings(settings)
    chunks = len(symbols) * int(-(-recipe.days // 1))
    progress.start("backfill", chunks)
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress.update(done)

    report = Ingestor(store, source, policy).backfill(symbols, recipe.days, progress=advance)
    return [s for s in symbols if s not in report.failed]


def ensure_champion(
    settings: Settings,
    *,
    recipe: TrainingRecipe | None = None,
    progress: Progress | None = None,
    store: CandleStore | None = None,
    device: str | None = None,
    console: Console | None = None,
) -> BootstrapResult:
    """Train ``recipe`` (default: the full default recipe) when the registry has no champion.

    ``progress`` wins; else a rich progress bar on ``console``; else log lines."""
    registry = registry_for(settings)
    existing = current_champion(registry)
    if existing is not None:
        return BootstrapResult(existing, trained=False)
    if progress is None and console is not None:
        with RichProgress(console) as bar:
            return ensure_champion(settings, recipe=recipe, progress=bar, store=store, device=device)
    began = time.perf_counter()
    recipe = recipe or TrainingRecipe()
    progress = progress or LogProgress()
    store = store or open_store(settings)
    source = make_source(settings)
    symbols = resolve_symbols(settings, source)[: recipe.symbols]
    progress.note(
        f"no champion model in {registry.root}: backfilling {recipe.days:g} days of {len(symbols)} "
        f"symbols from {source.name} and training the {recipe.name} recipe"
    )
    usable = backfill_recipe(settings, store, recipe, progress)
    outcome = train_version(
        settings,
        store,
        recipe,
        device=device or settings.model.device,
        symbols=usable,
        progress=progress,
        registry=registry,
    )
    if outcome.alias != "champion":
        # Someone registered a champion meanwhile; theirs stays, ours waits as the challenger.
        log.info("a champion appeared during the first-run training", challenger=outcome.version)
    version = registry.resolve("champion")
    return BootstrapResult(version, trained=True, outcome=outcome, seconds=time.perf_counter() - began)
