"""Helpers shared by the benchmark scripts: a throw-away PostgreSQL schema and timing."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

from data import db

PG_BASE_URL = os.environ.get("MLSIG_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(ordered) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, n={len(ordered)}"
