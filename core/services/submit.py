"""Accepting work: turn validated job requests into committed rows, then dispatch them.

A job exists once its row is committed (DESIGN.md principle 1), so the order is always
INSERT → COMMIT → enqueue. If the enqueue fails (Redis down, process killed in between),
the job is still safe: the sweeper finds queued jobs without a message and dispatches them.
A batch is one transaction (all or nothing) and one pipelined enqueue. A batch request that
cannot run (a message batch's un-runnable `params`) is stored failed at once, in the same
transaction with its webhook outbox rows, and never enqueued.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from core import metrics, tracing
from core.errors import Conflict
from core.ids import new_id
from core.services.lifecycle import Effects
from core.store import jobs as store
from core.store.models import Batch, Job, StoredFile, as_utc
from core.webhooks.outbox import commit_final

Keyed = TypeVar("Keyed", Job, Batch, StoredFile)


@dataclass(frozen=True)
class JobSpec:
    """One validated job request: the chat body plus jobgate's own options."""

    body: dict[str, Any]  # OpenAI chat fields only, `model` included
    priority: str
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    use_cache: bool = True
    deadline: datetime | None = None
    custom_id: str | None = None
    # The key that submitted it: its own budgets apply.
    api_key_id: str | None = None
    # Set for a batch request refused before it could run: the job is stored `failed` with
    # this error (`{"type", "message", "param"?}`) and never dispatched.
    refusal: dict[str, Any] | None = None


@dataclass(frozen=True)
class BatchSpec:
    priority: str
    webhook_url: str | None = None
    metadata: dict[str, str] | None = None
    # A client's Idempotency-Key and the fingerprint of the body it came with.
    idempotency_key: str | None = None
    request_hash: str | None = None


def request_hash(payload: Any) -> str:
    """Fingerprint of a request body as sent, for Idempotency-Key comparisons."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_row(
    spec: JobSpec,
    *,
    tenant_id: str,
    now: datetime,
    max_attempts: int,
    job_id: str | None = None,
    batch_id: str | None = None,
    seq: int | None = None,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    request_id: str | None = None,
    traceparent: str | None = None,
) -> dict[str, Any]:
    return {
        "id": job_id or new_id("job"),
        "tenant_id": tenant_id,
        "batch_id": batch_id,
        "seq": seq,
        "custom_id": spec.custom_id,
        "model": spec.body["model"],
        "priority": spec.priority,
        "status": store.QUEUED if spec.refusal is None else store.FAILED,
        "error": spec.refusal,
        "finished_at": None if spec.refusal is None else now,
        "request": spec.body,
        "metadata_": spec.metadata or {},
        "webhook_url": spec.webhook_url,
        "use_cache": spec.use_cache,
        "deadline": spec.deadline,
        "idempotency_key": idempotency_key,
        "request_hash": body_hash,
        "attempts": 0,
        "max_attempts": max_attempts,
        "cached": False,
        "request_id": request_id,
        "traceparent": traceparent,
        "api_key_id": spec.api_key_id,
        "created_at": now,
    }


async def made_with_key(
    session: AsyncSession, model: type[Keyed], tenant_id: str, key: str, keys_since: datetime | None
) -> Keyed | None:
    """The tenant's job, batch or file made with this Idempotency-Key, unless the key has expired
    (made before `keys_since`; None: keys never expire here). An expired key is cleared, and
    committed, so the new request's row can take it; the retention purge clears the rest."""
    stmt = select(model).where(model.tenant_id == tenant_id, model.idempotency_key == key)
    found = (await session.execute(stmt)).scalars().first()
    created_at = as_utc(found.created_at) if found is not None else None
    if found is None or keys_since is None or (created_at is not None and created_at >= keys_since):
        return found
    release = update(model).where(model.id == found.id, model.idempotency_key == key)
    await session.execute(
        release.values(idempotency_key=None), execution_options={"synchronize_session": False}
    )
    await session.commit()
    return None


async def existing_for_key(
    session: AsyncSession, tenant_id: str, key: str, body_hash: str, *, keys_since: datetime | None
) -> Job | None:
    """The tenant's job made with this Idempotency-Key since `keys_since`, if any; a Conflict
    when that job was made from another body."""
    existing = await made_with_key(session, Job, tenant_id, key, keys_since)
    if existing is not None and existing.request_hash != body_hash:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body; use a new key.",
            param="Idempotency-Key",
        )
    return existing


async def submit_job(
    session: AsyncSession,
    spec: JobSpec,
    *,
    tenant_id: str,
    now: datetime,
    max_attempts: int,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    request_id: str | None = None,
    keys_since: datetime | None,
) -> tuple[Job, bool]:
    """Insert and commit one job; returns (job, created). A repeat with the same key and body
    (made since `keys_since`) returns the first job with created=False; the same key with
    another body is a Conflict."""
    if idempotency_key is not None:
        assert body_hash is not None
        existing = await existing_for_key(
            session, tenant_id, idempotency_key, body_hash, keys_since=keys_since
        )
        if existing is not None:
            return existing, False
    row = job_row(
        spec,
        tenant_id=tenant_id,
        now=now,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        body_hash=body_hash,
        request_id=request_id,
        traceparent=tracing.current_traceparent(),
    )
    try:
        await session.execute(insert(Job), [row])
        await session.commit()
    except IntegrityError:
        # Two requests with one key raced; the loser answers with the winner's job.
        await session.rollback()
        if idempotency_key is None:
            raise
        existing = await existing_for_key(
            session, tenant_id, idempotency_key, body_hash or "", keys_since=None
        )
        if existing is None:
            raise
        return existing, False
    job = (await session.execute(select(Job).where(Job.id == row["id"]))).scalars().one()
    metrics.JOBS_SUBMITTED.labels(priority=spec.priority).inc()
    return job, True


