"""A store of simulated candles with synthetic signals whose outcomes are known: the outcomes
ledger's tests compare its figures with an independent computation over the same rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.sources.factory import make_source, resolve_symbols
from data.store import CandleStore
from data.validation import ValidationPolicy
from pipeline.signal_store import SignalStore
from quality.outcomes import HORIZONS

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


def build_ledger(tmp_path: Path, migrated_url: str) -> Ledger:
    """``N_SYMBOLS`` simulated symbols, a day of candles ending 30 minutes ago, and ``N_MINUTES``
    minutes of signals (one per symbol) old enough for every horizon to have its candles."""
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


def signal_row(symbol: str, minute: datetime, version: str) -> dict[str, Any]:
    """A stored NEUTRAL signal with no model figures: what a drift or ledger test needs of a minute."""
    return {
        "symbol": symbol,
        "minute": minute,
        "model_version": version,
        "bar_end": minute,
        "direction": "NEUTRAL",
        "confidence": 0.4,
        "probabilities": {},
        "returns": {},
        "risk": {},
        "entry_price": 100.0,
        "stop_loss": None,
        "take_profit": None,
        "expires_at": minute + timedelta(minutes=15),
        "schema_version": 1,
    }
