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

``--metrics on|off|compare`` (default on, as deployed): on, the workers beat their heartbeats and
``mlsignals metrics serve`` runs beside the fleet on the same cores, as deployed (refresh every
``monitoring.refresh_seconds``, 15 s, at ``monitoring.exporter_nice``), scraped every
``--scrape-seconds`` (15 s, as deploy/prometheus/prometheus.yml). ``compare`` keeps one fleet and
lets the exporter run in every other block of ``--block`` minutes (5; stopped with SIGSTOP in the
others), then prints the whole minute's p50 with and without it (issue 14: the instrumentation may
add at most 2 %); two separate runs differ by up to 10 % on a shared 2-core machine, more than what
is measured. ``--refresh-seconds 1 --scrape-seconds 1`` shows the cost under a harsher load.

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
import signal
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from benchmarks.common import (
    add_redis_option,
    claim_redis,
    load_history,
    percentiles_for,
    replay_minute,
    sample_stats,
    scratch_postgres,
    summary,
)
from core.logging import configure_logging
from core.timegrid import MINUTE_MS, floor_minute, iso_minute, now_ms
from data import db
from data.sources.simulator import SimulatedMarket
from ml.registry import Registry
from pipeline.ledger import RunLedger
from tasks.common import minute_dt
from tests.support.exporter import start_exporter
from tests.support.models import untrained_registry
from tests.support.workers import celery_client, running_fleet, wait_for_workers
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


def worker_env(
    url: str, redis_url: str, registry: Registry, n_symbols: int, chunk: int, metrics: bool = True
) -> dict[str, str]:
    """The workers' environment: broker, results and application keys in ``redis_url``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLSIG_")} | {
        "MLSIG_ML_INTEGRATION__MONITORING__METRICS_ENABLED": "true" if metrics else "false",
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


def replay(
    env: dict[str, str],
    tmp: Path,
    engine: Engine,
    first: int,
    minutes: int,
    before_minute: Callable[[int], None] | None = None,
) -> tuple[list[Any], list[float]]:
    """Start the fleet and replay ``minutes`` minutes from ``first``; returns ledger rows, wall times."""
    client = celery_client(env, "bench")
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
            replay_minute(client, minute_ms)
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


class ExporterBeside:
    """The deployment's exporter as deployed: ``mlsignals metrics serve`` in its own process on the
    fleet's cores (refresh every ``refresh_s``, its own lowered CPU priority), scraped over HTTP every
    ``scrape_s`` while active. Inactive, the process is stopped (SIGSTOP): it costs nothing."""

    def __init__(self, env: dict[str, str], refresh_s: float, scrape_s: float) -> None:
        self.process, address = start_exporter(env, "--refresh-seconds", str(refresh_s))
        self.url = f"http://{address}/metrics"
        self.scrape_s = scrape_s
        self.active = False
        self.active_s = self.active_since = 0.0
        self.stop = threading.Event()
        self.process.send_signal(signal.SIGSTOP)
        self.start_cpu_s = self.cpu_s()  # importing and binding are not the steady cost
        self.scraper = threading.Thread(target=self._scrape, daemon=True)
        self.scraper.start()

    def set_active(self, active: bool) -> None:
        if active != self.active:
            self.process.send_signal(signal.SIGCONT if active else signal.SIGSTOP)
            self.active = active
            if active:
                self.active_since = time.monotonic()
            else:
                self.active_s += time.monotonic() - self.active_since

    def cpu_s(self) -> float:
        """CPU seconds the exporter process used so far (user + system, from /proc)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _scrape(self) -> None:
        while not self.stop.wait(self.scrape_s):
            if self.active:
                with urllib.request.urlopen(self.url, timeout=10) as resp:
                    resp.read()

    def close(self) -> None:
        self.set_active(False)
        used = self.cpu_s() - self.start_cpu_s
        if self.active_s > 0:
            print(
                f"  exporter process: {used:.2f} CPU s in {self.active_s:.0f} s active "
                f"({100 * used / self.active_s:.2f} % of one core; the database's own work not included)"
            )
        self.stop.set()
        self.scraper.join(timeout=30)
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        self.process.wait(timeout=30)


