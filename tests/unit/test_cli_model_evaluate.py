"""``mlsignals model evaluate V --holdout-days N --json PATH --plot DIR`` on a small registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.settings import reset_settings_cache
from tests.unit.test_evaluation_jobs import Workspace, build_workspace

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("cli-evaluate"))


@pytest.fixture
def use(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("MLSIG_DATA_DIR", str(ws.root))
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(ws.root / "models"))
    monkeypatch.setenv("MLSIG_MODEL__DEVICE", "cpu")
    monkeypatch.setenv("MLSIG_LOG_LEVEL", "WARNING")
    reset_settings_cache()
    return ws


def _no_nan(token: str) -> None:
    raise AssertionError(f"{token} in the JSON output")


def test_evaluate_writes_json_and_charts(use: Workspace, tmp_path: Path) -> None:
    out, charts = tmp_path / "out" / "eval.json", tmp_path / "charts"
    result = runner.invoke(
        app,
        [
            "model",
            "evaluate",
            "champion",
            "--device",
            "cpu",
            "--holdout-days",
            "1.5",
            "--json",
            str(out),
            "--plot",
            str(charts),
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert "test split (held-out)" in text
    assert "held-out 1.5 days before the training data" in text
    assert "IC per time against the baselines" in text
    assert "calibration (top label)" in text
    assert "signals per direction" in text
    assert "backtest every 4 bars" in text
    assert "headline at the primary horizon (4 bars)" in text
    doc = json.loads(out.read_text(), parse_constant=_no_nan)
    assert doc["version"] == use.version
    assert set(doc) >= {"test", "holdout", "summary", "baselines", "decoding", "evaluated_at_ms"}
    assert doc["holdout"]["available"] is True
    assert doc["summary"]["primary_horizon_bars"] == 4
    assert set(doc["summary"]) >= {"test", "holdout"}
    assert doc["test"]["series"]["backtest"]["time_ms"]
    assert len(doc["holdout"]["series"]["ic"]) == 4
    names = sorted(p.name for p in charts.iterdir())
    assert names == sorted(
        f"{period}_{kind}.png" for period in ("test", "holdout") for kind in ("reliability", "equity", "ic")
    )
    assert all((charts / n).stat().st_size > 1000 for n in names)


def test_evaluate_without_a_held_out_period_and_show_afterwards(use: Workspace) -> None:
    result = runner.invoke(app, ["model", "evaluate", "champion", "--device", "cpu", "--holdout-days", "0"])
    assert result.exit_code == 0, result.output
    assert "not evaluated" in result.output
    assert "the test split stands alone" in result.output
    shown = runner.invoke(app, ["model", "show", use.version])
    assert shown.exit_code == 0, shown.output
    assert "IC per time against the baselines" in shown.output
    assert "Traceback" not in shown.output


def test_metrics_of_older_versions_still_print(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.model_cmds import print_metrics

    horizon = {
        "horizon_bars": 1,
        "samples": 10,
        "accuracy": 0.5,
        "majority_class": "FLAT",
        "majority_accuracy": 0.4,
        "beats_majority": True,
        "confusion": [[1, 0, 0], [0, 1, 0], [0, 0, 8]],
        "ic_per_time": 0.01,
        "ic_pooled": None,
    }
    legacy = {
        "test": {
            "samples": 10,
            "symbols": 2,
            "first_anchor_ms": 1_704_067_200_000,
            "last_anchor_ms": 1_704_067_200_000,
            "temperature": 1.2,
            "horizons": [horizon],
            "signals": {
                "primary_horizon_bars": 4,
                "confidence_threshold": 0.4,
                "actionable": 0,
                "long": 0,
                "short": 0,
                "hit_rate": None,
                "mean_signed_return": None,
            },
        }
    }
    print_metrics(legacy, "old")
    out = capsys.readouterr().out
    assert "old: test split (held-out)" in out
    assert "confusion, 1 bars" in out
    assert "0 actionable" in out
    assert "IC per time against the baselines" not in out
