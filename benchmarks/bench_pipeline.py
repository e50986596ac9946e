"""Whole-minute benchmark: replay minutes against real Redis, PostgreSQL and one worker per queue.

Run: ``.venv/bin/python -m benchmarks.bench_pipeline [--symbols 50 100 500] [--minutes 10]``.
For each universe size it loads simulated history into a scratch PostgreSQL schema, starts one worker
per queue exactly as in production plus a second single-process features worker (both cores compute
features), waits until every one answers a ping (an error naming the silent ones otherwise), replays
consecutive minutes back to back and prints, per stage and for the whole minute, n, min, median and
max, plus p95 from 20 minutes and p99 from 100 (fewer samples do not support them).
Broker, results and application keys share the benchmark's own Redis database (``--redis-url``,
default ``$MLSIG_BENCH_REDIS_URL`` or db 14; never db 0), emptied before each universe size only if
it is empty or a benchmark's.
Targets (DESIGN.md §8, 2 cores, no GPU): 100 symbols <= 2.5 s, 500 symbols <= 8 s per minute.
The model is an untrained UnifiedPatchTST of the default size: timing does not depend on training.

``--source exchange [--rest-latency-ms 150]``: the same minutes against the project's local Bybit v5
servers instead of the simulator: REST answers each kline request after the injected latency, and
the candle stream service runs (real ccxt pro feed on the local WebSocket server, REST repair
through the gateway, watermarks in Redis). Each minute starts the moment the just-closed minute's
500 confirmed candles are pushed on the WebSocket, as beat fires when an exchange closes a minute:
the feature tasks wait for the stream's watermark, so the figures include the stream's latency.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from celery import Celery
from sqlalchemy import Engine

from benchmarks.common import (
    add_redis_option,
    claim_redis,
    percentiles_for,
    sample_stats,
    scratch_postgres,
    summary,
)
from core.logging import configure_logging
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.ingest import Ingestor
from data.sources.simulator import SimulatedMarket
from data.store import CandleStore
from data.validation import ValidationPolicy
from ml.features import FEATURE_SPEC
from ml.model.config import ModelConfig
from ml.model.network import build_model
from ml.registry import Registry
from ml.scaling import RobustScaler
from pipeline.ledger import RunLedger
from tasks.common import minute_dt
from tests.support.workers import WorkerFleet, running_fleet
from worker.queues import Queue

STAGES = (
    "dispatch",
    "features_max_chunk",
    "inference_fetch",
    "inference_forward",
    "store",
    "publish",
    "minute_total",
)
WORKERS_UP_TIMEOUT_S = 120.0


def worker_env(url: str, redis_url: str, registry: Registry, n_symbols: int, chunk: int) -> dict[str, str]:
    """The workers' environment: broker, results and application keys in ``redis_url``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
        "MLSIG_DATABASE_URL": url,
        "MLSIG_REDIS_URL": redis_url,
        "MLSIG_CELERY__BROKER_URL": redis_url,
        "MLSIG_CELERY__RESULT_BACKEND": redis_url,
        "MLSIG_MODEL__REGISTRY_DIR": str(registry.root),
        "MLSIG_DATA__UNIVERSE_SIZE": str(n_symbols),
        "MLSIG_PIPELINE__SYMBOLS_PER_TASK": str(chunk),
        "MLSIG_PIPELINE__CANDLE_WAIT_SECONDS": "0",
        "MLSIG_PIPELINE__CHANNEL": f"bench-{uuid.uuid4().hex[:6]}",
        "MLSIG_LOG_LEVEL": "WARNING",
        "OPENBLAS_NUM_THREADS": "1",
    }


def wait_for_workers(client: Celery, fleet: WorkerFleet, timeout_s: float = WORKERS_UP_TIMEOUT_S) -> None:
    """Until every started worker process answers a ping; a clear error when they do not."""
    expected = [f"{w.queue.value} (pid {w.process.pid})" for w in fleet.started]
    deadline = time.monotonic() + timeout_s
    answered: list[str] = []
    while time.monotonic() < deadline:
        answered = sorted(name for reply in client.control.ping(timeout=0.5) or [] for name in reply)
        if len(answered) >= len(fleet.started):
            return
        if any(w.process.poll() is not None for w in fleet.started):
            break  # a worker exited: waiting longer cannot help
    exited = [
        f"{w.queue.value} (exit code {w.process.returncode})"
        for w in fleet.started
        if w.process.poll() is not None
    ]
    raise RuntimeError(
        f"the workers did not come up: waited up to {timeout_s:.0f} s for {len(expected)} Celery worker "
        f"processes ({', '.join(expected)}) to answer a ping on broker "
        f"{client.conf.broker_url}; {len(answered)} answered ({', '.join(answered) or 'none'}); "
        f"exited: {', '.join(exited) or 'none'}.\nWorker logs (tail):\n{fleet.logs()}"
    )


def untrained_registry(root: Path) -> Registry:
    registry = Registry(root)
    torch.manual_seed(0)
    n = FEATURE_SPEC.n_features
    scaler = RobustScaler(FEATURE_SPEC.names, FEATURE_SPEC.hash, np.zeros(n), np.ones(n), 10.0, 2)
    registry.register(build_model(ModelConfig()), scaler, {"note": "benchmark"}, {})
    return registry


