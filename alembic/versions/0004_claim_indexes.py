"""claim indexes for every claim shape: the CPU fallback per lane, the shared fallback per user

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    queued = sa.text("state = 'queued'")
    op.create_index('ix_jobs_claim_fallback_lane', 'jobs', ['lane', 'fallback_at', 'id'], unique=False,
                    postgresql_where=queued, sqlite_where=queued)
    op.create_index('ix_jobs_claim_shared_user', 'jobs', ['user_id', 'shared_at', 'id'], unique=False,
                    postgresql_where=queued, sqlite_where=queued)


def downgrade() -> None:
    op.drop_index('ix_jobs_claim_shared_user', table_name='jobs')
    op.drop_index('ix_jobs_claim_fallback_lane', table_name='jobs')
