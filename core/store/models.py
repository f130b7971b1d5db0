"""The SQL tables (SQLAlchemy 2 declarative models), shared by API, workers and Alembic.

SQL is the source of truth (DESIGN.md principle 1): a job exists once its row is committed.
Times are stored as UTC; on SQLite they come back naive and `as_utc` re-attaches the zone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonType = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TenantOwned(Base):
    """A table whose rows belong to one tenant, found by `id` within it."""

    __abstract__ = True

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The tenant's policy; a column left NULL falls back to the config file's `tenants.<name>`,
    # then `tenants.default` (core/tenancy.py resolves it).
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    budget_usd_day: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    budget_usd_month: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    share: Mapped[float | None] = mapped_column(Float)
    shared_cache: Mapped[bool | None] = mapped_column(Boolean)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # None for an operator key: it manages the service and belongs to no tenant.
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # The first characters of the key, shown to humans to tell keys apart; never enough to use.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    scope: Mapped[str] = mapped_column(String(16), default="tenant", server_default="tenant")
    name: Mapped[str | None] = mapped_column(String(200))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The model names this key may use; None: every model.
    models: Mapped[list[str] | None] = mapped_column(JsonType)
    # Whether a batch submitted with this key may ask for `interactive` priority.
    allow_interactive: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    budget_usd_day: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    budget_usd_month: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))


class Batch(TenantOwned):
    __tablename__ = "batches"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_batches_tenant_id_id", "tenant_id", "id"),
        # Open batches only: the sweeper looks for finished ones never marked completed.
        Index(
            "ix_batches_open",
            "created_at",
            postgresql_where=text("completed_at IS NULL"),
            sqlite_where=text("completed_at IS NULL"),
        ),
    )

    total: Mapped[int] = mapped_column(Integer)
    priority: Mapped[str] = mapped_column(String(16))
    webhook_url: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set once, by whoever first sees every job final (drives the batch.completed event).
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A client's Idempotency-Key, and the fingerprint of the body it came with.
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Set by `DELETE /v1/batches/{id}` (core/services/erasure.py): the batch is gone for its
    # tenant, its content erased; the row stays for its jobs' usage until the retention purge.
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_id_id", "tenant_id", "id"),
        Index("ix_jobs_batch_id_seq", "batch_id", "seq"),
        Index("ix_jobs_batch_id_status", "batch_id", "status"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_status_lease_until", "status", "lease_until"),
        UniqueConstraint("tenant_id", "idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    seq: Mapped[int | None] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    priority: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JsonType)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JsonType, default=dict)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    use_cache: Mapped[bool] = mapped_column(Boolean, default=True)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Not to be started before this time (rate-limit delay); the sweeper honours it.
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    result: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(20, 10))
    served_provider: Mapped[str | None] = mapped_column(String(200))
    served_model: Mapped[str | None] = mapped_column(String(200))
    cached: Mapped[bool] = mapped_column(Boolean, default=False)
    request_id: Mapped[str | None] = mapped_column(String(64))
    # The submitting request's W3C trace context (core/tracing.py), when traces are on: kept
    # here, not in the message, since the sweeper re-dispatches a job from its row alone.
    traceparent: Mapped[str | None] = mapped_column(String(55))
    # The key that submitted the job (its per-key budget); no foreign key: a hot-path insert.
    api_key_id: Mapped[str | None] = mapped_column(String(40))

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by `DELETE /v1/jobs/{id}` (or of its batch): prompt and answer erased, the row kept
    # for usage and billing (tokens, cost, model, times, status) until the retention purge.
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobAttempt(Base):
    """One try of a job on one target: what was called, how it ended, how long it took."""

    __tablename__ = "job_attempts"
    __table_args__ = (Index("ix_job_attempts_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(40))  # "succeeded", "cached", or an error type
    error_message: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Why this target: the alias's strategy and its reason ("weighted 3/4", "lowest_latency 82 ms").
    route: Mapped[str | None] = mapped_column(String(200))


class TenantWebhookSecret(Base):
    """The tenant's own signing secret, for per-job and per-batch `webhook_url`s.

    Signing needs the secret itself (HMAC), so it is stored, not hashed. During a rotation the
    previous secret keeps signing beside the new one until `previous_expires_at`.
    """

    __tablename__ = "tenant_webhook_secrets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    """A tenant-level endpoint: receives every event of the tenant's jobs and batches."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str] | None] = mapped_column(JsonType)
    description: Mapped[str | None] = mapped_column(String(500))
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # Start of the current run of failed attempts; the endpoint is disabled when it gets too long.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """One event for one destination (the outbox row): written with the job's final state."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_job_id", "job_id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(String(40))
    batch_id: Mapped[str | None] = mapped_column(String(40))
    endpoint_id: Mapped[str | None] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(40))
    webhook_id: Mapped[str] = mapped_column(String(60))  # the `webhook-id` header, same on every retry
    payload: Mapped[str] = mapped_column(Text)  # the exact bytes signed and sent
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | failed
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery_id_attempt", "delivery_id", "attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_snippet: Mapped[str | None] = mapped_column(Text)


class StoredFile(TenantOwned):
    """A file uploaded through the OpenAI Files API (`purpose=batch`), or a batch's output or
    error file (`batch_output`). Its bytes live in `file_chunks`, 1 MiB a row, so neither an
    upload nor a download holds a whole file in memory."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_tenant_id_id", "tenant_id", "id"),
        UniqueConstraint("tenant_id", "idempotency_key"),
    )

    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An upload's Idempotency-Key, and the fingerprint of what it sent (fields and content).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))


class FileChunk(Base):
    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class OpenAIBatch(TenantOwned):
    """A batch made through the OpenAI Batches API: what OpenAI's batch object carries beyond
    jobgate's batch of the same id (which holds the jobs; absent when validation failed)."""

    __tablename__ = "openai_batches"
    __table_args__ = (Index("ix_openai_batches_tenant_id_id", "tenant_id", "id"),)

    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(8))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by the request that writes the output and error files, once every job is final.
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))


class UsageRollup(Base):
    """The usage of jobs the retention purge deleted (core/services/retention.py), summed per
    tenant, hour of finishing (UTC), served model, batch and key: `GET /v1/usage` reads these
    beside the live jobs, so purging never changes a total. Only succeeded jobs count, as
    there (core/services/usage.py)."""

    __tablename__ = "usage_rollups"
    __table_args__ = (Index("ix_usage_rollups_tenant_id_hour", "tenant_id", "hour"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    model: Mapped[str | None] = mapped_column(String(200))
    batch_id: Mapped[str | None] = mapped_column(String(40))
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    requests: Mapped[int] = mapped_column(Integer)
    cached_requests: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(20, 10))


# The retention purge's ways in: finished jobs oldest first, and keyed jobs by age (their
# Idempotency-Keys expire); declared here, beside the migration that made them (0007).
Index("ix_jobs_finished_at", Job.finished_at)
Index(
    "ix_jobs_keyed_created_at",
    Job.created_at,
    postgresql_where=text("idempotency_key IS NOT NULL"),
    sqlite_where=text("idempotency_key IS NOT NULL"),
)
# The sweeper's way to queued jobs whose deadline passed (0010), over the jobs that have one
# only; no status in the predicate, so a plan with the status as a parameter still uses it.
Index(
    "ix_jobs_status_deadline",
    Job.status,
    Job.deadline,
    postgresql_where=text("deadline IS NOT NULL"),
    sqlite_where=text("deadline IS NOT NULL"),
)
