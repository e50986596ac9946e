"""The feature-drift pass on real windows: minutes written as the pipeline writes them (ledger run,
signals, scaled windows under the attempt's keys in a real window store: Redis on the tests'
database, and the embedded in-memory store), on SQLite and PostgreSQL. It finds a deliberately
shifted feature, accumulates minutes without counting one twice, prefers a retried attempt's windows,
persists every pass; and a drift failure leaves the outcomes and the breaker of the pass intact."""

from __future__ import annotations

import random
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
import redis
from sqlalchemy import func, select, update

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.models import FeatureDrift, PipelineRun, SignalOutcome
from data.store import CandleStore
from ml.drift import FeatureBins
from ml.features import FEATURE_SPEC
from ml.registry import Registry
from pipeline.ledger import DONE, RUNNING, RunLedger
from pipeline.signal_store import SignalStore
from pipeline.window_store import MemoryWindowStore, RedisWindowStore, WindowStore
from quality.drift import DRIFT_MINUTES, NO_WINDOWS, OK, latest_drift
from quality.service import run_quality
from tasks.quality import PipelineWindows
from tests.support.model_fixtures import random_model, random_scaler
from tests.support.quality import signal_row
from tests.unit import test_signal_outcomes as outcomes_case

pytestmark = pytest.mark.integration

F = FEATURE_SPEC.n_features
SHIFTED = "vol_z_96"
N_SYMBOLS = 60
TTL = Settings().pipeline.feature_ttl_seconds


@pytest.fixture
def champion(tmp_path: Path) -> tuple[Registry, str]:
    """A champion whose training distribution is standard normal in every (scaled) feature."""
    train = np.random.default_rng(0).normal(size=(5000, F)).astype(np.float32)
    bins = FeatureBins.fit(train, FEATURE_SPEC.names, Settings().quality.drift_bins)
    registry = Registry(tmp_path / "models")
    version, alias = registry.register(
        random_model(0), random_scaler(0), {"note": "drift"}, {}, feature_bins=bins.to_arrays()
    )
    assert alias == "champion"
    return registry, version


class TrackedStore:
    """A real window store, remembering the keys a test wrote so that Redis is left clean."""

    def __init__(self, store: WindowStore) -> None:
        self.store = store
        self.keys: list[str] = []

    def put(self, windows: dict[str, npt.NDArray[np.float32]]) -> None:
        self.store.put_many(windows, TTL)
        self.keys.extend(windows)


@pytest.fixture(params=["memory", "redis"])
def windows(request: pytest.FixtureRequest) -> Iterator[TrackedStore]:
    if request.param == "memory":
        yield TrackedStore(MemoryWindowStore())
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    tracked = TrackedStore(RedisWindowStore(client))
    yield tracked
    if tracked.keys:
        client.delete(*tracked.keys)
    client.close()


def first_minute() -> int:
    """Minutes of their own per test: run ids restart at 1 in each fresh database, and the window keys
    (minute and run) must not meet another test's in the shared Redis database."""
    return floor_minute(now_ms()) - random.Random(uuid.uuid4().int).randrange(10, 500_000) * MINUTE_MS


def pipeline_minute(
    engine: Any,
    store: TrackedStore,
    version: str,
    minute_ms: int,
    *,
    seed: int,
    shift: float = 2.0,
    attempts: dict[int, float] | None = None,
    without_window: int = 0,
) -> int:
    """One minute as the pipeline leaves it: a finished ledger run of ``version``, a signal per symbol
    and each symbol's [96, 240] window under its attempt's key, the newest row standard normal with
    SHIFTED moved by ``shift``. ``attempts`` maps attempt -> shift to store several attempts;
    the last ``without_window`` symbols have a signal but no window (expired)."""
    minute = datetime.fromtimestamp(minute_ms / 1000, tz=UTC)
    ledger = RunLedger(engine)
    run = ledger.claim(minute, status=RUNNING, model_version=version, symbols_asked=N_SYMBOLS + 1)
    assert run is not None
    symbols = [f"S{i:03d}/USDT:USDT" for i in range(N_SYMBOLS)]
    rng = np.random.default_rng(seed)
    keys = PipelineWindows(store.store)
    with_window = symbols[: N_SYMBOLS - without_window]
    for attempt, moved in (attempts or {1: shift}).items():
        stored: dict[str, npt.NDArray[np.float32]] = {}
        for symbol in with_window:
            window = rng.normal(size=(96, F)).astype(np.float32)
            window[-1, FEATURE_SPEC.index(SHIFTED)] += moved
            stored[keys.key(iso_minute(minute_ms), run, attempt, symbol)] = window
        store.put(stored)
    if attempts:
        with engine.begin() as conn:
            conn.execute(update(PipelineRun).where(PipelineRun.id == run).values(attempts=max(attempts)))
    SignalStore(engine).upsert([signal_row(s, minute, version) for s in symbols], [])
    ledger.update(
        run,
        status=DONE,
        signals_made=N_SYMBOLS,
        failures={"GAPPY/USDT:USDT": "window_quality: 31 % of the window's minutes are gap fills"},
        finished=True,
    )
    return run


