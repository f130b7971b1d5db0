"""Webhook events as an outbox: deliveries are rows written in the same transaction as the
state change they announce, so a crash between "job finished" and "event queued" loses
nothing (the sweeper dispatches pending deliveries that have no message).

A job's final state produces `job.succeeded|failed|cancelled` for its own `webhook_url` (or
its batch's) and for every enabled tenant endpoint subscribed to the event; the last job of
a batch to finish also produces one `batch.completed`. Payloads are the job or batch object
as GET returns it; a result over 256 KB is replaced by a link to the job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.ids import new_id
from core.representation import batch_object, job_object, rfc3339
from core.store import jobs as store
from core.store.models import Batch, Job, TenantWebhookSecret, WebhookDelivery, WebhookEndpoint, as_utc
from core.store.retry import is_connection_error
from core.webhooks.signing import new_secret

log = structlog.get_logger("jobgate.webhooks")

MAX_INLINE_RESULT_BYTES = 256 * 1024
SECRET_OVERLAP = timedelta(hours=24)
EVENT_TYPES = ("job.succeeded", "job.failed", "job.cancelled", "batch.completed")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Destination:
    url: str
    endpoint_id: str | None


def _payload(event_type: str, data: dict[str, Any], now: datetime) -> str:
    return json.dumps(
        {"type": event_type, "timestamp": rfc3339(now), "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _job_payload(event_type: str, job: Job, now: datetime) -> str:
    """The job's event; a result over MAX_INLINE_RESULT_BYTES is replaced by a link to the job.
    Serialised once in the usual case: the result is measured only when the payload is large."""
    data = job_object(job)
    payload = _payload(event_type, data, now)
    result = data["result"]
    too_large = len(payload) > MAX_INLINE_RESULT_BYTES and result is not None
    if too_large and len(json.dumps(result)) > MAX_INLINE_RESULT_BYTES:
        data["result"] = None
        data["result_url"] = f"/v1/jobs/{job.id}"
        payload = _payload(event_type, data, now)
    return payload


def _endpoints(session: Session, tenant_id: str, event_type: str) -> list[Destination]:
    stmt = select(WebhookEndpoint.id, WebhookEndpoint.url, WebhookEndpoint.events).where(
        WebhookEndpoint.tenant_id == tenant_id,
        WebhookEndpoint.enabled.is_(True),
        WebhookEndpoint.deleted_at.is_(None),
    )
    return [
        Destination(url, endpoint_id)
        for endpoint_id, url, events in session.connection().execute(stmt)
        if not events or event_type in events
    ]


def _delivery_rows(
    *,
    tenant_id: str,
    event_type: str,
    payload: str,
    destinations: list[Destination],
    now: datetime,
    job_id: str | None = None,
    batch_id: str | None = None,
) -> list[dict[str, Any]]:
    """One outbox row per destination, for one Core INSERT per chunk of jobs (every final write
    with a destination pays for it; the ORM's unit of work adds nothing these rows need)."""
    return [
        {
            "id": new_id("dlv"),
            "tenant_id": tenant_id,
            "job_id": job_id,
            "batch_id": batch_id,
            "endpoint_id": destination.endpoint_id,
            "url": destination.url,
            "event_type": event_type,
            "webhook_id": new_id("msg"),
            "payload": payload,
            "status": PENDING,
            "attempt_count": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for destination in destinations
    ]


def _insert_deliveries(session: Session, rows: list[dict[str, Any]]) -> list[str]:
    if rows:
        session.connection().execute(insert(WebhookDelivery), rows)
    return [row["id"] for row in rows]


@dataclass(frozen=True)
class JobRoute:
    """What decides where a final job's event goes, when the caller knows it already (a
    worker's claim carries it): the routing read is then skipped, or cut to the batches'
    URLs."""

    tenant_id: str
    status: str
    webhook_url: str | None
    batch_id: str | None


def commit_final(
    session: Session, job_ids: list[str], now: datetime, *, routes: Mapping[str, JobRoute] | None = None
) -> list[str]:
    """Commit the transaction that made `job_ids` final, with their webhook outbox rows; then
    announce the batches they completed. Returns the new delivery ids, to dispatch.

    The batch check runs after the commit, in a transaction of its own: of the jobs that
    finish a batch concurrently, the last to commit is sure to see all of them final (its
    check starts after every commit), so no lock is needed. Checking inside the transaction
    would need one on the batch row, which made every job of a batch finish one at a time
    (the throughput benchmark's bottleneck). A crash between the two leaves the batch for
    the sweeper (`mark_batches_completed` over `store.unannounced_batches_stmt`).
    """
    deliveries, batch_ids = record_jobs_final(session, job_ids, now, routes=routes)
    session.commit()
    if not batch_ids:
        return deliveries
    try:
        deliveries += announce_completed_batches(session, batch_ids, now)
        session.commit()
    except DBAPIError as exc:
        # The jobs are final and committed; a lost connection here only delays the batch's
        # announcement to the sweeper. Raising would make a caller retry a write that is done.
        if not is_connection_error(exc):
            raise
        session.rollback()
        log.warning("batch_check_left_to_sweeper", batches=len(batch_ids), error=type(exc).__name__)
    return deliveries


def record_jobs_final(
    session: Session, job_ids: list[str], now: datetime, *, routes: Mapping[str, JobRoute] | None = None
) -> tuple[list[str], list[str]]:
    """In the transaction that made the jobs final: their deliveries, with endpoints read once
    per tenant and event. Returns the delivery ids and the ids of the batches they belong to.

    Reads only the columns that route events; the whole job (prompt and answer) is loaded
    only for a job that has somewhere to be sent (most jobs of a polled batch have not)."""
    endpoints: dict[tuple[str, str], list[Destination]] = {}
    batch_ids: dict[str, None] = {}  # in order, once each
    ids: list[str] = []
    for start in range(0, len(job_ids), 1_000):
        chunk = job_ids[start : start + 1_000]
        sends: dict[str, tuple[str, list[Destination]]] = {}  # job id -> event, destinations
        for job_id, tenant_id, status, job_url, batch_id, batch_url in _routes(session, chunk, routes):
            if status not in store.FINAL_STATES:
                continue
            if batch_id is not None:
                batch_ids[batch_id] = None
            event_type = f"job.{status}"
            key = (tenant_id, event_type)
            if key not in endpoints:
                endpoints[key] = _endpoints(session, tenant_id, event_type)
            destinations = list(endpoints[key])
            own_url = job_url or batch_url
            if own_url:
                destinations.insert(0, Destination(own_url, None))
            if destinations:
                sends[job_id] = (event_type, destinations)
        if not sends:
            continue
        # The jobs with somewhere to be sent, whole (their payload), in one read per chunk.
        jobs = session.execute(
            select(Job).where(Job.id.in_(list(sends))).execution_options(populate_existing=True)
        ).scalars()
        rows: list[dict[str, Any]] = []
        for job in jobs:
            event_type, destinations = sends[job.id]
            rows += _delivery_rows(
                tenant_id=job.tenant_id,
                event_type=event_type,
                payload=_job_payload(event_type, job, now),
                destinations=destinations,
                now=now,
                job_id=job.id,
                batch_id=job.batch_id,
            )
        ids += _insert_deliveries(session, rows)
    return ids, list(batch_ids)


def _routes(
    session: Session, job_ids: list[str], known: Mapping[str, JobRoute] | None
) -> list[tuple[str, str, str, str | None, str | None, str | None]]:
    """(job id, tenant, status, job URL, batch id, batch URL) for each job: read, or from
    `known` with only the batches' URLs read (nothing when no job is in a batch)."""
    if known is None:
        stmt = (
            select(Job.id, Job.tenant_id, Job.status, Job.webhook_url, Batch.id, Batch.webhook_url)
            .outerjoin(Batch, Batch.id == Job.batch_id)
            .where(Job.id.in_(job_ids))
        )
        return [(a, b, c, d, e, f) for a, b, c, d, e, f in session.connection().execute(stmt)]
    batch_ids = {known[job_id].batch_id for job_id in job_ids} - {None}
    batch_urls: dict[str | None, str | None] = {}
    if batch_ids:
        urls = select(Batch.id, Batch.webhook_url).where(Batch.id.in_(batch_ids))
        batch_urls = {batch_id: url for batch_id, url in session.connection().execute(urls)}
    routes = [(job_id, known[job_id]) for job_id in job_ids]
    return [
        (job_id, r.tenant_id, r.status, r.webhook_url, r.batch_id, batch_urls.get(r.batch_id))
        for job_id, r in routes
    ]


def announce_completed_batches(session: Session, batch_ids: list[str], now: datetime) -> list[str]:
    """Of these batches, marks completed those whose every job is final (as committed)."""
    done = [
        batch_id
        for batch_id in batch_ids
        if session.execute(store.batch_active_jobs_stmt(batch_id).limit(1)).first() is None
    ]
    return mark_batches_completed(session, done, now)


def mark_batches_completed(session: Session, batch_ids: list[str], now: datetime) -> list[str]:
    """Marks completed batches known to have every job final, once: the first caller to set
    `completed_at` writes the `batch.completed` deliveries. The caller commits."""
    ids: list[str] = []
    for batch_id in batch_ids:
        batch = session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.completed_at.is_(None))
            .values(completed_at=now)
            .returning(Batch)
            .execution_options(synchronize_session=False, populate_existing=True)
        ).scalar_one_or_none()
        if batch is not None:
            ids += _announce_batch(session, batch, now)
    return ids


