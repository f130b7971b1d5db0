"""Roles and keys, tenant policies in SQL: key scope/name/expiry/models/interactive right,
tenant limits, budgets, shares and retention, and the key that submitted each job

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 12:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(20, 6)


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("budget_usd_day", MONEY, nullable=True))
        batch.add_column(sa.Column("budget_usd_month", MONEY, nullable=True))
        batch.add_column(sa.Column("share", sa.Float(), nullable=True))
        batch.add_column(sa.Column("shared_cache", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("tenant_id", existing_type=sa.String(40), nullable=True)
        batch.add_column(sa.Column("scope", sa.String(16), nullable=False, server_default="tenant"))
        batch.add_column(sa.Column("name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column(
                "models",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch.add_column(
            sa.Column("allow_interactive", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("budget_usd_day", MONEY, nullable=True))
        batch.add_column(sa.Column("budget_usd_month", MONEY, nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("api_key_id")
    with op.batch_alter_table("api_keys") as batch:
        for column in (
            "budget_usd_month",
            "budget_usd_day",
            "allow_interactive",
            "models",
            "expires_at",
            "name",
            "scope",
        ):
            batch.drop_column(column)
        batch.alter_column("tenant_id", existing_type=sa.String(40), nullable=False)
    with op.batch_alter_table("tenants") as batch:
        for column in (
            "updated_at",
            "retention_days",
            "shared_cache",
            "share",
            "budget_usd_month",
            "budget_usd_day",
            "tpm",
            "rpm",
        ):
            batch.drop_column(column)
