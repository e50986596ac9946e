"""Outcome scoring and the rolling quality report on PostgreSQL (docs/SIGNAL_QUALITY.md).

    python -m benchmarks.bench_quality [--symbols 500] [--minutes 30]

Backfills ``--symbols`` simulated symbols for the 12-hour horizon plus the minutes scored into a
scratch PostgreSQL schema, stores one signal per symbol for each of ``--minutes`` minutes (random
predictions: scoring does not depend on them), then times what the beat task does each minute in
steady state: score one minute at each of the four horizons (1, 4, 16, 48 bars), i.e.
500 symbols x 4 horizons, one transaction per horizon (budget: 200 ms). Then the breaker's pass
(its window: the newest ``breaker.window_signals`` actionable outcomes, widened to the last
``breaker.min_periods`` periods of its horizon, which --minutes 181 spans at 1 h; the IC of
the newest minute of each bar) with floors it cannot trip on, so that every sample reads the whole
window, and the report of one horizon over the last ``quality.window_signals`` signals. Prints each
figure with its sample count.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

import numpy as np

from benchmarks.common import analyze, scratch_postgres, summary
from core.logging import configure_logging
from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.model.config import ModelConfig
from pipeline.signal_store import SignalStore
from quality.breaker import evaluate
from quality.outcomes import HORIZONS, OutcomeScorer
from quality.report import quality_report

BAR_MINUTES = 15
LABELS = {1: "15m", 4: "1h", 16: "4h", 48: "12h"}


def signals_for(minute_ms: int, names: list[str], rng: np.random.Generator) -> list[dict[str, object]]:
    minute = datetime.fromtimestamp(minute_ms / 1000, UTC)
    bar_end = datetime.fromtimestamp(
        minute_ms // (BAR_MINUTES * MINUTE_MS) * BAR_MINUTES * MINUTE_MS / 1000, UTC
    )
    out = []
    for name in names:
        pred = rng.normal(0.0, 0.003, size=len(HORIZONS))
        p_long = float(np.clip(0.34 + pred[1] * 30, 0.05, 0.9))
        probs = {"long": p_long, "short": (1 - p_long) / 2, "flat": (1 - p_long) / 2}
        out.append(
            {
                "symbol": name,
                "minute": minute,
                "model_version": "bench",
                "bar_end": bar_end,
                "direction": "LONG" if pred[1] > 0.004 else "SHORT" if pred[1] < -0.004 else "NEUTRAL",
                "confidence": p_long,
                "probabilities": {LABELS[h]: probs for h in HORIZONS},
                "returns": {LABELS[h]: float(p) for h, p in zip(HORIZONS, pred, strict=True)},
                "risk": {},
                "entry_price": 100.0,  # the scorer reads the exit; the entry is the signal's own
                "stop_loss": None,
                "take_profit": None,
                "expires_at": minute + timedelta(minutes=15),
                "schema_version": 1,
            }
        )
    return out


def vacuum(url: str, table: str) -> None:
    from sqlalchemy import create_engine, text

    with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f"VACUUM (ANALYZE) {table}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=30, help="minutes scored (samples)")
    args = parser.parse_args()
    configure_logging("WARNING")
    market = SimulatedMarket(seed=7, universe_size=args.symbols)
    names = market.list_symbols()[: args.symbols]
    end = floor_minute(now_ms())
    first = end - (48 * BAR_MINUTES + args.minutes + 10) * MINUTE_MS
    rng = np.random.default_rng(3)
    settings = Settings()
    with scratch_postgres() as url:
        engine = db.get_engine(url)
        days = (end - first + 30 * MINUTE_MS) / 86_400_000
        began = time.perf_counter()
        report = Ingestor(CandleStore(engine), market, ValidationPolicy()).backfill(names, days, end_ms=end)
        print(
            f"loaded {report.inserted:,} candles of {len(names)} symbols "
            f"in {time.perf_counter() - began:.1f} s"
        )
        store = SignalStore(engine)
        minutes = [first + i * MINUTE_MS for i in range(args.minutes)]
        for m in minutes:
            store.upsert(signals_for(m, names, rng), [])
        vacuum(url, "raw_market_data")
        analyze(url, "signals")
        scorer = OutcomeScorer(
            engine, settings, exchange=market.name, configs=lambda _v: ModelConfig(direction_labels="tercile")
        )
        now = datetime.fromtimestamp(end / 1000, UTC)
        per_minute: list[float] = []
        per_horizon: dict[int, list[float]] = {h: [] for h in HORIZONS}
        for m in minutes:
            minute = datetime.fromtimestamp(m / 1000, UTC)
            total = 0.0
            for h in HORIZONS:
                t0 = time.perf_counter()
                written = scorer.score_minute(minute, h, now)
                elapsed = time.perf_counter() - t0
                assert written == (len(names), 0), written
                per_horizon[h].append(elapsed)
                total += elapsed
            per_minute.append(total)
        print(
            f"score one minute of {len(names)} symbols x {len(HORIZONS)} horizons (budget 200 ms): "
            f"{summary(per_minute)}"
        )
        for h, samples in per_horizon.items():
            print(f"  horizon {LABELS[h]:>3} ({h * BAR_MINUTES} candles per symbol): {summary(samples)}")

        analyze(url, "signal_outcomes")
        # Floors it cannot trip on: a trip would halt trading, and every later pass would stop there.
        judge = settings.model_copy(deep=True)
        judge.quality.breaker.hit_rate_floor, judge.quality.breaker.ic_floor = 0.0, -1.0
        breaker = []
        for _ in range(5):
            t0 = time.perf_counter()
            verdict = evaluate(engine, judge, "bench")
            breaker.append(time.perf_counter() - t0)
        f = verdict.figures
        print(
            f"breaker pass ({verdict.state}): {f['actionable']:,} actionable outcomes over {f['periods']} "
            f"periods of {f['horizon']} (window {judge.quality.breaker.window_signals}, widened to "
            f"{judge.quality.breaker.min_periods} periods) and the IC of {f.get('ic_minutes')} minutes, "
            f"one per bar: {summary(breaker)}"
        )
        rolling = []
        for _ in range(3):
            t0 = time.perf_counter()
            quality_report(engine, settings, "bench", horizons=(4,), now=now)
            rolling.append(time.perf_counter() - t0)
        print(
            f"rolling report of one horizon over the last {settings.quality.window_signals:,} signals "
            f"({args.minutes * len(names):,} stored) and {settings.quality.window_days:g} days: "
            f"{summary(rolling)}"
        )


if __name__ == "__main__":
    main()
