"""Retention: usage rollups of purged jobs, erased jobs and batches, the purge's indexes

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYED = "idempotency_key IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "usage_rollups",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "tenant_id", sa.String(40), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("batch_id", sa.String(40), nullable=True),
        sa.Column("api_key_id", sa.String(40), nullable=True),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("cached_requests", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(20, 10), nullable=False),
    )
    op.create_index("ix_usage_rollups_tenant_id_hour", "usage_rollups", ["tenant_id", "hour"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index(
        "ix_jobs_keyed_created_at",
        "jobs",
        ["created_at"],
        postgresql_where=sa.text(KEYED),
        sqlite_where=sa.text(KEYED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_keyed_created_at", table_name="jobs")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("erased_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("erased_at")
    op.drop_index("ix_usage_rollups_tenant_id_hour", table_name="usage_rollups")
    op.drop_table("usage_rollups")
