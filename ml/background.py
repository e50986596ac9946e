"""The background upgrade of a quick first-run champion to the default recipe (issue 13).

On a fresh machine ``mlsignals run`` trains ``QUICK_RECIPE`` first (ml/bootstrap.py), so that its
first minute runs within a few minutes of the install. While that quick model serves, the run trains
the full recipe here, in a separate process:

* ``upgrade_needed``: the champion was trained by the quick recipe (``training.json``'s recipe name;
  absent means "default") and no version trained by the full recipe exists yet. Once one exists,
  promoted or not, nothing runs again: the comparison has been made.
* ``BackgroundTraining.start``: a ``spawn`` child process (not a thread: training would hold the GIL
  the minute pipeline needs) at ``os.nice(NICE)``. It ignores Ctrl-C, which stops the run, and the
  run then terminates it; on Linux it is also killed when the run dies (``PR_SET_PDEATHSIG``). Its
  log goes to ``<data_dir>/logs/background-training.log``; its notes and its decision come back
  over a queue, and the run prints them.
* ``upgrade_champion`` (in the child): backfill the recipe's days (resumable: complete days already
  stored are skipped), train and register the new version (the challenger), then score it and the
  quick champion on the same held-out samples (``compare_held_out``) by the information coefficient
  per time of the primary horizon, and promote it only when its IC is higher. The running minute
  pipeline reads the champion alias every minute (ml/serving.py) and serves the new champion from
  the next minute on.

A run that stops first terminates the child (SIGTERM, then SIGKILL) and waits for it; the next run
starts it over, its backfill already done.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from core.logging import configure_logging, get_logger
from core.settings import Settings
from ml.training import QUICK_RECIPE, TrainingRecipe

if TYPE_CHECKING:
    from data.store import CandleStore
    from ml.progress import Progress
    from ml.registry import Registry

log = get_logger(__name__)

# The child's niceness increment: the minute pipeline (and anything else on the machine) comes first.
NICE = 10
# How long ``stop`` waits after SIGTERM, and after SIGKILL.
STOP_TIMEOUT_S = 10.0
LOG_NAME = "background-training.log"


def recipe_name(training: Mapping[str, Any]) -> str:
    """The recipe name a version was trained with (versions from before names existed: "default")."""
    recipe = training.get("recipe")
    name = recipe.get("name") if isinstance(recipe, Mapping) else None
    return str(name) if name else "default"


def upgrade_needed(registry: Registry, recipe: TrainingRecipe | None = None) -> str | None:
    """The quick champion's version when the background upgrade should run, else None."""
    from ml.bootstrap import current_champion

    target = (recipe or TrainingRecipe()).name
    champion = current_champion(registry)
    if champion is None or recipe_name(registry.info(champion).training) != QUICK_RECIPE.name:
        return None
    for version in registry.versions():
        if recipe_name(registry.info(version).training) == target:
            return None
    return champion


# -- the comparison -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """Both versions' IC per time at the primary horizon, on the same held-out samples."""

    champion_ic: float
    challenger_ic: float
    horizon_bars: int
    samples: int
    since_ms: int | None = None

    @property
    def challenger_wins(self) -> bool:
        """Strictly higher; an undefined (NaN) IC never wins and always loses."""
        if not math.isfinite(self.challenger_ic):
            return False
        return not math.isfinite(self.champion_ic) or self.challenger_ic > self.champion_ic


# (champion version, challenger version) -> their comparison. Tests inject one to force a decision.
Scorer = Callable[[str, str], Comparison]


def held_out_ic(test: Mapping[str, Any], h: int) -> float | None:
    """``test["horizons"][h]["ic_per_time"]``, read defensively (the metrics grow over time)."""
    horizons = test.get("horizons")
    if not isinstance(horizons, list) or h >= len(horizons) or not isinstance(horizons[h], Mapping):
        return None
    value = horizons[h].get("ic_per_time")
    return float(value) if isinstance(value, int | float) else None


