"""feature drift: each drift pass's PSI per feature against the version's training distribution

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 09:00:00.000000

"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'feature_drift',
        sa.Column('id', _ID, autoincrement=True, nullable=False),
        sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('newest_minute', sa.DateTime(timezone=True), nullable=True),
        sa.Column('minutes', sa.Integer(), nullable=False),
        sa.Column('samples', sa.Integer(), nullable=False),
        sa.Column('bins', sa.Integer(), nullable=False),
        sa.Column('max_psi', sa.Double(), nullable=True),
        sa.Column('psi', _JSON, nullable=False),
        sa.Column('worst', _JSON, nullable=False),
        sa.Column('counts', _JSON, nullable=True),
        sa.Column('detail', _JSON, nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_feature_drift')),
    )
    op.create_index(op.f('ix_feature_drift_computed_at'), 'feature_drift', ['computed_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_feature_drift_computed_at'), table_name='feature_drift')
    op.drop_table('feature_drift')