def quality_pass(engine: Any, registry: Registry, store: TrackedStore, **kwargs: Any) -> dict[str, Any]:
    summary = run_quality(
        engine, Settings(), exchange="sim", registry=registry, windows=PipelineWindows(store.store), **kwargs
    )
    return summary


def stored_rows(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(FeatureDrift)).scalar_one())


def test_the_pass_finds_the_shifted_feature_and_accumulates_minutes(
    migrated_url: str, windows: TrackedStore, champion: tuple[Registry, str]
) -> None:
    engine = db.get_engine(migrated_url)
    registry, version = champion
    first = first_minute()
    for k in range(3):
        pipeline_minute(engine, windows, version, first + k * MINUTE_MS, seed=k)

    drift = quality_pass(engine, registry, windows)["drift"]
    assert drift["status"] == OK, drift
    assert (drift["model_version"], drift["samples"], drift["minutes"]) == (version, 3 * N_SYMBOLS, 3)
    assert drift["worst"][0]["feature"] == SHIFTED
    assert drift["worst"][0]["psi"] >= Settings().quality.drift_alert_psi
    assert len(drift["worst"]) == Settings().quality.drift_top
    assert drift["major"] >= 1
    assert drift["detail"]["windows_read"] == 3 * N_SYMBOLS
    newest = drift["detail"]["newest_run"]
    assert newest["failed"] == 1
    assert newest["reasons"] == {"window_quality": 1}

    stored = latest_drift(engine, version)
    assert stored is not None
    assert stored.id == drift["id"]
    assert stored.status == OK
    assert len(stored.psi) == F
    psi = {name: float("nan") if v is None else v for name, v in stored.psi.items()}
    others = [v for name, v in psi.items() if name != SHIFTED]
    assert np.isfinite(others).all()
    assert psi[SHIFTED] > 5 * max(others)
    assert stored.newest_minute == datetime.fromtimestamp((first + 2 * MINUTE_MS) / 1000, tz=UTC)

    # A fourth minute: the next pass reads it alone and adds the three before from the stored counts.
    pipeline_minute(engine, windows, version, first + 3 * MINUTE_MS, seed=3)
    drift = quality_pass(engine, registry, windows)["drift"]
    assert (drift["samples"], drift["minutes"]) == (4 * N_SYMBOLS, 4)
    assert drift["detail"]["runs_read"] == 1
    assert drift["detail"]["windows_read"] == N_SYMBOLS
    assert drift["worst"][0]["feature"] == SHIFTED
    # Nothing new: the same four minutes, none counted twice; every pass is persisted.
    drift = quality_pass(engine, registry, windows)["drift"]
    assert (drift["samples"], drift["minutes"], drift["detail"]["runs_read"]) == (4 * N_SYMBOLS, 4, 0)
    assert stored_rows(engine) == 3


def test_the_accumulation_holds_the_last_15_pipeline_minutes(
    migrated_url: str, windows: TrackedStore, champion: tuple[Registry, str]
) -> None:
    """A replay runs minutes faster than the clock: the accumulation is by the ledger's minute."""
    engine = db.get_engine(migrated_url)
    registry, version = champion
    first = first_minute()
    for k in range(DRIFT_MINUTES + 2):
        pipeline_minute(engine, windows, version, first + k * MINUTE_MS, seed=40 + k)
    drift = quality_pass(engine, registry, windows)["drift"]
    assert drift["detail"]["windows_read"] == (DRIFT_MINUTES + 2) * N_SYMBOLS
    assert (drift["minutes"], drift["samples"]) == (DRIFT_MINUTES, DRIFT_MINUTES * N_SYMBOLS)
    newest = datetime.fromtimestamp((first + (DRIFT_MINUTES + 1) * MINUTE_MS) / 1000, tz=UTC)
    assert drift["newest_minute"] == newest.isoformat()


