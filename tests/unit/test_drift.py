"""Feature drift (ml/drift.py, the registry's ``feature_bins.npz``, ``mlsignals model drift``): PSI by
hand, quantile bins of continuous and discrete features, the worst features, the bins' round trip
through the registry, and the command on a stored result."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from cli import drift_cmds
from core.settings import Settings, reset_settings_cache
from core.timegrid import floor_minute, iso_minute, now_ms
from data import db
from data.models import FeatureDrift, PipelineRun
from ml.drift import PSI_FLOOR, FeatureBins, psi, status, worst
from ml.features import FEATURE_SPEC
from ml.jobs import training_feature_bins
from ml.registry import ModelIntegrityError, Registry
from pipeline.ledger import DONE, RUNNING, RunLedger
from pipeline.signal_store import SignalStore
from pipeline.window_store import MemoryWindowStore
from quality.drift import NO_BINS, OK, latest_drift, run_drift
from tasks.quality import PipelineWindows
from tests.support.model_fixtures import random_model, random_scaler
from tests.support.quality import signal_row
from tests.unit.test_baselines import synthetic_dataset

NAMES = tuple(f"f{i}" for i in range(6))
F = FEATURE_SPEC.n_features


def normal_bins(seed: int = 0, rows: int = 20_000, names: tuple[str, ...] = NAMES) -> FeatureBins:
    x = np.random.default_rng(seed).normal(size=(rows, len(names))).astype(np.float32)
    return FeatureBins.fit(x, names, 10)


# -- PSI --------------------------------------------------------------------------------------------


def test_psi_by_hand() -> None:
    # Training 50/50, live 3 of 4 in the first bin: 0.25 ln 1.5 + (-0.25) ln 0.5 = 0.25 ln 3.
    assert psi([[0.5, 0.5]], [[3, 1]])[0] == pytest.approx(0.25 * math.log(3), abs=1e-12)
    # Binary feature: 70/30 in training, 50/50 live: 0.2 ln(0.7/0.3).
    assert psi([[0.7, 0.3]], [[5, 5]])[0] == pytest.approx(0.2 * math.log(0.7 / 0.3), abs=1e-12)
    # A live value in a bin training never saw: the floor keeps it finite.
    by_hand = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_FLOOR) * math.log(0.5 / PSI_FLOOR)
    assert psi([[1.0, 0.0]], [[1, 1]])[0] == pytest.approx(by_hand, abs=1e-12)
    # Bins empty on both sides (padding) add nothing; a feature without live counts has no PSI.
    values = psi([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], [[2, 2, 0], [0, 0, 0]])
    assert values[0] == pytest.approx(0.0, abs=1e-15)
    assert np.isnan(values[1])


def test_identical_distributions_give_about_zero() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(size=(20_000, len(NAMES)))
    bins = FeatureBins.fit(train, NAMES, 10)
    # Continuous features: ten bins of a tenth each, and the training rows themselves give exactly 0.
    np.testing.assert_allclose(bins.expected, 0.1, atol=1e-3)
    np.testing.assert_allclose(bins.psi(bins.counts(train)), 0.0, atol=1e-12)
    # A fresh sample of the same distribution: only sampling noise, about (bins - 1) / rows.
    fresh = bins.psi(bins.counts(rng.normal(size=(10_000, len(NAMES)))))
    assert fresh.max() < 0.005


def test_a_shifted_feature_ranks_first() -> None:
    bins = normal_bins()
    live = np.random.default_rng(2).normal(size=(750, len(NAMES)))
    live[:, 4] += 0.5  # half a standard deviation
    live[:, 1] *= 1.15  # a slightly wider feature: drift too, but less
    values = bins.psi(bins.counts(live))
    ranked = worst(values, NAMES, 3)
    assert [name for name, _ in ranked[:2]] == ["f4", "f1"]
    assert ranked[0][1] == pytest.approx(float(values[4]))
    assert status(ranked[0][1], 0.25) in {"moderate", "major"}
    assert all(status(v, 0.25) == "ok" for k, v in enumerate(values) if k not in (1, 4))
    # NaN never ranks; top is bounded.
    assert worst([np.nan, 0.3, 0.1], ["a", "b", "c"], 5) == [("b", 0.3), ("c", 0.1)]
    assert status(0.1, 0.25) == "moderate"
    assert status(0.25, 0.25) == "major"
    assert status(0.0999, 0.25) == "ok"


def test_discrete_features_keep_their_mass_points_in_one_bin() -> None:
    rng = np.random.default_rng(3)
    n = 10_000
    flag = (rng.random(n) < 0.3).astype(np.float64)  # 0 / 1, 30 % ones
    constant = np.full(n, 2.5)
    clipped = np.clip(rng.normal(size=n) * 8, -10, 10)  # about 21 % at the clip limits
    zero_mass = np.where(rng.random(n) < 0.6, 0.0, rng.exponential(size=n))
    bins = FeatureBins.fit(np.column_stack([flag, constant, clipped, zero_mass]), ("a", "b", "c", "d"), 10)
    per = bins.bins_per_feature()
    assert per[0] == 3  # edges at 0 and 1: (-inf, 0], (0, 1] and an empty (1, inf)
    assert per[1] == 2  # one edge at the constant: all of it in (-inf, 2.5]
    assert per[3] < 10
    np.testing.assert_allclose(bins.expected[0][:3], [0.7, 0.3, 0.0], atol=0.02)
    np.testing.assert_allclose(bins.expected[1][:2], [1.0, 0.0])
    assert bins.expected[3][0] == pytest.approx(0.6, abs=0.02)  # the zeros alone in the first bin
    np.testing.assert_allclose(bins.expected.sum(axis=1), 1.0)
    # The same values a float32 rounding off (live features are another code path) bin the same.
    live = np.column_stack([flag, constant, clipped, zero_mass])[:2000].astype(np.float32)
    nudged = np.nextafter(live, np.float32(np.inf))
    np.testing.assert_array_equal(bins.counts(nudged), bins.counts(live))
    assert bins.psi(bins.counts(nudged))[:2] == pytest.approx([0.0, 0.0], abs=0.01)
    # Half the flags set where training had 30 %: 0.2 ln(0.7/0.3) as by hand, up to the sample's 30 %.
    half = live.copy()
    half[:, 0] = np.arange(half.shape[0]) % 2
    expected = bins.expected[0][:2]
    by_hand = sum((0.5 - e) * math.log(0.5 / e) for e in expected)
    assert bins.psi(bins.counts(half))[0] == pytest.approx(by_hand, rel=1e-9)


def test_non_finite_values_count_nowhere() -> None:
    bins = normal_bins()
    rows = np.random.default_rng(4).normal(size=(100, len(NAMES)))
    rows[:10, 2] = np.nan
    counts = bins.counts(rows)
    assert counts[2].sum() == 90
    assert (counts.sum(axis=1)[[0, 1, 3, 4, 5]] == 100).all()


def test_arrays_round_trip_and_refuse_other_formats() -> None:
    bins = normal_bins()
    again = FeatureBins.from_arrays(bins.to_arrays())
    assert again.names == bins.names
    assert again.rows == bins.rows
    np.testing.assert_array_equal(again.edges, bins.edges)
    np.testing.assert_array_equal(again.expected, bins.expected)
    arrays = bins.to_arrays()
    with pytest.raises(ValueError, match=r"mlsignals\.feature_bins"):
        FeatureBins.from_arrays({**arrays, "format_version": np.array(9)})
    with pytest.raises(ValueError, match="do not fit"):
        FeatureBins.from_arrays({**arrays, "expected": arrays["expected"][:, :5]})
    with pytest.raises(ValueError, match=r"not mlsignals\.feature_bins"):
        FeatureBins.from_arrays({k: v for k, v in arrays.items() if k != "edges"})


def test_training_bins_are_the_training_samples_newest_rows() -> None:
    ds = synthetic_dataset(n_symbols=4, n_times=100)
    bins = training_feature_bins(ds, 10)
    assert bins is not None
    rows = ds.x[ds.row[ds.indices("train")]]
    assert bins.rows == rows.shape[0]
    np.testing.assert_array_equal(bins.edges, FeatureBins.fit(rows, FEATURE_SPEC.names, 10).edges)
    capped = training_feature_bins(ds, 5, max_rows=50)
    assert capped is not None
    assert (capped.rows, capped.n_bins) == (50, 5)


# -- the registry -----------------------------------------------------------------------------------


def spec_bins(seed: int = 0) -> FeatureBins:
    return normal_bins(seed, rows=4000, names=FEATURE_SPEC.names)


def test_bins_round_trip_through_the_registry(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    old, _ = registry.register(random_model(0), random_scaler(0), {"note": "old"}, {})
    bins = spec_bins()
    new, _ = registry.register(
        random_model(1), random_scaler(1), {"note": "new"}, {}, feature_bins=bins.to_arrays()
    )
    assert registry.feature_bins(old) is None  # a version without them keeps loading
    assert registry.load(old).version == old
    stored = registry.feature_bins(new)
    assert stored is not None
    again = FeatureBins.from_arrays(stored)
    np.testing.assert_array_equal(again.edges, bins.edges)
    np.testing.assert_array_equal(again.expected, bins.expected)
    assert registry.load(new).version == new  # verified with the rest
    # Re-signing the manifest (new metrics) keeps the file signed.
    registry.update_metrics(new, {"note": 1})
    assert registry.feature_bins(new) is not None
    # The accessor reads only its own file: broken weights do not stop it, loading refuses them.
    folder = tmp_path / "versions" / new
    (folder / "weights.pt").write_bytes(b"broken")
    assert registry.feature_bins(new) is not None
    with pytest.raises(ModelIntegrityError, match=r"weights\.pt does not match"):
        registry.load(new)
    # And its own digest is checked.
    (folder / "feature_bins.npz").write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError, match=r"feature_bins\.npz does not match"):
        registry.feature_bins(new)
    # A bins file the manifest does not list is refused by the full check.
    (tmp_path / "versions" / old / "feature_bins.npz").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError, match="unexpected files"):
        registry.load(old)


def test_the_pass_reports_a_version_without_bins(sqlite_url: str, tmp_path: Path) -> None:
    db.upgrade(sqlite_url)
    engine = db.get_engine(sqlite_url)
    registry = Registry(tmp_path)
    version, _ = registry.register(random_model(0), random_scaler(0), {}, {})
    result = run_drift(engine, Settings(), registry=registry, windows=PipelineWindows(MemoryWindowStore()))
    assert result.status == NO_BINS
    assert result.model_version == version
    assert result.reason is not None
    assert result.reason.startswith(f"no training distribution stored with model {version}")
    stored = latest_drift(engine, version)
    assert stored is not None
    assert (stored.status, stored.reason, stored.id) == (NO_BINS, result.reason, result.id)


# -- mlsignals model drift ----------------------------------------------------------------------------

runner = CliRunner(env={"COLUMNS": "200"})


def command_app() -> typer.Typer:
    """A throw-away app with the command, as cli/model_cmds.py registers it."""
    app = typer.Typer()
    app.command("drift")(drift_cmds.drift)
    app.command("other")(lambda: None)  # two commands: typer keeps the sub-command syntax
    return app


@pytest.fixture
def workspace(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, Registry]]:
    db.upgrade(sqlite_url)
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    reset_settings_cache()
    yield db.get_engine(sqlite_url), Registry(tmp_path / "models")
    reset_settings_cache()


def one_minute(engine: Any, store: MemoryWindowStore, version: str, rows: np.ndarray, shifted: int) -> None:
    """A finished ledger run of ``version`` with a signal and a window per row (pipeline keys)."""
    minute_ms = floor_minute(now_ms()) - 60_000
    minute = datetime.fromtimestamp(minute_ms / 1000, tz=UTC)
    ledger = RunLedger(engine)
    run = ledger.claim(minute, status=RUNNING, model_version=version, symbols_asked=rows.shape[0] + 1)
    assert run is not None
    symbols = [f"S{i:03d}/USDT" for i in range(rows.shape[0])]
    windows = PipelineWindows(store)
    live = rows.astype(np.float32)
    live[:, shifted] += 2.0
    store.put_many(
        {
            windows.key(iso_minute(minute_ms), run, 1, s): np.repeat(live[i][None, :], 96, axis=0)
            for i, s in enumerate(symbols)
        },
        180,
    )
    SignalStore(engine).upsert([signal_row(s, minute, version) for s in symbols], [])
    ledger.update(
        run,
        status=DONE,
        signals_made=len(symbols),
        failures={"ZZZ/USDT": "window_quality: 40 % of the window filled"},
        finished=True,
    )


def test_the_command_prints_the_newest_result(workspace: tuple[Any, Registry]) -> None:
    engine, registry = workspace
    app = command_app()
    # Before any pass: it says so.
    version, _ = registry.register(
        random_model(0), random_scaler(0), {}, {}, feature_bins=spec_bins().to_arrays()
    )
    result = runner.invoke(app, ["drift"])
    assert result.exit_code == 0, result.output
    assert f"no drift result for {version} yet" in result.output
    shifted = FEATURE_SPEC.names.index("vol_z_96")
    store = MemoryWindowStore()
    rows = np.random.default_rng(5).normal(size=(200, F))
    one_minute(engine, store, version, rows, shifted)
    assert run_drift(engine, Settings(), registry=registry, windows=PipelineWindows(store)).status == OK

    result = runner.invoke(app, ["drift", "--top", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    first = next(line for line in lines if "│ 1 │" in line or line.strip().startswith("1 "))
    assert "vol_z_96" in first
    assert "major" in first
    assert "200 live rows over 1 minute up to" in result.output
    assert "1 failed" in result.output
    assert "window_quality 1" in result.output
    assert sum("│" in line and line.split("│")[1].strip().isdigit() for line in lines) == 3

    doc = json.loads(runner.invoke(app, ["drift", version, "--json"]).output)
    assert doc["model_version"] == version
    assert doc["training_distribution"] is True
    assert doc["top"][0]["feature"] == "vol_z_96"
    assert doc["top"][0]["status"] == "major"
    assert len(doc["top"]) == Settings().quality.drift_top
    assert len(doc["result"]["psi"]) == F
    assert doc["result"]["samples"] == 200


def test_the_command_says_when_a_version_has_no_bins(workspace: tuple[Any, Registry]) -> None:
    _, registry = workspace
    version, _ = registry.register(random_model(0), random_scaler(0), {}, {})
    result = runner.invoke(command_app(), ["drift", "champion"])
    assert result.exit_code == 0, result.output
    assert f"no training distribution stored with model {version}" in result.output
    doc = json.loads(runner.invoke(command_app(), ["drift", "--json"]).output)
    assert doc["training_distribution"] is False
    # An unknown alias is a clean error, not a traceback.
    result = runner.invoke(command_app(), ["drift", "challenger"])
    assert result.exit_code == 2
    assert "no challenger" in result.output


def test_ledger_rows_of_other_versions_are_not_read(workspace: tuple[Any, Registry]) -> None:
    engine, registry = workspace
    version, _ = registry.register(
        random_model(0), random_scaler(0), {}, {}, feature_bins=spec_bins().to_arrays()
    )
    store = MemoryWindowStore()
    one_minute(engine, store, "another-version", np.zeros((5, F)), 0)
    result = run_drift(engine, Settings(), registry=registry, windows=PipelineWindows(store))
    assert result.model_version == version
    assert result.status == "no_windows"
    assert result.reason is not None
    assert "no minute of" in result.reason
    with engine.connect() as conn:
        assert conn.execute(select(PipelineRun.model_version)).scalars().all() == ["another-version"]


def test_training_stores_the_bins_of_its_scaled_rows(tmp_path: Path) -> None:
    from ml.bootstrap import ensure_champion
    from tests.unit.test_training import TINY

    settings = Settings(data_dir=tmp_path, model={"registry_dir": tmp_path / "models", "device": "cpu"})
    result = ensure_champion(settings, recipe=TINY)
    registry = Registry(settings.model.registry_dir)
    arrays = registry.feature_bins(result.version)
    assert arrays is not None
    bins = FeatureBins.from_arrays(arrays)
    assert bins.names == FEATURE_SPEC.names
    assert bins.n_bins == settings.quality.drift_bins
    loaded = registry.load(result.version)
    assert bins.rows == loaded.training["samples"]["samples"]["train"]
    # In the scaler's space: the training median sits near 0 (the scaler's centre), not at raw values.
    median_edge = bins.edges[:, bins.n_bins // 2 - 1]
    finite = np.isfinite(median_edge)
    assert np.median(np.abs(median_edge[finite])) < 0.5


def test_counts_leave_the_accumulation_and_old_rows_are_deleted(workspace: tuple[Any, Registry]) -> None:
    engine, registry = workspace
    version, _ = registry.register(
        random_model(0), random_scaler(0), {}, {}, feature_bins=spec_bins().to_arrays()
    )
    store = MemoryWindowStore()
    one_minute(engine, store, version, np.random.default_rng(6).normal(size=(30, F)), 0)
    settings, windows = Settings(), PipelineWindows(store)
    now = datetime.now(UTC)
    first = run_drift(engine, settings, registry=registry, windows=windows, now=now)
    assert (first.status, first.samples) == (OK, 30)

    def counts() -> list[bool]:
        """Per stored row: whether its counts are SQL non-NULL (what the accumulation selects)."""
        with engine.connect() as conn:
            ids = conn.execute(select(FeatureDrift.id).order_by(FeatureDrift.id)).scalars().all()
            accumulated = select(FeatureDrift.id).where(FeatureDrift.counts.is_not(None))
            kept = set(conn.execute(accumulated).scalars())
            return [i in kept for i in ids]

    assert counts() == [True]
    # 20 minutes later: the minute left the accumulation, its counts are cleared (SQL NULL).
    later = run_drift(engine, settings, registry=registry, windows=windows, now=now + timedelta(minutes=20))
    assert later.status == "no_windows"
    assert counts() == [False, False]
    # After quality.window_days, the old rows go.
    run_drift(engine, settings, registry=registry, windows=windows, now=now + timedelta(days=8))
    assert counts() == [False]
