"""What every batch surface does with a stored batch (jobgate's `/v1/batches`, Anthropic's
`/anthropic/v1/messages/batches`): find it within the tenant, sum up its jobs, cancel it, and
page through its final jobs; each surface renders them in its own shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AppState, load_owned
from api.dispatch import apply_after_commit, commit_final_events
from core import metrics
from core.errors import NotFound
from core.store import jobs as store
from core.store.models import Batch, Job

RESULTS_PAGE = 1_000


async def load_batch(session: AsyncSession, tenant_id: str, batch_id: str) -> Batch:
    missing = f"No batch with id {batch_id!r}."
    batch = await load_owned(session, Batch, tenant_id, batch_id, missing=missing, param="batch_id")
    if batch.erased_at is not None:  # deleted by its tenant: gone, as an unknown id
        raise NotFound(missing, param="batch_id")
    return batch


async def summary(session: AsyncSession, batch: Batch) -> store.BatchSummary:
    return store.summarise_batch(list((await session.execute(store.batch_summary_stmt(batch.id))).all()))


async def cancel(state: AppState, session: AsyncSession, batch: Batch) -> None:
    """Cancel the batch's queued jobs (running ones finish) and mark it cancelled, unless every
    job is final already (a finished batch stays as it was, as a final job does)."""
    now = state.clock.now()
    if batch.cancelled_at is None:
        still_active = store.batch_active_jobs_stmt(batch.id).exists()
        await session.execute(
            update(Batch)
            .where(Batch.id == batch.id, Batch.cancelled_at.is_(None), still_active)
            .values(cancelled_at=now)
        )
    stmt = store.cancel_batch_jobs_stmt(batch.id, now).returning(Job.id)
    cancelled = list((await session.execute(stmt)).scalars())
    effects = await commit_final_events(session, cancelled, state.clock.utcnow())
    metrics.record_jobs_finished("cancelled", len(cancelled))
    await apply_after_commit(state.broker, state.keys, effects)


async def final_job_pages(state: AppState, batch_id: str) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The batch's final jobs in submission order, a page at a time, each job as
    (custom_id, job_id, status, result, error); each page on a session of its own, so a slow
    reader holds no connection between pages."""
    after_seq = -1
    while True:
        async with state.sessions() as session:
            stmt = store.batch_results_stmt(batch_id, after_seq=after_seq, limit=RESULTS_PAGE)
            rows = (await session.execute(stmt)).all()
        if not rows:
            return
        after_seq = rows[-1][0]
        yield [tuple(row[1:]) for row in rows]
        if len(rows) < RESULTS_PAGE:
            return
