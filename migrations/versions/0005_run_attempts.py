"""pipeline runs: dispatch attempts and the stage last reached, for the minute supervisor

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:30:00.000000

"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.add_column(sa.Column('attempts', sa.Integer(), server_default='1', nullable=False))
        batch.add_column(sa.Column('stage', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('stage_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_pipeline_runs_status', 'pipeline_runs', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_pipeline_runs_status', table_name='pipeline_runs')
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.drop_column('stage_at')
        batch.drop_column('stage')
        batch.drop_column('attempts')