def compare_held_out(
    settings: Settings,
    store: CandleStore,
    registry: Registry,
    champion: str,
    challenger: str,
    *,
    device: str = "auto",
) -> Comparison:
    """Score both versions on the challenger's held-out (test) samples from the later of both
    versions' test starts on, so that neither model trained, stopped early or calibrated on them;
    each model with its own config and scaler, on the samples both can build."""
    import numpy as np

    from core.timegrid import MINUTE_MS
    from ml.dataset import DatasetError, SplitBounds, build_dataset, load_candles
    from ml.decoding import DecodeRules
    from ml.evaluation import evaluate_outputs, ic_per_time, predict_outputs
    from ml.features import FEATURE_SPEC
    from ml.predictor import apply_thread_settings, select_device

    apply_thread_settings(settings.model.torch_threads)
    new, old = registry.load(challenger), registry.load(champion)
    training = new.training
    recipe = TrainingRecipe.model_validate(training["recipe"])
    split = SplitBounds.from_dict(training["split"])
    since = split.test_start_ms
    with contextlib.suppress(KeyError, TypeError, ValueError):
        since = max(since, SplitBounds.from_dict(old.training["split"]).test_start_ms)
    bar_ms = recipe.model.bar_minutes * MINUTE_MS
    context = max(new.config.context, old.config.context)
    start_ms = since - (FEATURE_SPEC.warmup + context + 2) * bar_ms
    end_ms = int(training["candles"]["end_ms"])
    candles = load_candles(store, str(training["exchange"]), list(training["symbols"]), start_ms, end_ms)
    rules = DecodeRules.from_settings(settings)
    bars = int(new.schema.horizons[rules.primary_horizon])
    spec = recipe.dataset_spec()

    built = []
    for loaded in (old, new):
        ds = build_dataset(candles, loaded.config, spec, scaler=loaded.scaler, split=split)
        idx = ds.indices("test")
        idx = idx[ds.anchor_ms[idx] >= since]
        keys = {(ds.symbols[int(ds.symbol[i])], int(ds.anchor_ms[i])): int(i) for i in idx}
        built.append((loaded, ds, keys))
    common = sorted(set(built[0][2]) & set(built[1][2]))
    if not common:
        raise DatasetError(
            f"no held-out samples common to {champion} and {challenger} after {since} ms: cannot compare"
        )
    torch_device = select_device(device)
    ics: list[float] = []
    for loaded, ds, keys in built:
        idx = np.array([keys[k] for k in common], dtype=np.int64)
        if bars not in loaded.schema.horizons:
            ics.append(float("nan"))
            continue
        h = loaded.schema.horizons.index(bars)
        outputs = predict_outputs(loaded.model.to(torch_device), ds, idx, torch_device)
        ic = held_out_ic(evaluate_outputs(outputs, loaded.temperature, loaded.schema, ds, idx, rules), h)
        if ic is None:  # the definition evaluate_outputs reports as "ic_per_time"
            ic = ic_per_time(outputs[:, h], ds.returns[idx, h], ds.anchor_ms[idx])[0]
        ics.append(ic)
    return Comparison(ics[0], ics[1], bars, len(common), since)


# -- the upgrade ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UpgradeDecision:
    champion: str  # the quick champion the new version was compared with
    challenger: str  # the new version
    promoted: bool
    comparison: Comparison | None
    seconds: float
    note: str = ""

    def summary(self) -> str:
        c = self.comparison
        numbers = (
            ""
            if c is None
            else f"held-out IC per time at {c.horizon_bars} bars {c.challenger_ic:+.4f} vs "
            f"{c.champion_ic:+.4f} for the quick model, on the same {c.samples} samples"
        )
        took = f" (trained and compared in {self.seconds:.0f} s)"
        if self.promoted:
            return (
                f"promoted {self.challenger} (full recipe) to champion: {numbers}{took}; the minute "
                "pipeline uses it from the next minute"
            )
        why = self.note or numbers
        return (
            f"kept the quick model {self.champion} as champion ({self.challenger} is the challenger): "
            f"{why}{took}"
        )


