"""Job and batch persistence: the state machine's transitions as conditional SQL statements.

Every transition is one conditional UPDATE, so concurrent actors cannot both win: a claim
succeeds only from `queued`, a final write only from the claim it belongs to (same attempt
number), a cancel only from a non-final state. Statement builders are shared by the async
API and the sync workers; the sync helpers below run them in worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Select, Table, Update, and_, bindparam, case, func, insert, or_, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.store.clock import SqlClock
from core.store.models import Batch, Job, JobAttempt, as_utc

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATES = (QUEUED, RUNNING)

CANCELLED_ERROR = {"type": "cancelled", "message": "The job was cancelled."}
# The error of a job whose deadline passed before it started (a worker's check, or the sweeper's).
DEADLINE_EXCEEDED = "deadline_exceeded"


# --- Statements shared by API and workers ------------------------------------------------------


def select_job(tenant_id: str, job_id: str) -> Select[Job]:
    """The tenant's job, unless it was erased (DELETE): then it is gone, as any unknown id."""
    return select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id, Job.erased_at.is_(None))


def select_jobs_page(
    tenant_id: str, *, status: str | None, batch_id: str | None, limit: int, after: str | None
) -> Select[Job]:
    """Newest first; `after` is the last id of the previous page (ids grow with time)."""
    stmt = select(Job).where(Job.tenant_id == tenant_id, Job.erased_at.is_(None))
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    if after is not None:
        stmt = stmt.where(Job.id < after)
    return stmt.order_by(Job.id.desc()).limit(limit + 1)


def select_batches_page(
    tenant_id: str, *, limit: int, after: str | None, before: str | None = None, id_prefix: str | None = None
) -> Select[Batch]:
    """Newest first: the page older than `after`, or the one just newer than `before`
    (then read in ascending order: reverse it); `id_prefix` keeps one surface's batches."""
    stmt = select(Batch).where(Batch.tenant_id == tenant_id, Batch.erased_at.is_(None))
    if id_prefix is not None:
        stmt = stmt.where(Batch.id.startswith(id_prefix, autoescape=True))
    if before is not None:
        return stmt.where(Batch.id > before).order_by(Batch.id.asc()).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(Batch.id < after)
    return stmt.order_by(Batch.id.desc()).limit(limit + 1)


def select_recent_twin(tenant_id: str, fingerprint: str, since_id: str) -> Select[str]:
    """The newest of the tenant's jobs made since `since_id` from the same request (same
    fingerprint) that is still to finish or succeeded: what a client's retry attaches to."""
    return (
        select(Job.id)
        .where(
            Job.tenant_id == tenant_id,
            Job.id >= since_id,
            Job.request_hash == fingerprint,
            Job.status.in_((QUEUED, RUNNING, SUCCEEDED)),
        )
        .order_by(Job.id.desc())
        .limit(1)
    )


def cancel_job_stmt(tenant_id: str, job_id: str, now: Any) -> Update:
    return (
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_STATES))
        .values(status=CANCELLED, finished_at=now, lease_until=None, error=CANCELLED_ERROR)
    )


def cancel_batch_jobs_stmt(batch_id: str, now: Any) -> Update:
    """Queued jobs of the batch → cancelled; running ones finish (CONTRACT.md)."""
    return (
        update(Job)
        .where(Job.batch_id == batch_id, Job.status == QUEUED)
        .values(status=CANCELLED, finished_at=now, error=CANCELLED_ERROR)
    )


def batch_summary_stmt(
    batch_id: str,
) -> Select[str, int, int | None, int | None, Decimal | None, datetime | None, int | None]:
    """Per status: count, tokens, cost, last finish, and how many failed past their deadline
    (the compatibility surfaces call those `expired`) — one grouped scan over the batch's index."""
    past_deadline = case((Job.error["type"].as_string() == DEADLINE_EXCEEDED, 1), else_=0)
    return (
        select(
            Job.status,
            func.count(),
            func.coalesce(func.sum(Job.input_tokens), 0),
            func.coalesce(func.sum(Job.output_tokens), 0),
            func.coalesce(func.sum(Job.cost_usd), 0),
            func.max(Job.finished_at),
            func.coalesce(func.sum(past_deadline), 0),
        )
        .where(Job.batch_id == batch_id)
        .group_by(Job.status)
    )


def batch_results_stmt(batch_id: str, *, after_seq: int, limit: int) -> Select[Any]:
    return (
        select(Job.seq, Job.custom_id, Job.id, Job.status, Job.result, Job.error)
        .where(Job.batch_id == batch_id, Job.seq > after_seq, Job.status.in_(FINAL_STATES))
        .order_by(Job.seq)
        .limit(limit)
    )


