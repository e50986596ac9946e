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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sqlalchemy import func, select

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.models import SignalOutcome
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.model.config import ModelConfig
from pipeline.signal_store import SignalStore
from quality.outcomes import HORIZONS, OutcomeScorer
from quality.rolling import load_outcomes, window_figures

pytestmark = pytest.mark.integration

N_SYMBOLS = 20
N_MINUTES = 60
BAR_MINUTES = 15
LABELS = {1: "15m", 4: "1h", 16: "4h", 48: "12h"}
VERSION = "quality-test"


@dataclass
class Ledger:
    settings: Settings
    engine: Any
    exchange: str
    symbols: list[str]
    first_ms: int
    closes: dict[str, pd.Series]  # symbol -> close by open time (ms)
    predicted: dict[tuple[int, str], dict[int, float]]  # (minute ms, symbol) -> horizon -> return


def bar_end_of(minute_ms: int) -> int:
    bar = BAR_MINUTES * MINUTE_MS
    return minute_ms // bar * bar


def true_return(closes: pd.Series, bar_end: int, h: int) -> float:
    entry = closes[bar_end - MINUTE_MS]
    return float(closes[bar_end + h * BAR_MINUTES * MINUTE_MS - MINUTE_MS] / entry - 1.0)


@pytest.fixture
def ledger(tmp_path: Path, migrated_url: str) -> Ledger:
    settings = Settings(data_dir=tmp_path, database_url=migrated_url, data={"universe_size": N_SYMBOLS})
    engine = db.get_engine(migrated_url)
    source = make_source(settings)
    symbols = resolve_symbols(settings, source)
    end = floor_minute(now_ms()) - 30 * MINUTE_MS
    assert Ingestor(CandleStore(engine), source, ValidationPolicy()).backfill(symbols, 1.0, end_ms=end).ok
    first = end - (48 * BAR_MINUTES + N_MINUTES + 5) * MINUTE_MS  # every horizon of every minute stored
    store = CandleStore(engine)
    start = first - BAR_MINUTES * MINUTE_MS
    frames = {s: store.read_candles(source.name, s, start, end) for s in symbols}
    closes = {s: frame.set_index("open_time")["close"] for s, frame in frames.items()}
    rng = np.random.default_rng(11)
    signals, predicted = [], {}
    for i in range(N_MINUTES):
        minute = first + i * MINUTE_MS
        bar_end = bar_end_of(minute)
        for s in symbols:
            # A model with some skill: the true 1 h return plus noise, per horizon its own.
            pred = {h: true_return(closes[s], bar_end, h) * 0.5 + rng.normal(0, 0.004) for h in HORIZONS}
            predicted[(minute, s)] = pred
            primary = pred[4]
            direction = "LONG" if primary > 0.003 else "SHORT" if primary < -0.003 else "NEUTRAL"
            p_long = float(np.clip(0.34 + primary * 20, 0.05, 0.9))
            probs = {"long": p_long, "short": (1 - p_long) * 0.5, "flat": (1 - p_long) * 0.5}
            signals.append(
                {
                    "symbol": s,
                    "minute": datetime.fromtimestamp(minute / 1000, UTC),
                    "model_version": VERSION,
                    "bar_end": datetime.fromtimestamp(bar_end / 1000, UTC),
                    "direction": direction,
                    "confidence": p_long,
                    "probabilities": {LABELS[h]: probs for h in HORIZONS},
                    "returns": {LABELS[h]: pred[h] for h in HORIZONS},
                    "risk": {},
                    "entry_price": float(closes[s][bar_end - MINUTE_MS]),
                    "stop_loss": None,
                    "take_profit": None,
                    "expires_at": datetime.fromtimestamp(minute / 1000, UTC) + timedelta(minutes=15),
                    "schema_version": 1,
                }
            )
    SignalStore(engine).upsert(signals, [])
    return Ledger(settings, engine, source.name, symbols, first, closes, predicted)


def independent(ledger: Ledger, h: int) -> tuple[float, float]:
    """(mean per-minute Spearman IC, hit rate of the actionable signals) without the package."""
    ics, hits = [], []
    for i in range(N_MINUTES):
        minute = ledger.first_ms + i * MINUTE_MS
        bar_end = bar_end_of(minute)
        raw = np.array([true_return(ledger.closes[s], bar_end, h) for s in ledger.symbols])
        neutral = raw - raw.mean()
        pred = np.array([ledger.predicted[(minute, s)][h] for s in ledger.symbols])
        ics.append(spearmanr(pred, neutral).statistic)
        for k, s in enumerate(ledger.symbols):
            primary = ledger.predicted[(minute, s)][4]
            if abs(primary) > 0.003:
                hits.append(np.sign(primary) * neutral[k] > 0)
    return float(np.mean(ics)), float(np.mean(hits))


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
