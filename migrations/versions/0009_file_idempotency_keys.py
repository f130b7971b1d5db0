"""Idempotency-Key on file uploads: the key and the upload's fingerprint on each file

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_files_tenant_id_idempotency_key", ["tenant_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_constraint("uq_files_tenant_id_idempotency_key", type_="unique")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