@dataclass(frozen=True)
class BatchSummary:
    counts: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    last_finished_at: datetime | None
    # Of the failed jobs, those whose deadline passed before they started.
    past_deadline: int = 0

    @property
    def active(self) -> int:
        return self.counts[QUEUED] + self.counts[RUNNING]


def summarise_batch(rows: list[Any]) -> BatchSummary:
    counts = {state: 0 for state in (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)}
    input_tokens = output_tokens = past_deadline = 0
    cost = Decimal(0)
    last: datetime | None = None
    for status, count, tokens_in, tokens_out, cost_usd, finished, deadline_failures in rows:
        counts[status] = counts.get(status, 0) + int(count)
        input_tokens += int(tokens_in)
        output_tokens += int(tokens_out)
        cost += Decimal(str(cost_usd))
        if status == FAILED:
            past_deadline += int(deadline_failures)
        if finished is not None and (last is None or finished > last):
            last = finished
    return BatchSummary(counts, input_tokens, output_tokens, cost, last, past_deadline)


# --- Worker-side transitions ------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A worker's hold on one attempt of a job, with the columns running it needs; final
    writes are conditional on it (same job, still running, same attempt number)."""

    id: str
    attempt: int
    tenant_id: str
    model: str
    priority: str
    request: dict[str, Any]
    use_cache: bool
    max_attempts: int
    deadline: datetime | None
    request_id: str | None
    created_at: datetime | None
    # Where its final event goes (with the batch's own URL and the tenant's endpoints).
    batch_id: str | None = None
    webhook_url: str | None = None
    # The key that submitted it (its own budgets apply).
    api_key_id: str | None = None
    # Its trace (core/tracing.py), None when traces were off at submission.
    traceparent: str | None = None


# Only what running a job needs: no ORM hydration of the whole row (DESIGN.md, claim in batches).
_CLAIM_COLUMNS = (
    Job.id,
    Job.attempts,
    Job.tenant_id,
    Job.model,
    Job.priority,
    Job.request,
    Job.use_cache,
    Job.max_attempts,
    Job.deadline,
    Job.request_id,
    Job.created_at,
    Job.batch_id,
    Job.webhook_url,
    Job.api_key_id,
    Job.traceparent,
)


def claim_jobs(session: Session, clock: SqlClock, job_ids: Sequence[str], *, lease_s: float) -> list[Claim]:
    """queued → running for every due job among `job_ids`, in one statement, counting the
    attempt; commits. Ids not returned were duplicates, cancelled, or not due yet."""
    if not job_ids:
        return []
    now = clock.now()
    stmt = (
        update(cast(Table, Job.__table__))
        .where(
            Job.id.in_(list(job_ids)),
            Job.status == QUEUED,
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        .values(
            status=RUNNING,
            attempts=Job.attempts + 1,
            lease_until=now + timedelta(seconds=lease_s),
            started_at=func.coalesce(Job.started_at, now),
            not_before=None,
        )
        .returning(*_CLAIM_COLUMNS)
    )
    rows = session.connection().execute(stmt).all()
    session.commit()
    return [
        Claim(
            id=row[0],
            attempt=row[1],
            tenant_id=row[2],
            model=row[3],
            priority=row[4],
            request=row[5],
            use_cache=row[6],
            max_attempts=row[7],
            deadline=as_utc(row[8]),
            request_id=row[9],
            created_at=as_utc(row[10]),
            batch_id=row[11],
            webhook_url=row[12],
            api_key_id=row[13],
            traceparent=row[14],
        )
        for row in rows
    ]


def insert_claimed(session: Session, clock: SqlClock, row: dict[str, Any], *, lease_s: float) -> None:
    """Insert a new job (`row`: `jobs` column values) already claimed by the caller: running,
    attempt 1, leased for `lease_s` by the SQL clock; commits. Run again after a commit whose
    answer was lost, it finds its own row (same id) and is done."""
    now = clock.now()
    table = cast(Table, Job.__table__)
    stmt = insert(table).values(started_at=now, lease_until=now + timedelta(seconds=lease_s))
    try:
        session.connection().execute(stmt, [{**row, "status": RUNNING, "attempts": 1}])
        session.commit()
    except IntegrityError:
        session.rollback()
        own = select(Job.id).where(Job.id == row["id"], Job.tenant_id == row["tenant_id"], Job.attempts == 1)
        if session.connection().execute(own).first() is None:
            raise


def not_due(session: Session, job_ids: Sequence[str]) -> dict[str, datetime]:
    """Of `job_ids`, the queued ones that are waiting for a `not_before`, with that time."""
    if not job_ids:
        return {}
    stmt = select(Job.id, Job.not_before).where(
        Job.id.in_(list(job_ids)), Job.status == QUEUED, Job.not_before.is_not(None)
    )
    due_at = {job_id: as_utc(due) for job_id, due in session.connection().execute(stmt)}
    return {job_id: due for job_id, due in due_at.items() if due is not None}


def rowcount(result: Any) -> int:
    """Rows an UPDATE matched (`CursorResult.rowcount`; the generic Result type hides it)."""
    return int(result.rowcount)


def _owns(claim: Claim) -> Any:
    return and_(Job.id == claim.id, Job.status == RUNNING, Job.attempts == claim.attempt)


# The columns a final write sets, with the value a failure leaves in those it does not name.
FINAL_COLUMNS: dict[str, Any] = {
    "status": None,
    "result": None,
    "error": None,
    "input_tokens": None,
    "output_tokens": None,
    "cost_usd": None,
    "served_provider": None,
    "served_model": None,
    "cached": False,
}


def finish_jobs(
    session: Session, clock: SqlClock, finals: Sequence[tuple[Claim, dict[str, Any]]]
) -> set[str]:
    """running → succeeded|failed for each (claim, final columns), as one executemany (one
    prepared statement, pipelined by the driver); returns the ids whose claim still held.

    Does not commit: the caller writes the jobs' webhook deliveries in the same transaction.
    When fewer rows than claims changed (a claim was lost to a cancel or the reaper meanwhile),
    one read tells which rows hold this write's values: a lost row holds another status, another
    attempt count, or the reaper's own error."""
    if not finals:
        return set()
    table = cast(Table, Job.__table__)
    stmt = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            table.c.attempts == bindparam("b_attempt"),
            table.c.status == RUNNING,
        )
        .values(finished_at=clock.now(), lease_until=None, **{c: bindparam(f"b_{c}") for c in FINAL_COLUMNS})
    )
    rows = [
        {
            "b_id": claim.id,
            "b_attempt": claim.attempt,
            **{f"b_{c}": v for c, v in {**FINAL_COLUMNS, **values}.items()},
        }
        for claim, values in finals
    ]
    if rowcount(session.connection().execute(stmt, rows)) == len(rows):
        return {claim.id for claim, _ in finals}
    wanted = {claim.id: (claim.attempt, values["status"], values.get("error")) for claim, values in finals}
    held = session.connection().execute(
        select(Job.id, Job.attempts, Job.status, Job.error).where(Job.id.in_(list(wanted)))
    )
    return {job_id for job_id, attempts, status, error in held if wanted[job_id] == (attempts, status, error)}


