"""trading accounts, orders, positions and fills

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 10:17:49.953436

"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa

# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('trading_accounts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=16), nullable=False),
    sa.Column('initial_balance', sa.Double(), nullable=False),
    sa.Column('balance', sa.Double(), nullable=False),
    sa.Column('equity', sa.Double(), nullable=False),
    sa.Column('day_start_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('day_start_equity', sa.Double(), nullable=False),
    sa.Column('halted', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('halt_reason', sa.Text(), nullable=True),
    sa.Column('halted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ticked_to_ms', sa.BigInteger(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_accounts')),
    sa.UniqueConstraint('name', name=op.f('uq_trading_accounts_name'))
    )
    op.create_table('trading_fills',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('order_id', sa.BigInteger(), nullable=False),
    sa.Column('account', sa.String(length=16), nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('qty', sa.Double(), nullable=False),
    sa.Column('price', sa.Double(), nullable=False),
    sa.Column('fee', sa.Double(), nullable=False),
    sa.Column('realised_pnl', sa.Double(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('candle_open_ms', sa.BigInteger(), nullable=True),
    sa.Column('filled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_fills')),
    sa.UniqueConstraint('order_id', name=op.f('uq_trading_fills_order_id'))
    )
    with op.batch_alter_table('trading_fills', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trading_fills_symbol'), ['symbol'], unique=False)

    op.create_table('trading_orders',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('client_order_id', sa.String(length=64), nullable=False),
    sa.Column('intent_id', sa.BigInteger(), nullable=True),
    sa.Column('account', sa.String(length=16), nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('purpose', sa.String(length=16), nullable=False),
    sa.Column('qty', sa.Double(), nullable=False),
    sa.Column('ref_price', sa.Double(), nullable=False),
    sa.Column('stop_loss', sa.Double(), nullable=True),
    sa.Column('take_profit', sa.Double(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('signal_minute', sa.DateTime(timezone=True), nullable=False),
    sa.Column('valid_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('position_id', sa.BigInteger(), nullable=True),
    sa.Column('exchange_order_id', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('filled_qty', sa.Double(), nullable=False),
    sa.Column('avg_price', sa.Double(), nullable=True),
    sa.Column('fee', sa.Double(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('filled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_orders')),
    sa.UniqueConstraint('client_order_id', name=op.f('uq_trading_orders_client_order_id'))
    )
    with op.batch_alter_table('trading_orders', schema=None) as batch_op:
        batch_op.create_index('ix_trading_orders_account_status', ['account', 'status'], unique=False)
        batch_op.create_index('ix_trading_orders_account_symbol', ['account', 'symbol'], unique=False)
        batch_op.create_index(batch_op.f('ix_trading_orders_intent_id'), ['intent_id'], unique=False)

    op.create_table('trading_positions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account', sa.String(length=16), nullable=False),
    sa.Column('symbol', sa.String(length=64), nullable=False),
    sa.Column('side', sa.String(length=8), nullable=False),
    sa.Column('qty', sa.Double(), nullable=False),
    sa.Column('entry_price', sa.Double(), nullable=False),
    sa.Column('stop_loss', sa.Double(), nullable=True),
    sa.Column('take_profit', sa.Double(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('entry_order_id', sa.BigInteger(), nullable=True),
    sa.Column('exit_order_id', sa.BigInteger(), nullable=True),
    sa.Column('signal_minute', sa.DateTime(timezone=True), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('exit_price', sa.Double(), nullable=True),
    sa.Column('exit_reason', sa.String(length=32), nullable=True),
    sa.Column('mark_price', sa.Double(), nullable=False),
    sa.Column('unrealised_pnl', sa.Double(), nullable=False),
    sa.Column('realised_pnl', sa.Double(), nullable=False),
    sa.Column('fees', sa.Double(), nullable=False),
    sa.Column('checked_through_ms', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trading_positions'))
    )
    with op.batch_alter_table('trading_positions', schema=None) as batch_op:
        batch_op.create_index('ix_trading_positions_account_status', ['account', 'status'], unique=False)
        batch_op.create_index('ix_trading_positions_account_symbol', ['account', 'symbol'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('trading_positions', schema=None) as batch_op:
        batch_op.drop_index('ix_trading_positions_account_symbol')
        batch_op.drop_index('ix_trading_positions_account_status')

    op.drop_table('trading_positions')
    with op.batch_alter_table('trading_orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trading_orders_intent_id'))
        batch_op.drop_index('ix_trading_orders_account_symbol')
        batch_op.drop_index('ix_trading_orders_account_status')

    op.drop_table('trading_orders')
    with op.batch_alter_table('trading_fills', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trading_fills_symbol'))

    op.drop_table('trading_fills')
    op.drop_table('trading_accounts')
