"""SQLAlchemy 2 models of the market-data tables. Migrations in ``migrations/`` must match them.

Candle times are BIGINT milliseconds since the epoch (UTC), as ccxt and the exchanges give them:
exact, portable between PostgreSQL and SQLite, and cheap to bucket into bars inside SQL. Every
other time is a ``UtcDateTime`` column: aware UTC datetimes in and out, on both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names so that migrations and models agree on every dialect.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY, so BIGINT ids fall back to INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class UtcDateTime(TypeDecorator[datetime]):
    """An instant: ``TIMESTAMP WITH TIME ZONE`` that takes and gives timezone-aware UTC datetimes.

    In: an aware datetime, in any zone, stored as UTC; a naive one is refused (``ValueError``),
    since nothing says which zone it is in. Out: an aware datetime in UTC, on every dialect:
    PostgreSQL answers in the session's time zone, SQLite stores no zone at all (its text is the
    UTC wall time, as before this type existed), and ``max()`` of the column is converted too.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"{value!r} is not a datetime: a timestamp column takes aware UTC datetimes")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value!r}: a timestamp column takes timezone-aware datetimes only "
                "(use datetime.now(UTC), or .replace(tzinfo=UTC) when the value is known to be UTC)"
            )
        utc = value.astimezone(UTC)
        # SQLite keeps the text of the wall time: without the zone, as every stored row has it.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if isinstance(value, str):  # an expression SQLite answers as text
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"{value!r} read from a timestamp column is not a datetime")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def exists_on_dialect(obj: object, dialect: str) -> bool:
    """False for schema objects declared with ``ddl_if`` for another dialect (the GIN index)."""
    ddl_if = getattr(obj, "_ddl_if", None)
    wanted = getattr(ddl_if, "dialect", None)
    return not wanted or wanted == dialect


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RawMarketData(Base):
    """Closed 1-minute candles. ``is_filled`` marks a synthetic candle of the documented gap rule.

    The natural key is the primary key (no surrogate id): one index to maintain per inserted candle
    instead of two, and the same uniqueness on exchange + symbol + interval + open time.
    """

    __tablename__ = "raw_market_data"

    exchange: Mapped[str] = mapped_column(String(32), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    interval: Mapped[str] = mapped_column(String(8), primary_key=True)
    open_time: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    open: Mapped[float] = mapped_column(Double)
    high: Mapped[float] = mapped_column(Double)
    low: Mapped[float] = mapped_column(Double)
    close: Mapped[float] = mapped_column(Double)
    volume: Mapped[float] = mapped_column(Double)
    turnover: Mapped[float | None] = mapped_column(Double, nullable=True)
    is_filled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ingested_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class ProcessedMarketData(Base):
    """Feature snapshots of one bar (JSONB with a GIN index on PostgreSQL, JSON on SQLite)."""

    __tablename__ = "processed_market_data"
    __table_args__ = (
        UniqueConstraint(
            "exchange",
            "symbol",
            "bar_minutes",
            "bar_open_time",
            "feature_spec_hash",
            name="uq_processed_market_data_bar",
        ),
        Index("ix_processed_market_data_features_gin", "features", postgresql_using="gin").ddl_if(
            dialect="postgresql"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    exchange: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(64))
    bar_minutes: Mapped[int] = mapped_column(Integer)
    bar_open_time: Mapped[int] = mapped_column(BigInteger)
    feature_spec_hash: Mapped[str] = mapped_column(String(64))
    features: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class TechnicalIndicator(Base):
    """One indicator value of one bar, in long form so new indicators need no migration."""

    __tablename__ = "technical_indicators"
    __table_args__ = (
        UniqueConstraint(
            "exchange", "symbol", "interval", "open_time", "indicator", name="uq_technical_indicators_value"
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    exchange: Mapped[str] = mapped_column(String(32))
    symbol: Mapped[str] = mapped_column(String(64))
    interval: Mapped[str] = mapped_column(String(8))
    open_time: Mapped[int] = mapped_column(BigInteger)
    indicator: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    value: Mapped[float | None] = mapped_column(Double, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class DataQuarantine(Base):
    """Symbols whose latest ingestion failed a rule; cleared by the next clean ingestion."""

    __tablename__ = "data_quarantine"

    exchange: Mapped[str] = mapped_column(String(32), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CandleGap(Base):
    """Minutes a source had no candle for, found when newer candles arrived (docs/DATA.md).

    ``filled`` of them were stored as flagged flat candles; ``outage`` marks gaps longer than an
    ordinary illiquid pause (``data.max_fill_gap_minutes``). Insert-only: a re-run records nothing twice.
    """

    __tablename__ = "candle_gaps"
    __table_args__ = (Index("ix_candle_gaps_exchange_end", "exchange", "end_time"),)

    exchange: Mapped[str] = mapped_column(String(32), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(64), primary_key=True)
    start_time: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    end_time: Mapped[int] = mapped_column(BigInteger)
    minutes: Mapped[int] = mapped_column(Integer)
    filled: Mapped[int] = mapped_column(Integer)
    outage: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class PipelineRun(Base):
    """The ledger: one row per minute, the arbiter of "exactly one effective run per minute"."""

    __tablename__ = "pipeline_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    minute: Mapped[datetime] = mapped_column(UtcDateTime(), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    symbols_asked: Mapped[int] = mapped_column(Integer, default=0)
    signals_made: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The minute supervisor's bookkeeping: how often the chord was dispatched, and the stage the run
    # last reached (dispatched, inference, publish) and when.
    attempts: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    stage_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    __table_args__ = (Index("ix_pipeline_runs_status", "status"),)


class SignalRecord(Base):
    """A published trading signal; unique per symbol, minute and model version (writes are upserts).

    ``published_at`` and ``orders_enqueued_at`` make the table its own outbox: a callback that died
    between the commit and the publish finishes the job on redelivery, and never does it twice.
    """

    __tablename__ = "signals"
    __table_args__ = (UniqueConstraint("symbol", "minute", "model_version", name="uq_signals_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    symbol: Mapped[str] = mapped_column(String(64))
    minute: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    bar_end: Mapped[datetime] = mapped_column(UtcDateTime())
    direction: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float] = mapped_column(Double)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    returns: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    risk: Mapped[dict[str, Any]] = mapped_column(JsonDocument)
    entry_price: Mapped[float] = mapped_column(Double)
    stop_loss: Mapped[float | None] = mapped_column(Double, nullable=True)
    take_profit: Mapped[float | None] = mapped_column(Double, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    schema_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    orders_enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class MlPrediction(Base):
    """The raw 20 outputs behind a signal, for audit and for re-decoding under new rules."""

    __tablename__ = "ml_predictions"
    __table_args__ = (UniqueConstraint("symbol", "minute", "model_version", name="uq_ml_predictions_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    symbol: Mapped[str] = mapped_column(String(64))
    minute: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    outputs: Mapped[list[float]] = mapped_column(JsonDocument)
    temperature: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class SignalOutcome(Base):
    """What happened after a signal, per horizon (docs/SIGNAL_QUALITY.md): written once per signal
    and horizon by ``quality.outcomes``; keyed on (signal, horizon), so a re-run adds nothing.

    Returns are fractions of the entry price; ``neutral_return`` is the return minus the mean of the
    minute's resolved symbols, as the training labels are. ``unresolved`` rows carry the reason and
    no figures.
    """

    __tablename__ = "signal_outcomes"
    __table_args__ = (
        Index("ix_signal_outcomes_horizon_minute", "horizon_bars", "minute"),
        Index("ix_signal_outcomes_model_horizon_minute", "model_version", "horizon_bars", "minute"),
    )

    # The key is the row's identity: no surrogate id, one index fewer to write per outcome (the
    # scorer writes 2,000 rows a minute at 500 symbols).
    signal_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    horizon_bars: Mapped[int] = mapped_column(Integer, primary_key=True)
    symbol: Mapped[str] = mapped_column(String(64))
    minute: Mapped[datetime] = mapped_column(UtcDateTime())
    # When the signal was stored (signals.created_at): the breaker counts only signals made after
    # the last resume, whatever minute they are for (a replay makes signals of past minutes).
    signal_made_at: Mapped[datetime] = mapped_column(UtcDateTime())
    model_version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    direction: Mapped[str] = mapped_column(String(8))
    actionable: Mapped[bool] = mapped_column(Boolean)
    exit_time: Mapped[datetime] = mapped_column(UtcDateTime())
    entry_price: Mapped[float] = mapped_column(Double)
    exit_price: Mapped[float | None] = mapped_column(Double, nullable=True)
    realised_return: Mapped[float | None] = mapped_column(Double, nullable=True)
    neutral_return: Mapped[float | None] = mapped_column(Double, nullable=True)
    realised_class: Mapped[str | None] = mapped_column(String(8), nullable=True)
    predicted_return: Mapped[float | None] = mapped_column(Double, nullable=True)
    prob_long: Mapped[float | None] = mapped_column(Double, nullable=True)
    prob_short: Mapped[float | None] = mapped_column(Double, nullable=True)
    prob_flat: Mapped[float | None] = mapped_column(Double, nullable=True)
    # Actionable signals only: the direction was right (the market-neutral return had its sign), and
    # the signed returns minus the round-trip cost in force when it was scored.
    correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    net_return: Mapped[float | None] = mapped_column(Double, nullable=True)
    net_return_raw: Mapped[float | None] = mapped_column(Double, nullable=True)
    cost: Mapped[float] = mapped_column(Double)
    resolved_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class QualityEvent(Base):
    """Every trip and resume of the quality circuit breaker, with the figures behind it."""

    __tablename__ = "quality_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # trip | resume
    # Who: the breaker, the operator (`mlsignals trading resume`) or a promotion.
    source: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    figures: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)


class OrderIntent(Base):
    """An order the execution worker was asked to place; the client order id makes it idempotent."""

    __tablename__ = "order_intents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client_order_id: Mapped[str] = mapped_column(String(64), unique=True)
    symbol: Mapped[str] = mapped_column(String(64))
    minute: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(8))
    confidence: Mapped[float] = mapped_column(Double)
    entry_price: Mapped[float] = mapped_column(Double)
    stop_loss: Mapped[float | None] = mapped_column(Double, nullable=True)
    take_profit: Mapped[float | None] = mapped_column(Double, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class TradingAccount(Base):
    """One row per execution mode (``paper``, ``live``): cash, the day's start, the kill switch.

    Every account-level decision (risk checks, sizing, fills) runs while holding this row's lock, so
    that concurrent order workers never decide on the same state twice.
    """

    __tablename__ = "trading_accounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(16), unique=True)
    currency: Mapped[str] = mapped_column(String(16))
    initial_balance: Mapped[float] = mapped_column(Double)
    # Cash: the initial balance plus realised PnL minus fees (live: the exchange's wallet balance).
    balance: Mapped[float] = mapped_column(Double)
    equity: Mapped[float] = mapped_column(Double)
    day_start_at: Mapped[datetime] = mapped_column(UtcDateTime())
    day_start_equity: Mapped[float] = mapped_column(Double)
    halted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    halt_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    halted_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Paper: candles with open time before this were processed (fills, stop-loss, take-profit).
    ticked_to_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # Bumped by every transaction that holds the lock: a process may reuse what it read of the
    # account's positions and orders while nobody else has changed them.
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class TradingOrder(Base):
    """An order of either broker; the client order id is unique here and on the exchange."""

    __tablename__ = "trading_orders"
    __table_args__ = (
        Index("ix_trading_orders_account_status", "account", "status"),
        Index("ix_trading_orders_account_symbol", "account", "symbol"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    client_order_id: Mapped[str] = mapped_column(String(64), unique=True)
    intent_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    account: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(4))
    purpose: Mapped[str] = mapped_column(String(16))
    qty: Mapped[float] = mapped_column(Double)
    ref_price: Mapped[float] = mapped_column(Double)
    stop_loss: Mapped[float | None] = mapped_column(Double, nullable=True)
    take_profit: Mapped[float | None] = mapped_column(Double, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    signal_minute: Mapped[datetime] = mapped_column(UtcDateTime())
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    position_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    exchange_order_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    filled_qty: Mapped[float] = mapped_column(Double, default=0.0)
    avg_price: Mapped[float | None] = mapped_column(Double, nullable=True)
    fee: Mapped[float] = mapped_column(Double, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    filled_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class TradingPosition(Base):
    """One entry and its exit (stop-loss, take-profit, opposite signal); PnL in the quote currency."""

    __tablename__ = "trading_positions"
    __table_args__ = (
        Index("ix_trading_positions_account_status", "account", "status"),
        Index("ix_trading_positions_account_symbol", "account", "symbol"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(8))
    qty: Mapped[float] = mapped_column(Double)
    entry_price: Mapped[float] = mapped_column(Double)
    stop_loss: Mapped[float | None] = mapped_column(Double, nullable=True)
    take_profit: Mapped[float | None] = mapped_column(Double, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    entry_order_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    exit_order_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    signal_minute: Mapped[datetime] = mapped_column(UtcDateTime())
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    exit_price: Mapped[float | None] = mapped_column(Double, nullable=True)
    exit_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    mark_price: Mapped[float] = mapped_column(Double)
    unrealised_pnl: Mapped[float] = mapped_column(Double, default=0.0)
    # Net of both fees once closed; while open, minus the entry fee.
    realised_pnl: Mapped[float] = mapped_column(Double, default=0.0)
    fees: Mapped[float] = mapped_column(Double, default=0.0)
    # Stop-loss and take-profit were checked against every candle up to this open time.
    checked_through_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class TradingFill(Base):
    """An execution: one per order (paper fills whole; live records the order's final average)."""

    __tablename__ = "trading_fills"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    account: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(64), index=True)
    side: Mapped[str] = mapped_column(String(4))
    qty: Mapped[float] = mapped_column(Double)
    price: Mapped[float] = mapped_column(Double)
    fee: Mapped[float] = mapped_column(Double)
    # Gross PnL this fill realised (closing fills); fees are in ``fee``.
    realised_pnl: Mapped[float] = mapped_column(Double, default=0.0)
    kind: Mapped[str] = mapped_column(String(32))
    candle_open_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    filled_at: Mapped[datetime] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())


class FeatureDrift(Base):
    """One feature-drift pass (``quality.drift``, docs/SIGNAL_QUALITY.md "Feature drift"): the PSI of
    every feature of the champion's live windows, accumulated over the last minutes, against the
    training distribution stored with the version. ``status`` is ``ok``, or why there is no PSI
    (``no_model``, ``no_bins``, ``no_windows``) with the ``reason``.

    ``counts`` holds the bin counts of the windows this pass read itself (with the ledger runs they
    came from): the next passes add them up; it is cleared once older than the accumulation.
    """

    __tablename__ = "feature_drift"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The newest pipeline minute whose windows are in the figures, how many minutes and rows are.
    newest_minute: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    minutes: Mapped[int] = mapped_column(Integer, default=0)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    bins: Mapped[int] = mapped_column(Integer, default=0)
    max_psi: Mapped[float | None] = mapped_column(Double, nullable=True)
    psi: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)  # feature -> PSI
    worst: Mapped[list[Any]] = mapped_column(JsonDocument, default=list)  # [{feature, psi}], worst first
    counts: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    # The data-quality context of the newest minute read (symbols asked, failed and why, expired).
    detail: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)


class McpAudit(Base):
    """One call of a mutating MCP tool (``mcp_servers``, docs/MCP.md "Security"): who called which tool
    with which arguments, when, how long it took, and what came of it. Written after the call, also
    when it failed (``ok`` false, ``error`` the message the caller saw)."""

    __tablename__ = "mcp_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    called_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    server: Mapped[str] = mapped_column(String(32))
    tool: Mapped[str] = mapped_column(String(64))
    # The bearer token's client id over HTTP; ``stdio:<os user>`` over stdio.
    caller: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, Any]] = mapped_column(JsonDocument, default=dict)
    ok: Mapped[bool] = mapped_column(Boolean)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Double)