def holds(session: Session, claim: Claim, *, status: str, attempts: int) -> bool:
    """Whether the claim's own write put the job in `status` at attempt count `attempts`: how a
    write retried after a lost connection learns that its first try's COMMIT landed and only
    the answer was lost. The attempt rows that write committed with it tell it from the
    reaper's, which can leave the same status and count once the lease has expired."""
    own_rows = select(JobAttempt.id).where(JobAttempt.job_id == claim.id, JobAttempt.attempt == claim.attempt)
    stmt = select(Job.id).where(
        Job.id == claim.id, Job.status == status, Job.attempts == attempts, own_rows.exists()
    )
    return session.connection().execute(stmt).first() is not None


def requeue_job(
    session: Session, clock: SqlClock, claim: Claim, *, delay_s: float, refund_attempt: bool = False
) -> bool:
    """running → queued, to run again after `delay_s` (rate-limit delay, retryable failure).

    `refund_attempt` gives the attempt back when nothing was tried upstream (every target was
    only busy): waiting for budget must not use up a job's attempts. The caller commits.
    `delay_s` counts from this statement, not from its transaction's start.
    """
    now = clock.current()
    attempts = Job.attempts - 1 if refund_attempt else Job.attempts
    stmt = (
        update(Job)
        .where(_owns(claim))
        .values(
            status=QUEUED, lease_until=None, not_before=now + timedelta(seconds=delay_s), attempts=attempts
        )
        .execution_options(synchronize_session=False)
    )
    return rowcount(session.connection().execute(stmt)) == 1


