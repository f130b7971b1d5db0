"""Retention: what jobgate stores is deleted once it is older than the tenant's window.

A tenant's window is `JOBGATE_RETENTION_DAYS`, or the tenant's own `retention_days` when that
is shorter (core/tenancy.py resolves it from SQL over the config file). Past it go finished
jobs with their attempts and webhook deliveries (a batch's jobs once the batch is complete),
then batches left without jobs with their events and OpenAI batch records, and uploaded or
written files (also any past their own `expires_after`). A job's usage is first added to
`usage_rollups` (core/services/usage.py) in the transaction that deletes it, from what that
DELETE returned, so `/v1/usage` totals never change and two purgers can never count a job
twice. Idempotency-Keys older than `JOBGATE_IDEMPOTENCY_TTL_S` are cleared (the lookups ignore
them already), which frees the unique key for a new request.

Work goes in chunks of a few hundred rows, one short transaction each, so the purge never
holds locks the hot path waits on for long. `RetentionPurger` runs it once per fleet from
the worker's sweeper thread: a Redis lock picks the worker, and its TTL, once a purge is
complete, is the time until the next one is due.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from functools import partial
from typing import Any

import redis
import structlog
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.config import GatewayConfig
from core.redis.keys import Keys
from core.services.usage import ROLLUP_COLUMNS, rollup_rows
from core.store import jobs as store
from core.store.clock import SqlClock
from core.store.models import Batch, Job, OpenAIBatch, StoredFile, Tenant, UsageRollup, WebhookDelivery
from core.tenancy import resolve_policy

log = structlog.get_logger("jobgate.retention")

CHUNK_ROWS = 500
# A file may hold up to 200 MiB in 1 MiB rows: fewer of them per transaction.
FILE_CHUNK_ROWS = 10
# Tenant ids per statement (SQLite allows 32,766 bound values, Postgres 65,535).
TENANTS_PER_STATEMENT = 500
# How long a sweeper turn purges before it hands the thread back to the sweep.
TURN_S = 10.0
# The lock's TTL while a purge runs, renewed before each chunk: a dead purger's lapses soon.
LOCK_LEASE_S = 60.0

NO_SYNC = {"synchronize_session": False}


@dataclass
class PurgeReport:
    jobs: int = 0
    batches: int = 0
    openai_batches: int = 0
    files: int = 0
    job_keys: int = 0
    batch_keys: int = 0
    # False when the purge stopped before the end (its turn was over, or its lock was lost).
    complete: bool = True

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "complete")


def retention_windows(session: Session, config: GatewayConfig, retention_days: int) -> dict[int, list[str]]:
    """Tenant ids by their window in days: the global one, or the tenant's when shorter."""
    windows: dict[int, list[str]] = {}
    for tenant in session.execute(select(Tenant)).scalars():
        own = resolve_policy(tenant, config).retention_days
        days = retention_days if own is None else max(0, min(retention_days, own))
        windows.setdefault(days, []).append(tenant.id)
    return windows


def purge(
    sessions: sessionmaker[Session],
    clock: SqlClock,
    config: GatewayConfig,
    *,
    retention_days: int,
    idempotency_ttl_s: float,
    chunk_rows: int = CHUNK_ROWS,
    keep_going: Callable[[], bool] = lambda: True,
) -> PurgeReport:
    """Delete everything past its window, a chunk per transaction, while `keep_going()`."""
    report = PurgeReport()

    def drain(step: Callable[[Session], int], limit: int) -> int:
        done = 0
        while report.complete:
            if not keep_going():
                report.complete = False
                break
            with sessions() as session:
                count = step(session)
                session.commit()
            done += count
            if count < limit:
                break
        return done

    with sessions() as session:
        windows = retention_windows(session, config, retention_days)
    now = clock.now()
    for days, tenant_ids in sorted(windows.items()):
        cutoff = now - timedelta(days=days)
        for group in _slices(tenant_ids, TENANTS_PER_STATEMENT):
            report.jobs += drain(
                partial(purge_jobs, tenant_ids=group, cutoff=cutoff, limit=chunk_rows), chunk_rows
            )
            report.batches += drain(
                partial(purge_batches, tenant_ids=group, cutoff=cutoff, limit=chunk_rows), chunk_rows
            )
            report.openai_batches += drain(
                partial(purge_orphan_openai_batches, tenant_ids=group, cutoff=cutoff, limit=chunk_rows),
                chunk_rows,
            )
            report.files += drain(
                partial(purge_files, tenant_ids=group, cutoff=cutoff, now=now, limit=FILE_CHUNK_ROWS),
                FILE_CHUNK_ROWS,
            )
    key_cutoff = now - timedelta(seconds=idempotency_ttl_s)
    report.job_keys += drain(
        partial(release_keys, model=Job, cutoff=key_cutoff, limit=chunk_rows), chunk_rows
    )
    report.batch_keys += drain(
        partial(release_keys, model=Batch, cutoff=key_cutoff, limit=chunk_rows), chunk_rows
    )
    return report