def replay(
    env: dict[str, str],
    tmp: Path,
    engine: Engine,
    first: int,
    minutes: int,
    before_minute: Callable[[int], None] | None = None,
) -> tuple[list[Any], list[float]]:
    """Start the fleet and replay ``minutes`` minutes from ``first``; returns ledger rows, wall times."""
    client = Celery(
        "bench",
        broker=env["MLSIG_CELERY__BROKER_URL"],
        backend=env["MLSIG_CELERY__RESULT_BACKEND"],
        set_as_current=False,
    )
    client.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    with running_fleet(env, tmp) as fleet:
        # The fleet starts one single-process features worker; a second one uses the second core.
        fleet.start(Queue.FEATURES, "--concurrency", "1")
        wait_for_workers(client, fleet)
        ledger = RunLedger(engine)
        walls: list[float] = []
        # One untimed minute first: worker processes import and load the model lazily.
        for i in range(-1, minutes):
            minute_ms = first + i * MINUTE_MS
            began = time.perf_counter()
            if before_minute is not None:
                before_minute(minute_ms)
            started = client.send_task(
                "tasks.pipeline.run_minute", args=[iso_minute(minute_ms), True], queue=Queue.CONTROL.value
            )
            outcome = started.get(timeout=60)
            if "result_id" not in outcome:
                raise RuntimeError(f"minute {iso_minute(minute_ms)} was not dispatched: {outcome}")
            client.AsyncResult(outcome["result_id"]).get(timeout=120)
            if i >= 0:
                walls.append(time.perf_counter() - began)
        runs = [ledger.get(minute_dt(iso_minute(first + i * MINUTE_MS))) for i in range(minutes)]
    client.close()
    return runs, walls


def report(title: str, runs: list[Any], walls: list[float]) -> None:
    stages = {s: [float(r.timings.get(s, np.nan)) for r in runs if r is not None] for s in STAGES}
    ok = sum(1 for r in runs if r is not None and r.status == "done")
    print(f"\n{title} ({ok} of {len(runs)} minutes done)")
    reasons = sorted({reason for r in runs if r is not None for reason in r.failures.values()})
    if reasons:
        print(f"  failure reasons seen: {reasons[:3]}")
    columns = ["min", "median", *(f"p{q}" for q in percentiles_for(len(walls))), "max"]
    print(f"  {'stage':<22}{'n':>4}" + "".join(f"{c + ' ms':>11}" for c in columns))
    rows = [*stages.items(), ("client end to end", walls)]
    for stage, values in rows:
        stats = sample_stats(values)
        cells = "".join(f"{stats[c] * 1000:>11.0f}" if c in stats else f"{'-':>11}" for c in columns)
        print(f"  {stage:<22}{int(stats['n']):>4}{cells}")
    if len(walls) < 100:
        print(f"  (no p99 from {len(walls)} minutes: it needs 100; p95 needs 20)")


def run_size(n_symbols: int, minutes: int, chunk: int, tmp: Path, redis_url: str) -> None:
    market = SimulatedMarket()
    symbols = market.list_symbols()[:n_symbols]
    end = floor_minute(now_ms()) - (minutes + 2) * MINUTE_MS
    with scratch_postgres() as url, claim_redis(redis_url):
        engine = db.get_engine(url)
        history = (FEATURE_SPEC.window * 15 + minutes + 30) / 1440
        loaded = Ingestor(CandleStore(engine), market, ValidationPolicy()).backfill(
            symbols, history, end_ms=end
        )
        registry = untrained_registry(tmp / f"models-{n_symbols}")
        env = worker_env(url, redis_url, registry, n_symbols, chunk)
        runs, walls = replay(env, tmp, engine, end - minutes * MINUTE_MS, minutes)
    report(
        f"{n_symbols} symbols from the simulator, {minutes} minutes replayed, "
        f"{-(-len(symbols) // chunk)} feature tasks per minute, {loaded.inserted:,} candles loaded",
        runs,
        walls,
    )


def run_size_exchange(
    n_symbols: int, minutes: int, chunk: int, tmp: Path, latency_s: float, redis_url: str
) -> None:
    from benchmarks.exchange_minute import exchange_minute_rig

    end = floor_minute(now_ms()) - 2 * MINUTE_MS
    first = end - minutes * MINUTE_MS
    with scratch_postgres() as url, claim_redis(redis_url):
        engine = db.get_engine(url)
        registry = untrained_registry(tmp / f"models-x-{n_symbols}")
        env = worker_env(url, redis_url, registry, n_symbols, chunk)
        with exchange_minute_rig(env, engine, n_symbols, first, latency_s) as rig:
            runs, walls = replay(env, tmp, engine, first, minutes, rig.close_minute)
            stream_lag = rig.stream_latencies()
    report(
        f"{n_symbols} symbols from the local Bybit servers (REST latency {latency_s * 1000:.0f} ms, "
        f"stream running), {minutes} minutes, {-(-n_symbols // chunk)} feature tasks per minute",
        runs,
        walls,
    )
    if stream_lag:
        print(f"  stream: minute close -> all {n_symbols} stored + watermark: {summary(stream_lag)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, nargs="+", default=[50, 100, 500])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=50, help="symbols per feature task")
    parser.add_argument("--source", choices=["simulator", "exchange"], default="simulator")
    parser.add_argument("--rest-latency-ms", type=float, default=150.0, help="with --source exchange")
    add_redis_option(parser)
    args = parser.parse_args()
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.symbols:
            if args.source == "exchange":
                latency_s = args.rest_latency_ms / 1000
                run_size_exchange(n, args.minutes, args.chunk, Path(tmp), latency_s, args.redis_url)
            else:
                run_size(n, args.minutes, args.chunk, Path(tmp), args.redis_url)


if __name__ == "__main__":
    main()
