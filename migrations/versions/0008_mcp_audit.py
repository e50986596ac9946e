"""mcp audit: one row per call of a mutating MCP tool

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 08:00:00.000000

"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'mcp_audit',
        sa.Column('id', _ID, autoincrement=True, nullable=False),
        sa.Column('called_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('server', sa.String(length=32), nullable=False),
        sa.Column('tool', sa.String(length=64), nullable=False),
        sa.Column('caller', sa.String(length=128), nullable=False),
        sa.Column('arguments', _JSON, nullable=False),
        sa.Column('ok', sa.Boolean(), nullable=False),
        sa.Column('result', _JSON, nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('duration_ms', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_mcp_audit')),
    )
    op.create_index(op.f('ix_mcp_audit_called_at'), 'mcp_audit', ['called_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_mcp_audit_called_at'), table_name='mcp_audit')
    op.drop_table('mcp_audit')