def purge_jobs(session: Session, tenant_ids: Sequence[str], cutoff: Any, limit: int) -> int:
    """One chunk of the oldest final jobs finished before `cutoff`, with their attempts (by
    cascade) and webhook deliveries, their usage rolled up first. A batch's jobs wait for the
    batch to be complete, so its counts and results stay whole while it runs."""
    batch_closed = or_(
        Job.batch_id.is_(None),
        select(Batch.id).where(Batch.id == Job.batch_id, Batch.completed_at.is_not(None)).exists(),
    )
    chosen = (
        select(Job.id)
        .where(
            Job.tenant_id.in_(tenant_ids),
            Job.status.in_(store.FINAL_STATES),
            Job.finished_at < cutoff,
            batch_closed,
        )
        .order_by(Job.finished_at)
        .limit(limit)
        # Concurrent purgers (the lock lapsed mid-chunk) take different rows on Postgres.
        .with_for_update(of=Job, skip_locked=True)
    )
    job_ids = list(session.execute(chosen).scalars())
    if not job_ids:
        return 0
    session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.job_id.in_(job_ids)), execution_options=NO_SYNC
    )
    # Rolled up from what this DELETE removed: a job another purger deleted first is not here.
    gone = session.execute(
        delete(Job).where(Job.id.in_(job_ids)).returning(*ROLLUP_COLUMNS), execution_options=NO_SYNC
    ).all()
    rollups = rollup_rows(gone)
    if rollups:
        session.execute(insert(UsageRollup), rollups)
    return len(gone)


def purge_batches(session: Session, tenant_ids: Sequence[str], cutoff: Any, limit: int) -> int:
    """One chunk of batches finished before `cutoff` whose jobs are all gone, with their events
    and OpenAI batch records (and those records' output and error files)."""
    no_jobs = ~select(Job.id).where(Job.batch_id == Batch.id).exists()
    chosen = (
        select(Batch.id)
        .where(
            Batch.tenant_id.in_(tenant_ids),
            # A batch that never had a job is never marked completed: its age is its creation's.
            func.coalesce(Batch.completed_at, Batch.created_at) < cutoff,
            no_jobs,
        )
        .limit(limit)
        .with_for_update(of=Batch, skip_locked=True)
    )
    batch_ids = list(session.execute(chosen).scalars())
    if not batch_ids:
        return 0
    session.execute(
        delete(WebhookDelivery).where(WebhookDelivery.batch_id.in_(batch_ids)), execution_options=NO_SYNC
    )
    delete_openai_batches(session, batch_ids)
    result = session.execute(delete(Batch).where(Batch.id.in_(batch_ids)), execution_options=NO_SYNC)
    return store.rowcount(result)


def purge_orphan_openai_batches(session: Session, tenant_ids: Sequence[str], cutoff: Any, limit: int) -> int:
    """OpenAI batch records created before `cutoff` without a jobgate batch (their input
    failed validation, so no job was made)."""
    chosen = (
        select(OpenAIBatch.id)
        .where(
            OpenAIBatch.tenant_id.in_(tenant_ids),
            OpenAIBatch.created_at < cutoff,
            ~select(Batch.id).where(Batch.id == OpenAIBatch.id).exists(),
        )
        .limit(limit)
    )
    return delete_openai_batches(session, list(session.execute(chosen).scalars()))


