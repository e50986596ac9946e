"""``mlsignals signals quality`` and ``mlsignals signals score`` on a database with hand-made
outcomes: the table, the JSON figures, the charts, the horizon filter and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.settings import reset_settings_cache
from data import db
from tests.unit.test_quality_breaker_rules import BASE, add_minutes

runner = CliRunner(env={"COLUMNS": "220"})


@pytest.fixture
def quality_db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    db.upgrade(sqlite_url)
    add_minutes(db.get_engine(sqlite_url), "v-good", 0, 30, skill=1.0, made=BASE)
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    reset_settings_cache()
    return sqlite_url


@pytest.mark.usefixtures("quality_db")
def test_quality_prints_the_figures_of_a_version(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["signals", "quality", "--model", "v-good", "--horizon", "15m", "--plot", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "live signal quality of v-good" in result.output
    assert "+1.0000" in result.output  # the IC of predictions that rank exactly like the outcomes
    assert "30 / 1.000 / +100.0" in result.output  # LONG: 30 signals, all right, +1 % net each
    assert (tmp_path / "quality_reliability.png").stat().st_size > 0
    assert (tmp_path / "quality_ic.png").stat().st_size > 0


@pytest.mark.usefixtures("quality_db")
def test_quality_json_has_every_window_and_horizon() -> None:
    result = runner.invoke(
        app, ["signals", "quality", "--model", "v-good", "--since", "2026-12-01T12:10:00Z", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert [h["horizon"] for h in doc["horizons"]] == ["15m", "1h", "4h", "12h"]
    fifteen = doc["horizons"][0]["since"]
    assert fifteen["minutes"] == 20  # 12:10 .. 12:29
    assert fifteen["signals"] == 120
    short = fifteen["directions"]["SHORT"]
    assert (short["signals"], short["hit_rate"], short["mean_net_return_raw"]) == (20, 1.0, None)
    assert short["mean_net_return"] == pytest.approx(0.01)
    assert "series" not in fifteen["ic"]
    assert doc["horizons"][1]["since"]["signals"] == 0  # nothing scored at 1 h
    assert doc["trading"] == {"halted": False, "reason": None}


@pytest.mark.usefixtures("quality_db")
def test_an_unknown_horizon_or_alias_is_a_clear_error() -> None:
    bad = runner.invoke(app, ["signals", "quality", "--horizon", "2h"])
    assert bad.exit_code == 2
    assert "unknown horizon '2h'" in bad.output
    none = runner.invoke(app, ["signals", "quality"])  # no registry, so no champion
    assert none.exit_code == 2
    assert "champion" in none.output


@pytest.mark.usefixtures("quality_db")
def test_score_runs_one_pass_and_reports_it() -> None:
    result = runner.invoke(app, ["signals", "score", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["outcomes"]["minutes"] == 0  # no signals in the table: nothing due
    assert summary["breaker"]["state"] == "no_champion"
