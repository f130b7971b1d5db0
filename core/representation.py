"""The public JSON shapes of jobs and batches (CONTRACT.md), built from SQL rows.

One place, because the API's GET, its lists and the webhook payloads must agree exactly.
Times are RFC 3339 UTC with milliseconds; money is a decimal string in USD.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from core.store.jobs import BatchSummary
from core.store.models import ApiKey, Batch, Job, JobAttempt, Tenant, as_utc


def rfc3339(value: datetime | None) -> str | None:
    value = as_utc(value)
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def money(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "") else text


def job_object(job: Job) -> dict[str, Any]:
    usage = None
    if job.input_tokens is not None or job.output_tokens is not None:
        usage = {"input_tokens": job.input_tokens or 0, "output_tokens": job.output_tokens or 0}
    served_by = None
    if job.served_provider is not None:
        served_by = {"provider": job.served_provider, "model": job.served_model}
    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "model": job.model,
        "priority": job.priority,
        "batch_id": job.batch_id,
        "custom_id": job.custom_id,
        "metadata": job.metadata_ or {},
        "attempts": job.attempts,
        "created_at": rfc3339(job.created_at),
        "started_at": rfc3339(job.started_at),
        "finished_at": rfc3339(job.finished_at),
        "result": job.result,
        "error": job.error,
        "usage": usage,
        "cost_usd": money(job.cost_usd),
        "served_by": served_by,
        "cached": bool(job.cached),
    }


def batch_status(batch: Batch, summary: BatchSummary) -> str:
    if summary.active > 0:
        return "in_progress"
    return "cancelled" if batch.cancelled_at is not None else "completed"


def batch_object(batch: Batch, summary: BatchSummary) -> dict[str, Any]:
    status = batch_status(batch, summary)
    completed_at = None
    if status != "in_progress":
        completed_at = batch.completed_at or summary.last_finished_at or batch.cancelled_at
    return {
        "id": batch.id,
        "object": "batch",
        "status": status,
        "priority": batch.priority,
        "counts": {"total": batch.total, **summary.counts},
        "created_at": rfc3339(batch.created_at),
        "completed_at": rfc3339(completed_at),
        "usage": {"input_tokens": summary.input_tokens, "output_tokens": summary.output_tokens},
        "cost_usd": money(summary.cost_usd),
        "metadata": batch.metadata_ or {},
    }


def attempt_object(attempt: JobAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "provider": attempt.provider,
        "model": attempt.model,
        "outcome": attempt.outcome,
        "error": attempt.error_message,
        "latency_ms": attempt.latency_ms,
        "started_at": rfc3339(attempt.started_at),
        "route": attempt.route,
    }


def key_object(key: ApiKey, tenant_name: str | None) -> dict[str, Any]:
    """A key as the operator API and `jobgate keys list --json` show it: never the secret."""
    return {
        "id": key.id,
        "object": "api_key",
        "scope": key.scope,
        "tenant": tenant_name,
        "name": key.name,
        "prefix": key.prefix,
        "models": key.models,
        "allow_interactive": key.allow_interactive,
        "budget_usd_day": money(key.budget_usd_day),
        "budget_usd_month": money(key.budget_usd_month),
        "created_at": rfc3339(key.created_at),
        "expires_at": rfc3339(key.expires_at),
        "revoked_at": rfc3339(key.revoked_at),
    }


def tenant_object(tenant: Tenant) -> dict[str, Any]:
    """A tenant's row as the operator API shows it: NULL fields fall back to the config file."""
    return {
        "id": tenant.id,
        "object": "tenant",
        "name": tenant.name,
        "rpm": tenant.rpm,
        "tpm": tenant.tpm,
        "budget_usd_day": money(tenant.budget_usd_day),
        "budget_usd_month": money(tenant.budget_usd_month),
        "share": tenant.share,
        "shared_cache": tenant.shared_cache,
        "retention_days": tenant.retention_days,
        "created_at": rfc3339(tenant.created_at),
        "updated_at": rfc3339(tenant.updated_at),
    }
