"""drop ix_jobs_claim_shared: the shared lane's per-user probe walked it across every user's due rows

With an index on ``shared_at`` alone, PostgreSQL planned the shared claim's per-user probe (a user's
first due jobs, in ``shared_at`` order) as a walk of that index filtered on the user: for a user
with nothing queued, every due row of the flooding user, on every shared claim. The probe and the
fallback sweep both walk ``ix_jobs_claim_shared_user`` (user_id, shared_at, id) now.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 20:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_claim_shared", table_name="jobs")


def downgrade() -> None:
    queued = sa.text("state = 'queued'")
    op.create_index(
        "ix_jobs_claim_shared",
        "jobs",
        ["shared_at"],
        unique=False,
        postgresql_where=queued,
        sqlite_where=queued,
    )
