"""workers.device: what processes a worker's jobs (GPU model and memory, or CPU cores), for the dashboard

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:05:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('device', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('device')
