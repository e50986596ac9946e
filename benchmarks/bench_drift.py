"""Feature drift benchmark: the drift pass over one minute of 500 symbols' windows.

Run: ``.venv/bin/python -m benchmarks.bench_drift [--symbols 500] [--passes 30]``.

A champion with feature bins (240 features x ``quality.drift_bins``, fitted on 100,000 standard
normal rows, as training fits them) is registered in a temporary registry; each minute writes what
the pipeline leaves behind: a finished ledger run, a signal per symbol and each symbol's scaled
[96, 240] float32 window under the attempt's key. The script prints:

* the computation alone: ``--symbols`` newest rows binned and the PSI of 240 features (ml/drift.py);
* reading those newest rows from Redis: ``GETRANGE`` of one row per window (what the pass does,
  ``tasks.quality.PipelineWindows``), and ``MGET`` of the whole windows for comparison;
* the whole pass (``quality.drift.run_drift``, as ``tasks.quality.score`` runs it after the outcomes)
  on a scratch PostgreSQL schema with the windows in Redis, and on SQLite with the in-memory store
  of the embedded run: each pass after one more finished minute, with the 14 minutes before it
  already in the accumulation (``DRIFT_MINUTES`` = 15): it reads one run's windows, sums 15 minutes
  of counts, and writes its row.

Budget (issue 15): drift over 500 windows <= 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis
import torch
from sqlalchemy import Engine

from benchmarks.common import add_redis_option, claim_redis, scratch_postgres, summary, timed
from core.logging import configure_logging
from core.settings import Settings
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from ml.drift import FeatureBins
from ml.features import FEATURE_SPEC
from ml.model.config import ModelConfig
from ml.model.network import build_model
from ml.registry import Registry
from pipeline.ledger import DONE, RUNNING, RunLedger
from pipeline.signal_store import SignalStore
from pipeline.window_store import MemoryWindowStore, RedisWindowStore, WindowStore
from quality.drift import DRIFT_MINUTES, OK, run_drift
from tasks.quality import PipelineWindows
from tests.support.models import identity_scaler
from tests.support.quality import signal_row

BUDGET_S = 0.100
F = FEATURE_SPEC.n_features
SHAPE = (FEATURE_SPEC.context, F)
TRAINING_ROWS = 100_000


def champion(root: Path, bins: int) -> tuple[Registry, FeatureBins, float]:
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    fitted = FeatureBins.fit(rng.normal(size=(TRAINING_ROWS, F)).astype(np.float32), FEATURE_SPEC.names, bins)
    fit_s = time.perf_counter() - began
    registry = Registry(root)
    torch.manual_seed(0)
    registry.register(
        build_model(ModelConfig()), identity_scaler(), {"note": "bench"}, {}, feature_bins=fitted.to_arrays()
    )
    return registry, fitted, fit_s


class Minutes:
    """Writes finished pipeline minutes of ``symbols`` windows into one database and window store."""

    def __init__(self, engine: Engine, store: WindowStore, version: str, symbols: int, ttl: int) -> None:
        self.engine, self.store, self.version, self.ttl = engine, store, version, ttl
        self.symbols = [f"SYM{i:04d}/USDT:USDT" for i in range(symbols)]
        self.rng = np.random.default_rng(1)
        self.windows = self.rng.normal(size=(symbols, *SHAPE)).astype(np.float32)
        self.minute_ms = floor_minute(now_ms()) - 10 * 1440 * MINUTE_MS
        self.keys = PipelineWindows(store)
        self.last_keys: list[str] = []

    def add(self) -> None:
        self.minute_ms += MINUTE_MS
        minute = datetime.fromtimestamp(self.minute_ms / 1000, tz=UTC)
        ledger = RunLedger(self.engine)
        asked = len(self.symbols)
        run = ledger.claim(minute, status=RUNNING, model_version=self.version, symbols_asked=asked)
        assert run is not None
        self.windows[:, -1, :] = self.rng.normal(size=(len(self.symbols), F))
        self.windows[:, -1, 7] += 0.5  # one drifting feature
        self.last_keys = [self.keys.key(iso_minute(self.minute_ms), run, 1, s) for s in self.symbols]
        self.store.put_many(dict(zip(self.last_keys, self.windows, strict=True)), self.ttl)
        SignalStore(self.engine).upsert([signal_row(s, minute, self.version) for s in self.symbols], [])
        ledger.update(run, status=DONE, signals_made=len(self.symbols), finished=True)


def passes(
    settings: Settings, registry: Registry, minutes: Minutes, count: int
) -> tuple[list[float], dict[str, object]]:
    """``DRIFT_MINUTES - 1`` minutes and passes to fill the accumulation, then ``count`` timed passes,
    each after one more minute."""
    windows = PipelineWindows(minutes.store)
    for _ in range(DRIFT_MINUTES - 1):
        minutes.add()
        run_drift(minutes.engine, settings, registry=registry, windows=windows)
    samples = []
    last: dict[str, object] = {}
    for _ in range(count):
        minutes.add()
        began = time.perf_counter()
        result = run_drift(minutes.engine, settings, registry=registry, windows=windows)
        samples.append(time.perf_counter() - began)
        assert result.status == OK, result.reason
        last = {"samples": result.samples, "minutes": result.minutes, "worst": result.worst[0]["feature"]}
    return samples, last


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--passes", type=int, default=30, help="timed passes, one more minute each")
    parser.add_argument("--repeat", type=int, default=200, help="repeats of the computation alone")
    add_redis_option(parser)
    args = parser.parse_args()
    configure_logging("WARNING")
    settings = Settings()
    n = args.symbols
    with tempfile.TemporaryDirectory() as tmp, claim_redis(args.redis_url):
        registry, bins, fit_s = champion(Path(tmp) / "models", settings.quality.drift_bins)
        version = str(registry.aliases()["champion"])
        print(
            f"feature bins: {F} features x {bins.n_bins} bins from {TRAINING_ROWS:,} training rows "
            f"(fitted in {fit_s:.1f} s, as training does)"
        )

        rows = np.random.default_rng(2).normal(size=(n, F)).astype(np.float32)
        compute = timed(lambda: bins.psi(bins.counts(rows)), args.repeat)
        print(f"computation alone (bin {n} newest rows, PSI of {F} features): {summary(compute)}")

        client = redis.Redis.from_url(args.redis_url)
        with scratch_postgres() as url:
            engine = db.get_engine(url)
            store = RedisWindowStore(client)
            minutes = Minutes(engine, store, version, n, settings.pipeline.feature_ttl_seconds)
            minutes.add()
            reader = PipelineWindows(store)
            keys = minutes.last_keys
            rows_s = timed(lambda: reader.newest_rows(keys), 30)
            whole_s = timed(lambda: store.get_many(keys, SHAPE), 30)
            print(f"Redis, newest row of {n} windows (GETRANGE, what the pass reads): {summary(rows_s)}")
            print(f"Redis, the whole {n} windows (MGET, for comparison): {summary(whole_s)}")
            pg, last = passes(settings, registry, minutes, args.passes)
            print(
                f"whole pass, PostgreSQL + Redis (1 new minute of {n} windows, {last['minutes']} minutes "
                f"and {last['samples']:,} rows accumulated): {summary(pg)}"
            )
        client.close()

        lite_url = f"sqlite:///{tmp}/bench.db"
        db.upgrade(lite_url)
        lite = Minutes(db.get_engine(lite_url), MemoryWindowStore(), version, n, 180)
        sq, last = passes(settings, registry, lite, args.passes)
        print(
            f"whole pass, SQLite + in-memory store (embedded run; {last['minutes']} minutes, "
            f"{last['samples']:,} rows): {summary(sq)}"
        )
        db.dispose_engines()

    median = statistics.median(pg)
    verdict = "within" if median <= BUDGET_S else "OVER"
    print(
        f"budget (issue 15): drift over {n} windows <= {BUDGET_S * 1000:.0f} ms; the whole pass on "
        f"PostgreSQL + Redis: median {median * 1000:.0f} ms, max {max(pg) * 1000:.0f} ms: {verdict}"
    )


if __name__ == "__main__":
    main()
