"""candle gaps: missing minutes found at ingestion, outages among them

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 05:40:00.000000

"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('candle_gaps',
    sa.Column('exchange', sa.String(length=32), nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('start_time', sa.BigInteger(), nullable=False),
    sa.Column('end_time', sa.BigInteger(), nullable=False),
    sa.Column('minutes', sa.Integer(), nullable=False),
    sa.Column('filled', sa.Integer(), nullable=False),
    sa.Column('outage', sa.Boolean(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('exchange', 'symbol', 'start_time', name=op.f('pk_candle_gaps'))
    )
    op.create_index('ix_candle_gaps_exchange_end', 'candle_gaps', ['exchange', 'end_time'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_candle_gaps_exchange_end', table_name='candle_gaps')
    op.drop_table('candle_gaps')