def run_size(
    n_symbols: int,
    minutes: int,
    chunk: int,
    tmp: Path,
    redis_url: str,
    metrics: str = "on",
    cadence: tuple[float, float] = (5.0, 15.0),
    block: int = 5,
) -> list[tuple[bool, float]]:
    """Returns (exporter active, ``minute_total`` seconds) per minute. ``metrics``: ``on``, ``off``
    or ``compare`` (the exporter active in every other block of ``block`` minutes)."""
    market = SimulatedMarket()
    symbols = market.list_symbols()[:n_symbols]
    end = floor_minute(now_ms()) - (minutes + 2) * MINUTE_MS
    first = end - minutes * MINUTE_MS
    with scratch_postgres() as url, claim_redis(redis_url):
        engine = db.get_engine(url)
        loaded = load_history(engine, market, symbols, minutes, end)
        registry = untrained_registry(tmp / f"models-{n_symbols}-{uuid.uuid4().hex[:6]}", "benchmark")
        env = worker_env(url, redis_url, registry, n_symbols, chunk, metrics != "off")
        beside = ExporterBeside(env, *cadence) if metrics != "off" else None
        active: dict[int, bool] = {}

        def before_minute(minute_ms: int) -> None:
            index = (minute_ms - first) // MINUTE_MS
            on = metrics == "on" or (metrics == "compare" and index >= 0 and (index // block) % 2 == 1)
            active[minute_ms] = on
            if beside is not None:
                beside.set_active(on)

        try:
            runs, walls = replay(env, tmp, engine, first, minutes, before_minute)
        finally:
            if beside is not None:
                beside.close()
    report(
        f"{n_symbols} symbols from the simulator, {minutes} minutes replayed, "
        f"{-(-len(symbols) // chunk)} feature tasks per minute, {loaded.inserted:,} candles loaded, "
        f"metrics {describe_metrics(metrics, cadence, block)}",
        runs,
        walls,
    )
    return [
        (active[first + i * MINUTE_MS], float(r.timings["minute_total"]))
        for i, r in enumerate(runs)
        if r is not None and "minute_total" in r.timings
    ]


def run_size_exchange(
    n_symbols: int, minutes: int, chunk: int, tmp: Path, latency_s: float, redis_url: str
) -> None:
    from benchmarks.exchange_minute import exchange_minute_rig

    end = floor_minute(now_ms()) - 2 * MINUTE_MS
    first = end - minutes * MINUTE_MS
    with scratch_postgres() as url, claim_redis(redis_url):
        engine = db.get_engine(url)
        registry = untrained_registry(tmp / f"models-x-{n_symbols}", "benchmark")
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


def describe_metrics(metrics: str, cadence: tuple[float, float], block: int) -> str:
    cadence_text = f"exporter refreshed every {cadence[0]:g} s, scraped every {cadence[1]:g} s"
    if metrics == "compare":
        return f"compared (worker heartbeats on; {cadence_text} in every other block of {block} minutes)"
    return f"on ({cadence_text})" if metrics == "on" else "off"


def compare_metrics(n: int, args: argparse.Namespace, tmp: Path) -> None:
    """One fleet; the exporter active in every other block of minutes, so that the machine's drift
    (easily 10 % between two runs on a shared 2-core box) hits both sides alike. Besides the two
    p50s, each active block is paired with the idle block before it: the mean of those paired
    differences of block medians, with its standard error, says whether a difference is real."""
    cadence = (args.refresh_seconds, args.scrape_seconds)
    minutes = run_size(n, args.minutes, args.chunk, tmp, args.redis_url, "compare", cadence, args.block)
    off = [t for on, t in minutes if not on]
    on = [t for on, t in minutes if on]
    p50_off, p50_on = statistics.median(off), statistics.median(on)
    blocks = [minutes[i : i + args.block] for i in range(0, len(minutes), args.block)]
    medians = [statistics.median(t for _, t in block) for block in blocks]
    pairs = [100 * (medians[i + 1] / medians[i] - 1) for i in range(0, len(medians) - 1, 2)]
    paired = ""
    if len(pairs) >= 3:
        mean = statistics.fmean(pairs)
        se = statistics.stdev(pairs) / len(pairs) ** 0.5
        paired = f"; paired blocks: {mean:+.1f} % ± {se:.1f} % (mean ± standard error, {len(pairs)} pairs)"
    print(
        f"\n{n} symbols, whole minute (minute_total) p50: exporter idle {p50_off * 1000:.0f} ms "
        f"(n={len(off)}), active {p50_on * 1000:.0f} ms (n={len(on)}): {100 * (p50_on / p50_off - 1):+.1f} %"
        f"{paired} (budget: at most +2 %). Worker heartbeats ran in both: one Redis ZADD per worker "
        "every 10 s, outside the tasks."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, nargs="+", default=[50, 100, 500])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=50, help="symbols per feature task")
    parser.add_argument("--source", choices=["simulator", "exchange"], default="simulator")
    parser.add_argument("--rest-latency-ms", type=float, default=150.0, help="with --source exchange")
    parser.add_argument("--metrics", choices=["on", "off", "compare"], default="on")
    parser.add_argument("--block", type=int, default=5, help="with --metrics compare: minutes per block")
    parser.add_argument("--refresh-seconds", type=float, default=15.0, help="exporter refresh interval")
    parser.add_argument("--scrape-seconds", type=float, default=15.0, help="scrape interval")
    add_redis_option(parser)
    args = parser.parse_args()
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.symbols:
            if args.source == "exchange":
                latency_s = args.rest_latency_ms / 1000
                run_size_exchange(n, args.minutes, args.chunk, Path(tmp), latency_s, args.redis_url)
            elif args.metrics == "compare":
                compare_metrics(n, args, Path(tmp))
            else:
                cadence = (args.refresh_seconds, args.scrape_seconds)
                run_size(
                    n, args.minutes, args.chunk, Path(tmp), args.redis_url, args.metrics == "on", cadence
                )


if __name__ == "__main__":
    main()
