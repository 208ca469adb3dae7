"""running jobs per user: the shared lane's fair share counts them on every shared claim

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 22:20:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    running = sa.text("state = 'running'")
    op.create_index(
        "ix_jobs_running_user",
        "jobs",
        ["user_id"],
        unique=False,
        postgresql_where=running,
        sqlite_where=running,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_running_user", table_name="jobs")
