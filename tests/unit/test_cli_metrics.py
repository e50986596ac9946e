"""``mlsignals metrics serve | show``: the exporter as users start it."""

from __future__ import annotations

import os
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from data import db
from pipeline.ledger import DONE, RUNNING, RunLedger
from tests.support.exporter import serving_exporter

MINUTE = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


@pytest.fixture
def ledger_db(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    db.upgrade(sqlite_url)
    ledger = RunLedger(db.get_engine(sqlite_url))
    run = ledger.claim(MINUTE, status=RUNNING, model_version="v1", symbols_asked=3)
    assert run is not None
    ledger.update(run, status=DONE, signals_made=3, timings={"minute_total": 1.2}, finished=True)
    monkeypatch.setenv("MLSIG_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MLSIG_MODEL__REGISTRY_DIR", str(tmp_path / "models"))
    return sqlite_url


@pytest.mark.usefixtures("ledger_db")
def test_show_prints_the_ledger_in_prometheus_text_format() -> None:
    result = CliRunner().invoke(app, ["metrics", "show", "--embedded"])
    assert result.exit_code == 0, result.output
    assert 'mlsignals_minutes_total{status="done"} 1.0' in result.output
    assert "mlsignals_minute_duration_seconds_count 1.0" in result.output
    assert "mlsignals_alert_threshold_ratio 0.8" in result.output
    # Embedded: no broker, workers or stream to report, so no such series at all.
    assert "mlsignals_workers_up" not in result.output


@pytest.mark.usefixtures("ledger_db")
def test_disabled_metrics_refuse_to_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLSIG_ML_INTEGRATION__MONITORING__METRICS_ENABLED", "false")
    result = CliRunner().invoke(app, ["metrics", "serve", "--port", "0"])
    assert result.exit_code == 2
    assert "metrics are disabled" in result.output


def test_serve_answers_scrapes_and_stops_on_sigterm(ledger_db: str) -> None:
    env = {**os.environ, "MLSIG_DATABASE_URL": ledger_db}
    with (
        serving_exporter(env, "--embedded") as address,
        urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp,
    ):
        body = resp.read().decode()
        assert resp.status == 200
    assert 'mlsignals_minutes_total{status="done"} 1.0' in body
    assert 'mlsignals_exporter_collector_up{collector="ledger"} 1.0' in body
