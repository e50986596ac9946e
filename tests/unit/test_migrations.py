"""Migrations run on SQLite and PostgreSQL, round-trip, and agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from data import db
from data.models import Base, exists_on_dialect

TABLES = {
    "raw_market_data",
    "processed_market_data",
    "technical_indicators",
    "data_quarantine",
    "candle_gaps",
    "pipeline_runs",
    "signals",
    "ml_predictions",
    "order_intents",
    "trading_accounts",
    "trading_orders",
    "trading_positions",
    "trading_fills",
    "signal_outcomes",
    "quality_events",
    "feature_drift",
}


def diff(url: str) -> list[object]:
    with db.get_engine(url).connect() as conn:
        dialect = conn.dialect.name
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_object": lambda obj, *_: exists_on_dialect(obj, dialect),
            },
        )
        return list(compare_metadata(ctx, Base.metadata))


def tables(url: str) -> set[str]:
    return set(inspect(db.get_engine(url)).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade_round_trip(db_url: str) -> None:
    db.upgrade(db_url)
    assert tables(db_url) == TABLES
    assert db.current_revision(db_url) == db.head_revision()
    db.downgrade(db_url, "base")
    assert tables(db_url) == set()
    assert db.current_revision(db_url) is None
    db.upgrade(db_url)
    assert tables(db_url) == TABLES


def test_models_and_migrations_agree(db_url: str) -> None:
    db.upgrade(db_url)
    assert diff(db_url) == []


def test_gin_index_exists_only_on_postgresql(db_url: str) -> None:
    db.upgrade(db_url)
    names = {ix["name"] for ix in inspect(db.get_engine(db_url)).get_indexes("processed_market_data")}
    expected = db_url.startswith("postgresql")
    assert ("ix_processed_market_data_features_gin" in names) is expected


def test_migration_diff_detects_a_drift(db_url: str) -> None:
    """The agreement test can fail: a column missing from the database is reported."""
    db.upgrade(db_url)
    with db.get_engine(db_url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE technical_indicators DROP COLUMN value")
    assert any("value" in str(item) for item in diff(db_url))
