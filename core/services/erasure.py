"""Erasure on request: `DELETE /v1/jobs/{id}` and `DELETE /v1/batches/{id}`.

A client's prompts and answers go at once: a job's request body, result, error, metadata,
custom id and webhook URL, its attempts' error messages, its webhook deliveries (their
payloads are the job as it was, and their attempts the receivers' answers), and for a batch
also its metadata, webhook URL, events and the OpenAI batch record with its output and error
files. What usage and billing need stays on the row (tokens, cost, model, served model, key,
times, status) until the retention purge (core/services/retention.py) removes it, so
`/v1/usage` and the spend figures do not move; `erased_at` hides the job or batch from every
read, as if it were gone. The Idempotency-Key goes too: a repeat makes new work.

Only final work can be erased: a job still queued or running would write its answer after
the erasure, so the client is asked to cancel it first (409); a batch must have every job
final. The uploaded input file of an OpenAI batch is the client's own object: it stays until
`DELETE /openai/v1/files/{id}` or the retention window.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, null, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict
from core.store import jobs as store
from core.store.models import Batch, Job, JobAttempt, OpenAIBatch, StoredFile, WebhookDelivery

NO_SYNC = {"synchronize_session": False}


async def erase_job(session: AsyncSession, job: Job, now: datetime) -> None:
    """Erase one final job's content (Conflict while it is queued or running). Commits."""
    if job.status not in store.FINAL_STATES:
        raise Conflict(
            f"Job {job.id} is {job.status}: cancel it first (POST /v1/jobs/{job.id}/cancel),"
            " then delete it once it is final.",
            param="job_id",
        )
    await _erase_jobs(session, Job.id == job.id, now)
    await session.commit()


async def erase_batch(session: AsyncSession, batch: Batch, now: datetime) -> None:
    """Erase a batch whose every job is final, with its jobs (Conflict otherwise). Commits."""
    active = (await session.execute(select(store.batch_active_jobs_stmt(batch.id).exists()))).scalar()
    if active:
        raise Conflict(
            f"Batch {batch.id} still has jobs queued or running: cancel it first"
            f" (POST /v1/batches/{batch.id}/cancel), then delete it once every job is final.",
            param="batch_id",
        )
    await _erase_jobs(session, Job.batch_id == batch.id, now)
    await session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.batch_id == batch.id), execution_options=NO_SYNC
    )
    record = (
        await session.execute(
            select(OpenAIBatch.output_file_id, OpenAIBatch.error_file_id).where(OpenAIBatch.id == batch.id)
        )
    ).first()
    if record is not None:
        written = [file_id for file_id in record if file_id is not None]
        if written:
            await session.execute(
                delete(StoredFile).where(StoredFile.id.in_(written)), execution_options=NO_SYNC
            )
        await session.execute(
            delete(OpenAIBatch).where(OpenAIBatch.id == batch.id), execution_options=NO_SYNC
        )
    await session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(
            {
                Batch.metadata_: {},
                Batch.webhook_url: None,
                Batch.idempotency_key: None,
                Batch.request_hash: None,
                Batch.erased_at: now,
            }
        ),
        execution_options=NO_SYNC,
    )
    await session.commit()


async def _erase_jobs(session: AsyncSession, which: ColumnElement[bool], now: datetime) -> None:
    job_ids = select(Job.id).where(which)
    # Deleted, not blanked: a pending retry would otherwise send a payload of nothing.
    await session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.job_id.in_(job_ids)), execution_options=NO_SYNC
    )
    await session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id.in_(job_ids), JobAttempt.error_message.is_not(None))
        .values(error_message=None),
        execution_options=NO_SYNC,
    )
    erased: dict[Any, Any] = {
        Job.request: {},
        Job.result: null(),
        Job.error: null(),
        Job.metadata_: {},
        Job.custom_id: None,
        Job.webhook_url: None,
        Job.idempotency_key: None,
        # The body's fingerprint: a sync retry must not attach to an erased job either.
        Job.request_hash: None,
        Job.erased_at: now,
    }
    await session.execute(update(Job).where(which).values(erased), execution_options=NO_SYNC)
