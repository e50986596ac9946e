"""market data tables: raw candles, feature snapshots, indicators, quarantine

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "raw_market_data",
        sa.Column("exchange", sa.String(length=32), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("interval", sa.String(length=8), nullable=False),
        sa.Column("open_time", sa.BigInteger(), nullable=False),
        sa.Column("open", sa.Double(), nullable=False),
        sa.Column("high", sa.Double(), nullable=False),
        sa.Column("low", sa.Double(), nullable=False),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.Double(), nullable=False),
        sa.Column("turnover", sa.Double(), nullable=True),
        sa.Column("is_filled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("exchange", "symbol", "interval", "open_time", name=op.f("pk_raw_market_data")),
    )
    op.create_table(
        "processed_market_data",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("exchange", sa.String(length=32), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("bar_minutes", sa.Integer(), nullable=False),
        sa.Column("bar_open_time", sa.BigInteger(), nullable=False),
        sa.Column("feature_spec_hash", sa.String(length=64), nullable=False),
        sa.Column("features", JSON_DOC, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_processed_market_data")),
        sa.UniqueConstraint(
            "exchange",
            "symbol",
            "bar_minutes",
            "bar_open_time",
            "feature_spec_hash",
            name="uq_processed_market_data_bar",
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_processed_market_data_features_gin",
            "processed_market_data",
            ["features"],
            postgresql_using="gin",
        )
    op.create_table(
        "technical_indicators",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("exchange", sa.String(length=32), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("interval", sa.String(length=8), nullable=False),
        sa.Column("open_time", sa.BigInteger(), nullable=False),
        sa.Column("indicator", sa.String(length=64), nullable=False),
        sa.Column("params", JSON_DOC, nullable=True),
        sa.Column("value", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_technical_indicators")),
        sa.UniqueConstraint(
            "exchange", "symbol", "interval", "open_time", "indicator", name="uq_technical_indicators_value"
        ),
    )
    op.create_table(
        "data_quarantine",
        sa.Column("exchange", sa.String(length=32), nullable=False),
        sa.Column("symbol", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("exchange", "symbol", name=op.f("pk_data_quarantine")),
    )


def downgrade() -> None:
    op.drop_table("data_quarantine")
    op.drop_table("technical_indicators")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_processed_market_data_features_gin", table_name="processed_market_data")
    op.drop_table("processed_market_data")
    op.drop_table("raw_market_data")
