"""Fleet upkeep from SQL, the source of truth: reap expired leases, re-dispatch lost jobs.

Run by one worker in the fleet at a time (under a Redis lock; see workers/maintenance.py).
- Reaper: a `running` job whose lease expired (its worker died) goes back to `queued`, or
  fails with `attempts_exhausted` once it has used its attempts.
- Deadlines: a `queued` job whose deadline passed fails with `deadline_exceeded`, whether or
  not a worker would have taken it (a backlog, a model with no capacity left): the deadline
  holds without one, and the 24 h window of a compatibility surface's batch with it.
- Sweeper: a `queued`, due job older than a grace period whose message is no longer in
  Redis (Redis restarted empty, the API died between commit and enqueue) is enqueued again;
  so is one put back for longer than the broker holds delays, shortly before it comes due.
- Batches whose every job is final but that were never marked completed (a worker died
  between a last job's final write and the batch check after it) are announced.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.orm import Session, sessionmaker

from core import metrics, queue
from core.redis.keys import Keys
from core.services.execute import DEADLINE_PASSED
from core.services.lifecycle import Effects, apply_effects
from core.store import jobs as store
from core.store.clock import SqlClock
from core.store.models import Job, as_utc
from core.webhooks.delivery import overdue_deliveries
from core.webhooks.outbox import commit_final, mark_batches_completed

log = structlog.get_logger("jobgate.maintenance")

SWEEP_LIMIT = 20_000
REAP_LIMIT = 5_000
EXPIRE_LIMIT = 5_000
BATCH_LIMIT = 1_000


@dataclass(frozen=True)
class SweepReport:
    reaped: int
    failed: int
    redispatched: int
    expired: int = 0


def reap_expired_leases(sessions: sessionmaker[Session], clock: SqlClock) -> Effects:
    """One transaction; its effects: the jobs put back in the queue (to dispatch now), the jobs
    failed (final) and the webhook deliveries the failures produced."""
    requeued: list[tuple[str, str]] = []
    failed: list[str] = []
    with sessions() as session:
        rows = session.execute(store.expired_leases_stmt(clock.now(), REAP_LIMIT)).all()
        for job_id, attempts, max_attempts, priority in rows:
            exhausted = attempts >= max_attempts
            stmt = store.reap_job_stmt(job_id, attempts, clock.now(), exhausted=exhausted)
            if store.rowcount(session.execute(stmt)) == 1:
                if exhausted:
                    failed.append(job_id)
                else:
                    requeued.append((job_id, priority))
        deliveries = commit_final(session, failed, clock.utcnow())
    return Effects(
        finished=failed,
        deliveries=deliveries,
        dispatch=[(job_id, priority, 0) for job_id, priority in requeued],
    )


def expire_overdue_jobs(sessions: sessionmaker[Session], clock: SqlClock) -> Effects:
    """Queued jobs whose deadline passed → failed (`deadline_exceeded`), a chunk at a time, each
    chunk's webhook outbox rows in its transaction; their batches are announced if that
    completed them. A job a worker claims meanwhile is left to it (the update wants `queued`)."""
    effects = Effects()
    while True:
        with sessions() as session:
            now = clock.now()
            overdue = list(session.execute(store.overdue_queued_stmt(now, EXPIRE_LIMIT)).scalars())
            if not overdue:
                return effects
            stmt = store.expire_queued_stmt(overdue, now, DEADLINE_PASSED).returning(Job.id)
            expired = list(session.execute(stmt).scalars())
            effects.deliveries += commit_final(session, expired, clock.utcnow())
        effects.finished += expired
        if len(overdue) < EXPIRE_LIMIT:
            return effects


def announce_unannounced_batches(session: Session, clock: SqlClock, *, older_than_s: float) -> list[str]:
    """Batches whose last job's worker died between its final write and the batch check."""
    stmt = store.unannounced_batches_stmt(clock.now(), older_than_s, BATCH_LIMIT)
    batch_ids = list(session.execute(stmt).scalars())
    deliveries = mark_batches_completed(session, batch_ids, clock.utcnow())
    session.commit()
    return deliveries


def find_lost_jobs(
    sessions: sessionmaker[Session],
    clock: SqlClock,
    broker: RedisBroker,
    *,
    older_than_s: float,
    ahead_s: float = 0.0,
) -> list[tuple[str, str, int]]:
    """Queued jobs without a message in Redis that are due or come due within `ahead_s`, as
    (job_id, priority, due Unix ms) to enqueue them with: 0 for those already due."""
    now = clock.utcnow()
    with sessions() as session:
        rows = list(
            session.execute(store.stale_queued_stmt(clock.now(), older_than_s, SWEEP_LIMIT, ahead_s=ahead_s))
        )
    if not rows:
        return []
    pending = queue.pending_job_ids(broker, [(r[0], r[1]) for r in rows])
    lost: list[tuple[str, str, int]] = []
    for job_id, priority, not_before in rows:
        if job_id not in pending:
            due_at = as_utc(not_before)
            due_in = 0.0 if due_at is None else (due_at - now).total_seconds()
            lost.append((job_id, priority, queue.due_ms(int(due_in * 1000))))
    return lost


def sweep(
    sessions: sessionmaker[Session],
    clock: SqlClock,
    broker: RedisBroker,
    keys: Keys,
    *,
    redispatch_after_s: float,
    ahead_s: float = 0.0,
) -> SweepReport:
    """One pass of fleet upkeep. `ahead_s`: jobs put back with a delay too long for the broker
    (their `not_before` is in SQL only) that come due within it are enqueued now with the
    rest of their delay, so they run on time rather than at the first sweep after it."""
    reaped = reap_expired_leases(sessions, clock)
    # Dispatched first, so the reaped jobs count as pending below and are not sent twice.
    apply_effects(reaped, broker, keys)
    expired = expire_overdue_jobs(sessions, clock)
    apply_effects(expired, broker, keys)
    lost = find_lost_jobs(sessions, clock, broker, older_than_s=redispatch_after_s, ahead_s=ahead_s)
    queue.run_broker_maintenance(broker)
    later = Effects(dispatch=lost)
    with sessions() as session:
        later.deliveries += overdue_deliveries(session, clock.utcnow(), grace_s=redispatch_after_s)
        later.deliveries += announce_unannounced_batches(session, clock, older_than_s=redispatch_after_s)
    apply_effects(later, broker, keys)
    if reaped.finished or expired.finished:
        metrics.record_jobs_finished("failed", len(reaped.finished) + len(expired.finished))
    report = SweepReport(
        reaped=len(reaped.dispatch),
        failed=len(reaped.finished),
        redispatched=len(later.dispatch),
        expired=len(expired.finished),
    )
    if reaped or expired or later:
        log.info(
            "sweep",
            reaped=report.reaped,
            failed=report.failed,
            redispatched=report.redispatched,
            expired=report.expired,
            webhook_deliveries=len(reaped.deliveries) + len(expired.deliveries) + len(later.deliveries),
        )
    return report