def claimed_job(
    spec: JobSpec,
    *,
    tenant_id: str,
    now: datetime,
    max_attempts: int,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
) -> tuple[dict[str, Any], store.Claim]:
    """A new job's `jobs` row and its first claim, for a process that runs the job at once
    itself (the API's sync path): `store.insert_claimed` records both."""
    row = job_row(
        spec,
        tenant_id=tenant_id,
        now=now,
        max_attempts=max_attempts,
        request_id=request_id,
        idempotency_key=idempotency_key,
        body_hash=body_hash,
        traceparent=tracing.current_traceparent(),
    )
    row["metadata"] = row.pop("metadata_")  # the column's name (the ORM attribute's differs)
    claim = store.Claim(
        id=row["id"],
        attempt=1,
        tenant_id=tenant_id,
        model=row["model"],
        priority=spec.priority,
        request=spec.body,
        use_cache=spec.use_cache,
        max_attempts=max_attempts,
        deadline=spec.deadline,
        request_id=request_id,
        created_at=now,
        webhook_url=spec.webhook_url,
        api_key_id=spec.api_key_id,
        traceparent=row["traceparent"],
    )
    return row, claim


async def existing_batch_for_key(
    session: AsyncSession, tenant_id: str, key: str, body_hash: str, *, keys_since: datetime | None
) -> Batch | None:
    """The tenant's batch made with this Idempotency-Key since `keys_since`, if any; a
    Conflict when that batch was made from another body."""
    existing = await made_with_key(session, Batch, tenant_id, key, keys_since)
    if existing is not None and existing.request_hash != body_hash:
        raise Conflict(
            "This Idempotency-Key was already used with a different request body; use a new key.",
            param="Idempotency-Key",
        )
    return existing


async def submit_batch(
    session: AsyncSession,
    batch_spec: BatchSpec,
    jobs: Iterable[JobSpec],
    *,
    tenant_id: str,
    now: datetime,
    max_attempts: int,
    request_id: str | None = None,
    id_prefix: str = "batch",
    batch_id: str | None = None,
) -> tuple[Batch, list[tuple[str, str]], Effects]:
    """Insert the batch and all its jobs in one transaction (with whatever else the session
    holds); returns (batch, [(job_id, priority)] to dispatch, what the refused jobs leave to do
    after the commit). `id_prefix` names the surface that made it (`msgbatch` for Anthropic's),
    unless the caller chose the `batch_id`. A refused spec's job is final at once: it goes
    through the webhook outbox like any final job, and its batch may be complete already. A
    batch whose Idempotency-Key a concurrent request used first is that request's batch, with
    no jobs to dispatch (the caller checks `existing_batch_for_key` before, this settles the
    race)."""
    batch_id = batch_id or new_id(id_prefix)
    traceparent = tracing.current_traceparent()
    rows = [
        job_row(
            spec,
            tenant_id=tenant_id,
            now=now,
            max_attempts=max_attempts,
            batch_id=batch_id,
            seq=seq,
            request_id=request_id,
            traceparent=traceparent,
        )
        for seq, spec in enumerate(jobs)
    ]
    batch = Batch(
        id=batch_id,
        tenant_id=tenant_id,
        total=len(rows),
        priority=batch_spec.priority,
        webhook_url=batch_spec.webhook_url,
        metadata_=batch_spec.metadata or {},
        created_at=now,
        idempotency_key=batch_spec.idempotency_key,
        request_hash=batch_spec.request_hash,
    )
    refused = [row["id"] for row in rows if row["status"] == store.FAILED]
    finished = Effects(finished=refused)
    try:
        session.add(batch)
        await session.flush()
        for start in range(0, len(rows), 5_000):
            await session.execute(insert(Job), rows[start : start + 5_000])
        if refused:
            finished.deliveries = await session.run_sync(lambda sync: commit_final(sync, refused, now))
        else:
            await session.commit()
    except IntegrityError:
        await session.rollback()
        key, body_hash = batch_spec.idempotency_key, batch_spec.request_hash
        earlier = (
            await existing_batch_for_key(session, tenant_id, key, body_hash or "", keys_since=None)
            if key
            else None
        )
        if earlier is None:
            raise
        return earlier, [], Effects()
    for priority in {row["priority"] for row in rows}:
        metrics.JOBS_SUBMITTED.labels(priority=priority).inc(
            sum(1 for row in rows if row["priority"] == priority)
        )
    if refused:
        metrics.record_jobs_finished(store.FAILED, len(refused))
    queued = [(row["id"], row["priority"]) for row in rows if row["status"] == store.QUEUED]
    return batch, queued, finished