def test_an_unshifted_live_sample_stays_ok(
    migrated_url: str, windows: TrackedStore, champion: tuple[Registry, str]
) -> None:
    engine = db.get_engine(migrated_url)
    registry, version = champion
    first = first_minute()
    for k in range(5):
        pipeline_minute(engine, windows, version, first + k * MINUTE_MS, seed=10 + k, shift=0.0)
    drift = quality_pass(engine, registry, windows)["drift"]
    assert drift["status"] == OK
    assert drift["samples"] == 5 * N_SYMBOLS
    assert drift["major"] == 0
    assert drift["max_psi"] < 0.1  # 300 rows, 10 bins: noise about 0.03, its worst of 240 below 0.1


def test_the_newest_attempt_wins_and_expired_windows_are_counted(
    migrated_url: str, windows: TrackedStore, champion: tuple[Registry, str]
) -> None:
    engine = db.get_engine(migrated_url)
    registry, version = champion
    # The first attempt's windows were shifted, the re-dispatched second's are not: the second's
    # windows are the ones inference used. Ten symbols' windows expired before the pass.
    pipeline_minute(
        engine, windows, version, first_minute(), seed=20, attempts={1: 3.0, 2: 0.0}, without_window=10
    )
    drift = quality_pass(engine, registry, windows)["drift"]
    assert drift["status"] == OK
    assert drift["samples"] == N_SYMBOLS - 10
    assert drift["detail"]["windows_missing"] == 10
    stored = latest_drift(engine, version)
    assert stored is not None
    assert (stored.psi[SHIFTED] or 0.0) < Settings().quality.drift_alert_psi
    assert stored.psi[SHIFTED] is not None


def test_no_windows_is_reported_and_stored(migrated_url: str, champion: tuple[Registry, str]) -> None:
    engine = db.get_engine(migrated_url)
    registry, version = champion
    store = TrackedStore(MemoryWindowStore())
    drift = quality_pass(engine, registry, store)["drift"]
    assert drift["status"] == NO_WINDOWS
    assert "no minute of" in drift["reason"]
    # Windows that expired before the pass: the ledger run exists, its windows do not.
    pipeline_minute(engine, store, version, first_minute(), seed=30, without_window=N_SYMBOLS)
    drift = quality_pass(engine, registry, store)["drift"]
    assert drift["status"] == NO_WINDOWS
    assert "pipeline.feature_ttl_seconds" in drift["reason"]
    assert drift["detail"]["windows_missing"] == N_SYMBOLS
    assert stored_rows(engine) == 2


def unreachable_redis() -> redis.Redis:
    """A client of a port nobody listens on: the window store's server is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)


@pytest.mark.parametrize("failure", ["tampered_bins", "window_store_down"])
def test_a_drift_failure_never_stops_outcomes_or_the_breaker(
    migrated_url: str, champion: tuple[Registry, str], failure: str
) -> None:
    engine = db.get_engine(migrated_url)
    registry, version = champion
    # Signals whose outcomes are due (tests/unit/test_signal_outcomes.py's hand-made case).
    CandleStore(engine).write_rows(
        outcomes_case.EXCHANGE,
        pd.concat([outcomes_case.candles(s) for s in outcomes_case.EXITS], ignore_index=True),
    )
    SignalStore(engine).upsert([outcomes_case.signal(s) for s in outcomes_case.EXITS], [])
    now = outcomes_case.LATER
    store: WindowStore = MemoryWindowStore()
    if failure == "tampered_bins":
        (registry.versions_dir / version / "feature_bins.npz").write_bytes(b"tampered")
    else:
        store = RedisWindowStore(unreachable_redis())
        # A minute of the champion that finished just before the pass, whose windows it must read.
        minute = now - timedelta(minutes=2)
        ledger = RunLedger(engine)
        run = ledger.claim(minute, status=RUNNING, model_version=version, symbols_asked=1)
        assert run is not None
        SignalStore(engine).upsert([signal_row("AAA", minute, version)], [])
        with engine.begin() as conn:
            conn.execute(
                update(PipelineRun)
                .where(PipelineRun.id == run)
                .values(status=DONE, finished_at=now - timedelta(minutes=1))
            )

    summary = run_quality(
        engine,
        Settings(),
        exchange=outcomes_case.EXCHANGE,
        registry=registry,
        now=now,
        windows=PipelineWindows(store),
    )
    assert summary["drift"]["status"] == "error"
    expected = "ModelIntegrityError" if failure == "tampered_bins" else "ConnectionError"
    assert summary["drift"]["error"].startswith(expected)
    assert summary["outcomes"]["resolved"] == len(outcomes_case.EXITS) * 4
    assert summary["breaker"]["state"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(SignalOutcome)).scalar_one() == 24
    assert stored_rows(engine) == 0
