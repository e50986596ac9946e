"""``mlsignals run``: the README's main job, through the CLI, on the embedded default (SQLite, simulator,
in-process broker and workers) with a champion in the registry and an empty database: the command
backfills the live window itself."""

from __future__ import annotations

import os
import re
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.exceptions import TimeoutError as CeleryTimeoutError
from typer.testing import CliRunner

from cli.main import app
from core.settings import Settings, reset_settings_cache
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, ms_to_dt, now_ms
from data import db
from data.models import PipelineRun, SignalRecord
from data.sources.factory import make_source, resolve_symbols
from ml import background
from ml.registry import Registry
from pipeline.ledger import RunLedger
from tests.support.model_fixtures import make_registry, random_model, random_scaler
from tests.unit.test_bootstrap_background import promote_a_random_model
from worker.app import app as celery_app
from worker.embedded import EmbeddedThreads, embedded_runtime
from worker.queues import Queue

N_SYMBOLS = 4
runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("MLSIG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MLSIG_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MLSIG_DATA__UNIVERSE_SIZE", str(N_SYMBOLS))
    monkeypatch.setenv("MLSIG_PIPELINE__CANDLE_WAIT_SECONDS", "0")
    monkeypatch.setenv("MLSIG_ML_INTEGRATION__SIGNALS__CONFIDENCE_THRESHOLD", "0.34")
    reset_settings_cache()
    s = Settings()
    make_registry(tmp_path / "models")
    yield s
    reset_settings_cache()


def test_replay_prints_signals_and_stores_each_minute_once(workspace: Settings) -> None:
    first = floor_minute(now_ms()) - 8 * MINUTE_MS
    args = ["run", "--replay", "--minutes", "2", "--start", iso_minute(first)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "replayed 2 minutes" in result.output
    assert result.output.count(" done: 4 signals") == 2
    symbols = resolve_symbols(workspace, make_source(workspace))
    assert all(symbol[:10] in result.output for symbol in symbols)

    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count(": duplicate") == 2
    assert "nothing new" in again.output
    with db.get_engine(workspace.database_url).connect() as conn:
        signals = conn.execute(SignalRecord.__table__.select()).fetchall()
        runs = conn.execute(PipelineRun.__table__.select()).fetchall()
    assert len(signals) == 2 * N_SYMBOLS
    assert len(runs) == 2


def test_live_run_reports_the_minutes_it_was_down_and_runs_the_next(workspace: Settings) -> None:
    """Issue 11: the ledger gets a ``missed`` row for every minute the process was not running; the
    live table sums them up in one line and they do not count as minutes run."""
    db.upgrade(workspace.database_url)
    RunLedger(db.get_engine(workspace.database_url)).claim(
        ms_to_dt(floor_minute(now_ms()) - 5 * MINUTE_MS), status="done", model_version="v0", symbols_asked=0
    )
    result = runner.invoke(app, ["run", "--minutes", "1"])
    assert result.exit_code == 0, result.output
    assert "minutes without a run" in result.output
    assert result.output.count(" done: 4 signals") == 1
    with db.get_engine(workspace.database_url).connect() as conn:
        statuses = [
            r.status for r in conn.execute(PipelineRun.__table__.select().order_by(PipelineRun.minute))
        ]
    assert statuses[0] == "done"
    assert statuses[-1] == "done"
    # Every minute in between has its row: missed ones, and none left out.
    assert set(statuses[1:-1]) == {"missed"}
    assert len(statuses) >= 6


@pytest.fixture
def quick_champion(workspace: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """A registry whose champion is a quick first-run model (and nothing else): the run's background
    upgrade is due."""
    root = workspace.data_dir / "quick-models"
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(root))
    reset_settings_cache()
    training = {"symbols": ["BTC/USDT:USDT"], "recipe": {"name": "quick"}}
    version, _ = Registry(root).register(random_model(3), random_scaler(3), training, {})
    return version


def test_live_run_without_background_training(quick_champion: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "BACKGROUND_TARGET", promote_a_random_model)
    result = runner.invoke(app, ["run", "--minutes", "1", "--no-background-training"])
    assert result.exit_code == 0, result.output
    assert f"the champion {quick_champion} is the quick first-run model" in result.output
    assert "background training of the full recipe is off" in result.output
    assert "background training started" not in result.output
    assert result.output.count(" done: 4 signals") == 1
    assert Registry(Settings().model.registry_dir).versions() == [quick_champion]


def test_live_run_upgrades_in_the_background_and_serves_the_new_champion(
    quick_champion: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child (a stand-in that promotes a version at once, then waits) runs beside the minutes;
    the minute pipeline serves the new champion without a restart, and the child ends with the run."""
    monkeypatch.setattr(background, "BACKGROUND_TARGET", promote_a_random_model)
    result = runner.invoke(app, ["run", "--minutes", "2"])
    assert result.exit_code == 0, result.output
    started = re.search(r"background training started \(pid (\d+)", result.output)
    assert started, result.output
    registry = Registry(Settings().model.registry_dir)
    promoted = registry.resolve("champion")
    assert promoted != quick_champion
    assert f"background training promoted: promoted {promoted}" in result.output
    assert "background training stopped with the run" in result.output
    with pytest.raises(ProcessLookupError):
        os.kill(int(started.group(1)), 0)
    assert result.output.count(" done: 4 signals") == 2
    with db.get_engine(Settings().database_url).connect() as conn:
        runs = conn.execute(PipelineRun.__table__.select().order_by(PipelineRun.minute)).fetchall()
    # The child promotes seconds after the start, the second minute a minute after the first.
    assert runs[-1].model_version == promoted


def test_embedded_runtime_serves_every_queue_reports_a_dead_worker_and_stops(tmp_path: Path) -> None:
    """Celery's own WorkController in a thread: ready before the block, consuming every queue; the
    runner may wait on results inside the block; a worker that stops on its own is reported; at
    the end no worker thread is left, and the process's "may wait on results" state is as before."""
    settings = Settings(data_dir=tmp_path, data={"universe_size": 2})
    with embedded_runtime(settings, beat=True) as rt:
        assert rt.health is not None
        assert rt.health() is None
        for queue in Queue:  # a built-in task sent to each queue comes back: every queue is consumed
            sig = celery_app.signature("celery.accumulate", args=(queue.value,), queue=queue.value)
            assert sig.apply_async().get(timeout=10) == [queue.value]
        assert isinstance(rt.health, types.MethodType)
        threads = rt.health.__self__
        assert isinstance(threads, EmbeddedThreads)
        threads.worker.stop()
        threads.worker_thread.join(10)
        assert rt.health() == "the embedded Celery worker stopped"
    assert not [t for t in threading.enumerate() if t.name == "embedded-worker" and t.is_alive()]
    # Waiting on a result is allowed as before the run (a timeout, not "never call get() in a task").
    with pytest.raises(CeleryTimeoutError):
        celery_app.AsyncResult("no-such-task").get(timeout=0.2)