def delete_openai_batches(session: Session, batch_ids: Sequence[str]) -> int:
    """These OpenAI batch records and the output and error files written for them."""
    if not batch_ids:
        return 0
    written = session.execute(
        select(OpenAIBatch.output_file_id, OpenAIBatch.error_file_id).where(OpenAIBatch.id.in_(batch_ids))
    ).all()
    file_ids = [file_id for row in written for file_id in row if file_id is not None]
    if file_ids:
        session.execute(delete(StoredFile).where(StoredFile.id.in_(file_ids)), execution_options=NO_SYNC)
    result = session.execute(
        delete(OpenAIBatch).where(OpenAIBatch.id.in_(batch_ids)), execution_options=NO_SYNC
    )
    return store.rowcount(result)


def purge_files(session: Session, tenant_ids: Sequence[str], cutoff: Any, now: Any, limit: int) -> int:
    """Files (and their chunks, by cascade) made before `cutoff`, or past their own expiry."""
    chosen = (
        select(StoredFile.id)
        .where(
            StoredFile.tenant_id.in_(tenant_ids),
            or_(StoredFile.created_at < cutoff, StoredFile.expires_at < now),
        )
        .limit(limit)
    )
    file_ids = list(session.execute(chosen).scalars())
    if not file_ids:
        return 0
    result = session.execute(delete(StoredFile).where(StoredFile.id.in_(file_ids)), execution_options=NO_SYNC)
    return store.rowcount(result)


def release_keys(session: Session, model: type[Job] | type[Batch], cutoff: Any, limit: int) -> int:
    """Clear one chunk of Idempotency-Keys made before `cutoff`: the unique key is free again."""
    chosen = (
        select(model.id).where(model.idempotency_key.is_not(None), model.created_at < cutoff).limit(limit)
    )
    stmt = update(model).where(model.id.in_(chosen)).values(idempotency_key=None)
    return store.rowcount(session.execute(stmt, execution_options=NO_SYNC))


def _slices(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RetentionPurger:
    """Runs the purge once per fleet, a bounded turn at a time, from every worker's sweeper.

    A turn takes the fleet lock (`Keys.maintenance_lock("retention")`) if it is free, and
    purges for up to `turn_s`, renewing the lock before each chunk (a purger that lost it
    stops). A complete purge leaves the lock to expire `interval_s` later, when the next
    purge is due, wherever it runs; an unfinished one releases it, so the next sweep goes on.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: SqlClock,
        client: redis.Redis,
        keys: Keys,
        config: GatewayConfig,
        *,
        retention_days: int,
        idempotency_ttl_s: float,
        interval_s: float,
        turn_s: float = TURN_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions, self.clock, self.client, self.config = sessions, clock, client, config
        self.lock_key = keys.maintenance_lock("retention")
        self.retention_days = retention_days
        self.idempotency_ttl_s = idempotency_ttl_s
        self.interval_s = interval_s
        self.turn_s = turn_s
        self._monotonic = monotonic

    def run_turn(self) -> PurgeReport | None:
        """One turn of the purge; None when another purger holds the lock or none is due."""
        lock = self.client.lock(self.lock_key, timeout=LOCK_LEASE_S, blocking=False, thread_local=False)
        if not lock.acquire():
            return None
        ends = self._monotonic() + self.turn_s

        def keep_going() -> bool:
            if self._monotonic() >= ends:
                return False
            try:
                return bool(lock.reacquire())
            except redis.exceptions.LockNotOwnedError:
                log.warning("retention_lock_lost")
                return False

        try:
            report = purge(
                self.sessions,
                self.clock,
                self.config,
                retention_days=self.retention_days,
                idempotency_ttl_s=self.idempotency_ttl_s,
                keep_going=keep_going,
            )
        except BaseException:
            self._let_go(lock)
            raise
        if report.complete:
            try:
                lock.extend(self.interval_s, replace_ttl=True)
            except redis.exceptions.LockError:
                log.warning("retention_lock_lost")
        else:
            self._let_go(lock)
        if report:
            log.info(
                "retention_purge",
                jobs=report.jobs,
                batches=report.batches,
                openai_batches=report.openai_batches,
                files=report.files,
                idempotency_keys=report.job_keys + report.batch_keys,
                complete=report.complete,
            )
        return report

    def _let_go(self, lock: Any) -> None:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("retention_lock_lost")