def upgrade_champion(
    settings: Settings,
    recipe: TrainingRecipe | None = None,
    *,
    store: CandleStore | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
    scorer: Scorer | None = None,
    device: str | None = None,
) -> UpgradeDecision:
    """Backfill and train ``recipe`` (default: the full default recipe), register it (the
    challenger), and promote it when it beats the current champion on the same held-out samples."""
    from ml.bootstrap import backfill_recipe, current_champion, open_store
    from ml.jobs import registry_for, train_version
    from ml.progress import LogProgress
    from ml.registry import RegistryError

    began = time.perf_counter()
    recipe = recipe or TrainingRecipe()
    registry = registry or registry_for(settings)
    progress = progress or LogProgress()
    device = device or settings.model.device
    champion = current_champion(registry)
    if champion is None:
        raise RegistryError(f"no champion in {registry.root} to upgrade")
    store = store or open_store(settings)
    progress.note(f"backfilling {recipe.days:g} days of history for the {recipe.name} recipe")
    usable = backfill_recipe(settings, store, recipe, progress)
    progress.note(f"training the {recipe.name} recipe on {len(usable)} symbols")
    outcome = train_version(
        settings, store, recipe, device=device, symbols=usable, progress=progress, registry=registry
    )
    new = outcome.version

    def decided(promoted: bool, comparison: Comparison | None, note: str = "") -> UpgradeDecision:
        decision = UpgradeDecision(champion, new, promoted, comparison, time.perf_counter() - began, note)
        log.info(
            "background upgrade decided",
            promoted=promoted,
            champion=champion,
            challenger=new,
            champion_ic=None if comparison is None else comparison.champion_ic,
            challenger_ic=None if comparison is None else comparison.challenger_ic,
            horizon_bars=None if comparison is None else comparison.horizon_bars,
            samples=None if comparison is None else comparison.samples,
            note=note,
        )
        return decision

    if outcome.alias == "champion":  # the registry was emptied meanwhile: it is the champion anyway
        return decided(True, None, "the registry had no champion any more")
    progress.note(f"comparing {new} with the quick champion {champion} on the same held-out samples")
    score = scorer or (
        lambda old, challenger: compare_held_out(settings, store, registry, old, challenger, device=device)
    )
    comparison = score(champion, new)
    if current_champion(registry) != champion:
        return decided(False, comparison, "the champion changed meanwhile (promoted by hand?)")
    if not comparison.challenger_wins:
        return decided(False, comparison)
    registry.promote(new)
    return decided(True, comparison)


# -- the child process ------------------------------------------------------------------------------
class Report(Protocol):
    def __call__(self, kind: str, text: str) -> None: ...


# What the child runs: (settings, recipe, report). Module-level functions only (spawn pickles them by
# name); tests pass their own.
Target = Callable[[Settings, TrainingRecipe, Report], None]


class _ReportProgress:
    """Logs like ``LogProgress`` and sends notes and stage starts to the parent."""

    def __init__(self, report: Report) -> None:
        from ml.progress import LogProgress

        self.report = report
        self.log = LogProgress(every_s=30.0)

    def start(self, task: str, total: int) -> None:
        self.log.start(task, total)

    def update(self, completed: int, **info: float) -> None:
        self.log.update(completed, **info)

    def note(self, message: str) -> None:
        self.log.note(message)
        self.report("note", message)


def run_upgrade(settings: Settings, recipe: TrainingRecipe, report: Report) -> None:
    """The default target: ``upgrade_champion`` with its decision reported."""
    decision = upgrade_champion(settings, recipe, progress=_ReportProgress(report))
    report("promoted" if decision.promoted else "kept", decision.summary())


