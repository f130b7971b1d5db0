"""The sweeper's index of jobs with a deadline, to end queued ones whose deadline passed

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 15:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITH_DEADLINE = "deadline IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_status_deadline",
        "jobs",
        ["status", "deadline"],
        postgresql_where=sa.text(WITH_DEADLINE),
        sqlite_where=sa.text(WITH_DEADLINE),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_status_deadline", table_name="jobs")
