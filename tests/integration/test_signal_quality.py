"""The outcomes ledger on the simulator's candles, on SQLite and PostgreSQL: its IC and hit rate
against an independent computation (pandas and ``scipy.stats.spearmanr`` over the same signals), and
a scoring process killed mid-run (SIGKILL) that a re-run completes without a duplicate or a partial
minute."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from data.models import SignalOutcome
from ml.model.config import ModelConfig
from quality.outcomes import HORIZONS, OutcomeScorer
from quality.rolling import load_outcomes, window_figures
from tests.support.quality import (
    BAR_MINUTES,
    N_MINUTES,
    N_SYMBOLS,
    VERSION,
    Ledger,
    build_ledger,
    independent,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(tmp_path: Path, migrated_url: str) -> Ledger:
    return build_ledger(tmp_path, migrated_url)


def test_the_ledgers_ic_and_hit_rate_match_an_independent_computation(ledger: Ledger) -> None:
    scorer = OutcomeScorer(
        ledger.engine,
        ledger.settings,
        exchange=ledger.exchange,
        configs=lambda _v: ModelConfig(direction_labels="tercile"),
    )
    report = scorer.score_due()
    assert report.unresolved == 0
    assert report.resolved == N_MINUTES * N_SYMBOLS * len(HORIZONS)
    for h in HORIZONS:
        figures = window_figures(load_outcomes(ledger.engine, VERSION, h), h, BAR_MINUTES)
        ic, hit_rate = independent(ledger, h)
        assert figures["minutes"] == N_MINUTES
        assert figures["ic"]["mean"] == pytest.approx(ic, abs=1e-9)
        assert figures["hit_rate"] == pytest.approx(hit_rate, abs=1e-9)
        assert figures["ic"]["mean"] > 0.2  # the synthetic model's skill is there to be found


def counts(engine: Any) -> tuple[int, int, list[int]]:
    """(rows, distinct (signal, horizon) keys, rows per (minute, horizon) group)."""
    o = SignalOutcome
    with engine.connect() as conn:
        rows = int(conn.execute(select(func.count()).select_from(o)).scalar() or 0)
        keys = int(
            conn.execute(
                select(func.count()).select_from(select(o.signal_id, o.horizon_bars).distinct().subquery())
            ).scalar()
            or 0
        )
        per_group = select(func.count()).select_from(o).group_by(o.minute, o.horizon_bars)
        groups = [int(n) for n in conn.execute(per_group).scalars()]
    return rows, keys, groups


@pytest.fixture
def cli_env(ledger: Ledger, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env |= {
        "MLSIG_DATABASE_URL": str(ledger.settings.database_url),
        "MLSIG_DATA_DIR": str(tmp_path),
        "MLSIG_DATA__UNIVERSE_SIZE": str(N_SYMBOLS),
        "MLSIG_MODEL__REGISTRY_DIR": str(tmp_path / "models"),
    }
    return env


def test_a_scoring_process_killed_mid_run_loses_and_duplicates_nothing(
    ledger: Ledger, cli_env: dict[str, str]
) -> None:
    total = N_MINUTES * N_SYMBOLS * len(HORIZONS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "signals", "score"],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while counts(ledger.engine)[0] == 0:  # polled: the first committed minute is the event
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rows, keys, groups = counts(ledger.engine)
    assert 0 < rows < total  # killed mid-run ...
    assert rows == keys
    assert set(groups) == {N_SYMBOLS}  # ... between minutes: every written minute is whole

    rerun = subprocess.run(
        [sys.executable, "-m", "cli.main", "signals", "score", "--json"],
        env=cli_env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stderr.decode()
    rows, keys, groups = counts(ledger.engine)
    assert rows == keys == total
    assert set(groups) == {N_SYMBOLS}
    for h in HORIZONS:
        figures = window_figures(load_outcomes(ledger.engine, VERSION, h), h, BAR_MINUTES)
        assert figures["ic"]["mean"] == pytest.approx(independent(ledger, h)[0], abs=1e-9)
