"""signal quality: per-horizon outcomes of every signal, and the circuit breaker's events

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 03:00:00.000000

"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'signal_outcomes',
        sa.Column('signal_id', sa.BigInteger(), nullable=False),
        sa.Column('symbol', sa.String(length=64), nullable=False),
        sa.Column('minute', sa.DateTime(timezone=True), nullable=False),
        sa.Column('signal_made_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('horizon_bars', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=12), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('direction', sa.String(length=8), nullable=False),
        sa.Column('actionable', sa.Boolean(), nullable=False),
        sa.Column('exit_time', sa.DateTime(timezone=True), nullable=False),
        sa.Column('entry_price', sa.Double(), nullable=False),
        sa.Column('exit_price', sa.Double(), nullable=True),
        sa.Column('realised_return', sa.Double(), nullable=True),
        sa.Column('neutral_return', sa.Double(), nullable=True),
        sa.Column('realised_class', sa.String(length=8), nullable=True),
        sa.Column('predicted_return', sa.Double(), nullable=True),
        sa.Column('prob_long', sa.Double(), nullable=True),
        sa.Column('prob_short', sa.Double(), nullable=True),
        sa.Column('prob_flat', sa.Double(), nullable=True),
        sa.Column('correct', sa.Boolean(), nullable=True),
        sa.Column('net_return', sa.Double(), nullable=True),
        sa.Column('net_return_raw', sa.Double(), nullable=True),
        sa.Column('cost', sa.Double(), nullable=False),
        sa.Column('resolved_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint('signal_id', 'horizon_bars', name=op.f('pk_signal_outcomes')),
    )
    op.create_index('ix_signal_outcomes_horizon_minute', 'signal_outcomes', ['horizon_bars', 'minute'], unique=False)
    op.create_index(
        'ix_signal_outcomes_model_horizon_minute',
        'signal_outcomes',
        ['model_version', 'horizon_bars', 'minute'],
        unique=False,
    )
    op.create_table(
        'quality_events',
        sa.Column('id', _ID, autoincrement=True, nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('figures', _JSON, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_quality_events')),
    )
    op.create_index(op.f('ix_quality_events_at'), 'quality_events', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_quality_events_at'), table_name='quality_events')
    op.drop_table('quality_events')
    op.drop_index('ix_signal_outcomes_model_horizon_minute', table_name='signal_outcomes')
    op.drop_index('ix_signal_outcomes_horizon_minute', table_name='signal_outcomes')
    op.drop_table('signal_outcomes')