def _announce_batch(session: Session, batch: Batch, now: datetime) -> list[str]:
    destinations = _endpoints(session, batch.tenant_id, "batch.completed")
    if batch.webhook_url:
        destinations.insert(0, Destination(batch.webhook_url, None))
    if not destinations:
        return []
    summary_rows = list(session.execute(store.batch_summary_stmt(batch.id)).all())
    data = batch_object(batch, store.summarise_batch(summary_rows))
    rows = _delivery_rows(
        tenant_id=batch.tenant_id,
        event_type="batch.completed",
        payload=_payload("batch.completed", data, now),
        destinations=destinations,
        now=now,
        batch_id=batch.id,
    )
    return _insert_deliveries(session, rows)


def tenant_secret(session: Session, tenant_id: str, now: datetime) -> TenantWebhookSecret:
    """The tenant's signing secret for per-job URLs, created on first use. Concurrent first
    uses (two webhook threads sending the tenant's first deliveries) all get the row of the
    one whose insert landed first: the others' inserts do nothing rather than fail."""
    row = session.get(TenantWebhookSecret, tenant_id)
    if row is not None:
        return row
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        dialect_insert(TenantWebhookSecret)
        .values(tenant_id=tenant_id, secret=new_secret(), created_at=now)
        .on_conflict_do_nothing(index_elements=[TenantWebhookSecret.tenant_id])
    )
    return session.execute(
        select(TenantWebhookSecret).where(TenantWebhookSecret.tenant_id == tenant_id)
    ).scalar_one()


def active_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets that sign right now: the current one, and the previous one during its overlap."""
    secrets = [secret]
    expires = as_utc(previous_expires_at)
    if previous and expires is not None and expires > now:
        secrets.append(previous)
    return secrets