def renew_leases(session: Session, clock: SqlClock, claims: list[Claim], *, lease_s: float) -> int:
    """Extend the leases of the jobs this process is running, in one statement.

    On Postgres, rows another transaction holds (a group write finishing them right now) are
    skipped rather than waited for: locking hundreds of rows in another order than that write
    deadlocked the two. A job being finished needs no longer lease."""
    if not claims:
        return 0
    now = clock.now()
    owned = and_(Job.status == RUNNING, tuple_(Job.id, Job.attempts).in_([(c.id, c.attempt) for c in claims]))
    if clock.dialect == "postgresql":
        owned = Job.id.in_(select(Job.id).where(owned).with_for_update(skip_locked=True).scalar_subquery())
    stmt = (
        update(cast(Table, Job.__table__)).where(owned).values(lease_until=now + timedelta(seconds=lease_s))
    )
    count = rowcount(session.connection().execute(stmt))
    session.commit()
    return int(count)


def record_attempts(session: Session, rows: list[dict[str, Any]]) -> None:
    """Inserts attempt rows (`JobAttempt` columns) in one statement; the caller commits with
    the state change."""
    if rows:
        session.connection().execute(insert(cast(Table, JobAttempt.__table__)), rows)


def select_attempts(job_id: str) -> Select[JobAttempt]:
    return select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.id)


def expired_leases_stmt(now: Any, limit: int) -> Select[str, int, int, str]:
    return (
        select(Job.id, Job.attempts, Job.max_attempts, Job.priority)
        .where(Job.status == RUNNING, Job.lease_until < now)
        .limit(limit)
    )


def reap_job_stmt(job_id: str, attempt: int, now: Any, *, exhausted: bool) -> Update:
    """An expired lease: back to queued, or failed once the attempts are used up."""
    base = update(Job).where(Job.id == job_id, Job.status == RUNNING, Job.attempts == attempt)
    if exhausted:
        return base.values(
            status=FAILED,
            finished_at=now,
            lease_until=None,
            error={
                "type": "attempts_exhausted",
                "message": f"The job's worker stopped responding on each of its {attempt} attempts.",
            },
        )
    return base.values(status=QUEUED, lease_until=None, not_before=None)


def batch_active_jobs_stmt(batch_id: Any) -> Select[str]:
    """The batch's jobs still queued or running; `batch_id` is a value, or `Batch.id` in a
    correlated subquery."""
    return select(Job.id).where(Job.batch_id == batch_id, Job.status.in_(ACTIVE_STATES))


def unannounced_batches_stmt(now: Any, older_than_s: float, limit: int) -> Select[str]:
    """Batches not yet marked completed whose every job is final: left so by a crash between a
    last job's final write and the batch check after it (served by the partial index of open
    batches, so the cost follows the batches in progress, not the table)."""
    return (
        select(Batch.id)
        .where(
            Batch.completed_at.is_(None),
            Batch.created_at < now - timedelta(seconds=older_than_s),
            ~batch_active_jobs_stmt(Batch.id).exists(),
        )
        .limit(limit)
    )


def overdue_queued_stmt(now: Any, limit: int) -> Select[str]:
    """Queued jobs whose deadline has passed (served by the partial index of jobs with a
    deadline, `ix_jobs_status_deadline`, so the cost follows those, not the queue)."""
    return (
        select(Job.id)
        .where(Job.status == QUEUED, Job.deadline.is_not(None), Job.deadline < now)
        .order_by(Job.deadline)
        .limit(limit)
    )


def expire_queued_stmt(job_ids: Sequence[str], now: Any, error: dict[str, Any]) -> Update:
    """queued → failed (`error`: deadline_exceeded) for these jobs, if still queued and overdue."""
    return (
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == QUEUED, Job.deadline < now)
        .values(status=FAILED, finished_at=now, lease_until=None, not_before=None, error=error)
        .execution_options(synchronize_session=False)
    )


def stale_queued_stmt(
    now: Any, older_than_s: float, limit: int, *, ahead_s: float = 0.0
) -> Select[str, str, datetime | None]:
    """Queued jobs created over `older_than_s` ago that are due, or come due within `ahead_s`."""
    due = or_(Job.not_before.is_(None), Job.not_before <= now + timedelta(seconds=ahead_s))
    return (
        select(Job.id, Job.priority, Job.not_before)
        .where(Job.status == QUEUED, due, Job.created_at < now - timedelta(seconds=older_than_s))
        .order_by(case((Job.priority == "interactive", 0), else_=1), Job.id)
        .limit(limit)
    )