# What ``mlsignals run`` trains in the background, and how (module attributes: tests swap them).
BACKGROUND_RECIPE: TrainingRecipe | None = None  # None: the default recipe, TrainingRecipe()
BACKGROUND_TARGET: Target = run_upgrade


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGTERM when the parent dies (even by SIGKILL), so no training is left orphaned."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(0)


def _child_main(
    target: Target,
    settings: Settings,
    recipe: TrainingRecipe,
    events: Any,
    nice: int,
    log_path: str,
    parent_pid: int,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    with contextlib.suppress(OSError):
        os.nice(nice)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sink = open(log_path, "a", buffering=1)  # noqa: SIM115 (the process's stdout/stderr until it exits)
    sys.stdout = sys.stderr = sink
    configure_logging(settings.log_level, settings.log_json)

    def report(kind: str, text: str) -> None:
        events.put((kind, text))

    log.info("background training started", recipe=recipe.name, pid=os.getpid(), nice=nice)
    try:
        target(settings, recipe, report)
    except BaseException as exc:
        log.exception("background training failed")
        report("failed", f"{type(exc).__name__}: {exc} (see {log_path})")
        raise SystemExit(1) from None


@dataclass(frozen=True)
class BackgroundEvent:
    kind: str  # note, promoted, kept, failed
    text: str


class BackgroundTraining:
    """A running background training process; ``stop`` (or leaving the ``with`` block) ends it."""

    def __init__(self, process: BaseProcess, events: Any, log_path: Path) -> None:
        self.process = process
        self.events = events
        self.log_path = log_path
        self.finished = False
        self.outcome: BackgroundEvent | None = None

    @classmethod
    def start(
        cls,
        settings: Settings,
        recipe: TrainingRecipe | None = None,
        *,
        target: Target = run_upgrade,
        nice: int = NICE,
        log_path: Path | None = None,
    ) -> BackgroundTraining:
        ctx = multiprocessing.get_context("spawn")
        events = ctx.Queue()
        path = log_path or settings.data_dir / "logs" / LOG_NAME
        process = ctx.Process(
            target=_child_main,
            args=(target, settings, recipe or TrainingRecipe(), events, nice, str(path), os.getpid()),
            name="mlsignals-background-training",
            daemon=True,
        )
        # Ignored from its first instruction on: Ctrl-C reaches the whole foreground process group,
        # and a child interrupted while importing would print a traceback over the live display.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT) if main else None
        if previous is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        log.info("background training process started", pid=process.pid, log=str(path))
        return cls(process, events, path)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.is_alive()

    def poll(self, timeout: float = 0.0) -> list[BackgroundEvent]:
        """The events sent since the last call (waiting up to ``timeout`` seconds for the first);
        once the process has ended, its end too."""
        out: list[BackgroundEvent] = []
        if self.finished:
            return out
        ended = not self.process.is_alive()  # read before draining: a live child may still send
        wait = timeout
        while True:
            try:
                kind, text = self.events.get(timeout=wait) if wait > 0 else self.events.get_nowait()
            except (queue.Empty, OSError, ValueError, EOFError):
                break
            wait = 0.0
            event = BackgroundEvent(str(kind), str(text))
            if event.kind != "note":
                self.outcome = event
            out.append(event)
        if ended:
            self.finished = True
            self.process.join(STOP_TIMEOUT_S)
            if self.outcome is None:
                code = self.process.exitcode
                self.outcome = BackgroundEvent(
                    "failed", f"the training process exited with code {code} (see {self.log_path})"
                )
                out.append(self.outcome)
        return out

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Terminate the process if it still runs and wait for it; nothing is left behind."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout)
        self.process.join(timeout)
        self.finished = True
        with contextlib.suppress(Exception):
            self.events.close()
            self.events.join_thread()

    def __enter__(self) -> BackgroundTraining:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
