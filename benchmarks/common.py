"""Helpers shared by the benchmark scripts: a throw-away PostgreSQL schema, the benchmark's own
Redis database, timing, and sample summaries that print only the percentiles the sample supports."""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from sqlalchemy import create_engine, text

from data import db

PG_BASE_URL = os.environ.get("MLSIG_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# The benchmarks' Redis database: never db 0 (the application's default) nor 1 (the default result
# backend), and none the tests use (10-13, 15). Broker, results and application keys of a benchmark
# run share it. Override with MLSIG_BENCH_REDIS_URL or a script's --redis-url.
BENCH_REDIS_URL = os.environ.get("MLSIG_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# Set by claim_redis in the database it empties: a database without it that holds keys is not the
# benchmark's, and is never flushed.
OWNER_KEY = "mlsignals:benchmark-db"

# A percentile is printed only from at least this many samples (about 1 / (1 - q)): fewer say little,
# and p99 of 10 samples is merely their maximum.
MIN_SAMPLES = {90: 10, 95: 20, 99: 100}


# -- PostgreSQL ------------------------------------------------------------------------------------


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A URL on a new, migrated schema of the benchmark database, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_BASE_URL else "?"
    url = f"{PG_BASE_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        db.upgrade(url)
        yield url
    finally:
        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def analyze(url: str, table: str) -> None:
    with db.get_engine(url).begin() as conn:
        conn.execute(text(f"ANALYZE {table}"))


# -- Redis -----------------------------------------------------------------------------------------


def add_redis_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        default=BENCH_REDIS_URL,
        help="the benchmark's own Redis database (default: $MLSIG_BENCH_REDIS_URL or %(default)s); "
        "emptied before the run if it is empty or a benchmark's; never db 0",
    )


def redis_db_number(url: str) -> int:
    """The database number of a ``redis://host:port/N`` URL (0 when it names none)."""
    tail = url.split("?", 1)[0].rstrip("/").rpartition("/")[2]
    return int(tail) if tail.isdigit() else 0


def check_bench_redis_url(url: str) -> str:
    """``url``, refused when it names db 0 (the application's default database)."""
    if redis_db_number(url) == 0:
        raise SystemExit(
            f"refusing Redis URL {url!r}: db 0 is the application's default database; give the "
            "benchmark a database of its own (MLSIG_BENCH_REDIS_URL or --redis-url, e.g. .../14)"
        )
    return url


@contextmanager
def claim_redis(url: str) -> Iterator[str]:
    """The benchmark's Redis database, empty before and after the run.

    Flushed only when it is the benchmark's: empty, or marked by an earlier benchmark run. A database
    that holds other keys is refused with a clear error, never flushed.
    """
    check_bench_redis_url(url)
    client = redis.Redis.from_url(url)
    try:
        keys = int(client.dbsize())
        if keys and not client.exists(OWNER_KEY):
            raise SystemExit(
                f"refusing to use Redis {url}: it holds {keys} keys that no benchmark wrote. Point "
                "MLSIG_BENCH_REDIS_URL / --redis-url at an empty database, or empty this one yourself."
            )
        _empty_and_mark(client)
        try:
            yield url
        finally:
            _empty_and_mark(client)
    finally:
        client.close()


def _empty_and_mark(client: redis.Redis) -> None:
    client.flushdb()
    client.set(OWNER_KEY, "emptied and used by benchmarks/*.py")


# -- timing and summaries --------------------------------------------------------------------------


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted samples by nearest rank: an observed value."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def percentiles_for(n: int) -> list[int]:
    """The tail percentiles (of 90, 95, 99) that ``n`` samples support."""
    return [q for q, least in MIN_SAMPLES.items() if n >= least]


def sample_stats(samples: Sequence[float]) -> dict[str, float]:
    """``n``, ``min``, ``median``, each supported ``pQ`` and ``max`` of the finite samples."""
    ordered = sorted(s for s in samples if math.isfinite(s))
    if not ordered:
        return {"n": 0}
    stats = {"n": float(len(ordered)), "min": ordered[0], "median": statistics.median(ordered)}
    stats |= {f"p{q}": nearest_rank(ordered, q) for q in percentiles_for(len(ordered))}
    return stats | {"max": ordered[-1]}


def summary(samples: Sequence[float], scale: float = 1000.0, unit: str = "ms") -> str:
    """E.g. ``n=5: min 12 ms, median 15 ms, max 30 ms`` (percentiles only from enough samples)."""
    stats = sample_stats(samples)
    n = int(stats.pop("n"))
    if not n:
        return "n=0"
    decimals = 0 if unit == "ms" else 2
    parts = ", ".join(f"{name} {value * scale:.{decimals}f} {unit}" for name, value in stats.items())
    return f"n={n}: {parts}"


def replay_minute(client: Any, minute_ms: int) -> None:
    """Send ``tasks.pipeline.run_minute`` for a past minute (replay) to the control queue of the Celery
    app ``client`` and wait for it and its chord: what a distributed benchmark times per minute."""
    from core.timegrid import iso_minute
    from worker.queues import Queue

    started = client.send_task(
        "tasks.pipeline.run_minute", args=[iso_minute(minute_ms), True], queue=Queue.CONTROL.value
    )
    outcome = started.get(timeout=60)
    if "result_id" not in outcome:
        raise RuntimeError(f"minute {iso_minute(minute_ms)} was not dispatched: {outcome}")
    client.AsyncResult(outcome["result_id"]).get(timeout=120)


def load_history(engine: Any, market: Any, symbols: Sequence[str], minutes: int, end_ms: int) -> Any:
    """The feature window's history and ``minutes`` more (plus 30 of margin) of simulated candles
    for ``symbols`` ending at ``end_ms``, backfilled into ``engine``'s store; the ingest report."""
    from data.ingest import Ingestor
    from data.store import CandleStore
    from data.validation import ValidationPolicy
    from ml.features import FEATURE_SPEC

    history_days = (FEATURE_SPEC.window * 15 + minutes + 30) / 1440
    return Ingestor(CandleStore(engine), market, ValidationPolicy()).backfill(
        symbols, history_days, end_ms=end_ms
    )
