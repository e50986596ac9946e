"""Shared fixtures: isolated settings, a fresh SQLite file and a fresh PostgreSQL schema per test, and
the tests' own Redis database.

Redis: every test uses ``REDIS_URL`` (``MLSIG_TEST_REDIS_URL``, default db 15 of the local server),
through the ``redis_url`` / ``redis_client`` fixtures or by importing it. Only that database is ever
flushed (``flush_test_redis``, the ``clean_redis`` fixture), and never db 0, the application's
default, nor the database of the developer's own ``MLSIG_REDIS_URL``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import create_engine, text

from core.settings import redis_db_url, reset_settings_cache
from data import db

PG_BASE_URL = os.environ.get("MLSIG_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MLSIG_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Read before _isolated_settings removes it from each test's environment: never flushed.
_DEVELOPER_REDIS_URL = os.environ.get("MLSIG_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_target(url: str) -> tuple[str, int, int]:
    """Host, port and database number of a ``redis://`` URL (db 0 when it names none)."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    host = parts.hostname or "127.0.0.1"
    return (
        "127.0.0.1" if host == "localhost" else host,
        parts.port or 6379,
        int(path) if path.isdigit() else 0,
    )


def redis_db(number: int) -> str:
    """Database ``number`` of the tests' Redis server (never 0, the developer's)."""
    assert number != 0, "db 0 is the developer's"
    return redis_db_url(REDIS_URL, number)


def redis_address(url: str = REDIS_URL) -> tuple[str, int]:
    """``(host, port)`` of the tests' Redis server, for a test that must open a raw socket to it."""
    host, port, _db = _redis_target(url)
    return host, port


def flush_test_redis(client: redis.Redis) -> None:
    """Empty the tests' Redis database through ``client``, which must be connected to ``REDIS_URL``.

    Refuses any other database, db 0 (the application's default) and the developer's own
    ``MLSIG_REDIS_URL``: a test run must not wipe a developer's data.
    """
    kwargs = client.connection_pool.connection_kwargs
    host = str(kwargs.get("host"))
    target = (
        "127.0.0.1" if host == "localhost" else host,
        int(kwargs.get("port", 6379)),
        int(kwargs.get("db", 0)),
    )
    allowed = _redis_target(REDIS_URL)
    if target != allowed:
        raise RuntimeError(
            f"refusing to flush Redis {target}: the tests' database is {allowed} ({REDIS_URL})"
        )
    if allowed[2] == 0 or allowed == _redis_target(_DEVELOPER_REDIS_URL):
        raise RuntimeError(
            f"refusing to flush Redis {REDIS_URL}: it is db 0 or the developer's MLSIG_REDIS_URL; "
            "point MLSIG_TEST_REDIS_URL at a database of the tests' own (not db 0, not MLSIG_REDIS_URL's)"
        )
    client.flushdb()


@pytest.fixture(autouse=True)
def _isolated_settings(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """No test reads the developer's mlsignals.yaml or MLSIG_* variables by accident."""
    for key in list(os.environ):
        if key.startswith("MLSIG_") and not key.startswith("MLSIG_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    reset_settings_cache()
    yield
    reset_settings_cache()


@pytest.fixture
def sqlite_url(tmp_path: object) -> Iterator[str]:
    url = f"sqlite:///{tmp_path}/test.db"
    yield url
    db.dispose_engines()


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL whose connections see only a new, empty schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_BASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_BASE_URL else "?"
    try:
        yield f"{PG_BASE_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        db.dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections see only a new, empty schema, dropped after the test."""
    with pg_schema_url() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on the real PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def migrated_url(db_url: str) -> str:
    db.upgrade(db_url)
    return db_url


@pytest.fixture
def redis_url() -> str:
    """The tests' Redis database (``MLSIG_TEST_REDIS_URL``)."""
    return REDIS_URL


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A client on the tests' Redis database; nothing flushed (use unique keys, or ``clean_redis``)."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def clean_redis(redis_client: redis.Redis) -> redis.Redis:
    """``redis_client`` after emptying the tests' database (only that one: ``flush_test_redis``)."""
    flush_test_redis(redis_client)
    return redis_client
