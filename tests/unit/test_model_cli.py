"""``mlsignals model …`` as a user meets it: tables, alias moves, clear errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.settings import Settings, reset_settings_cache
from ml.bootstrap import ensure_champion
from ml.registry import Registry
from tests.support.model_fixtures import make_registry
from tests.unit.test_training import TINY

runner = CliRunner(env={"COLUMNS": "200"})


def _use(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.setenv("MLSIG_DATA_DIR", str(root))
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(root / "models"))
    monkeypatch.setenv("MLSIG_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    reset_settings_cache()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    ensure_champion(Settings(data_dir=root, model={"registry_dir": root / "models"}), recipe=TINY)
    return root


@pytest.fixture
def three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    _use(monkeypatch, tmp_path)
    return make_registry(tmp_path / "models", 3)[1]


def test_list_show_promote_rollback(three: list[str]) -> None:
    a, b, c = three
    listing = runner.invoke(app, ["model", "list"])
    assert listing.exit_code == 0, listing.output
    assert all(v in listing.output for v in three)
    assert "champion" in listing.output
    assert "challenger" in listing.output

    shown = runner.invoke(app, ["model", "show", "challenger"])
    assert shown.exit_code == 0, shown.output
    assert c in shown.output
    assert "no held-out evaluation stored" in shown.output

    promoted = runner.invoke(app, ["model", "promote", b])
    assert promoted.exit_code == 0, promoted.output
    assert f"champion is now {b}" in promoted.output
    back = runner.invoke(app, ["model", "rollback"])
    assert back.exit_code == 0, back.output
    assert f"champion rolled back to {a}" in back.output
    again = runner.invoke(app, ["model", "rollback"])
    assert again.exit_code == 2
    assert "no previous champion to roll back to" in again.output
    assert "Traceback" not in again.output


def test_errors_are_one_clear_line(three: list[str], tmp_path: Path) -> None:
    missing = runner.invoke(app, ["model", "show", "20990101T000000Z-deadbeef"])
    assert missing.exit_code == 2
    assert "unknown model version" in missing.output
    (tmp_path / "models" / "versions" / three[0] / "weights.pt").write_bytes(b"not a model")
    tampered = runner.invoke(app, ["model", "show", "champion"])
    assert tampered.exit_code == 2
    assert "weights.pt does not match its manifest digest" in tampered.output
    assert "Traceback" not in tampered.output


def test_empty_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, tmp_path)
    listing = runner.invoke(app, ["model", "list"])
    assert listing.exit_code == 0
    assert "no model versions" in listing.output
    show = runner.invoke(app, ["model", "show", "champion"])
    assert show.exit_code == 2
    assert "no champion" in show.output


def test_evaluate_prints_and_stores_metrics(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, trained)
    result = runner.invoke(app, ["model", "evaluate", "champion", "--device", "cpu", "--holdout-days", "1"])
    assert result.exit_code == 0, result.output
    assert "IC per time" in result.output
    assert "confusion, 4 bars" in result.output
    assert "actionable" in result.output
    registry = Registry(trained / "models")
    version = registry.resolve("champion")
    stored = json.loads((registry.versions_dir / version / "metrics.json").read_text())
    assert stored["test"]["horizons"][0]["horizon_bars"] == 1
    shown = runner.invoke(app, ["model", "show", version])
    assert shown.exit_code == 0
    assert "held-out" in shown.output
    boot = runner.invoke(app, ["model", "bootstrap"])
    assert boot.exit_code == 0
    assert f"champion already present: {version}" in boot.output


def test_train_on_too_short_a_history_fails_cleanly(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, trained)
    result = runner.invoke(app, ["model", "train", "--days", "12", "--epochs", "1", "--symbols", "6"])
    assert result.exit_code == 2
    assert "history too short" in result.output
    assert "Traceback" not in result.output
