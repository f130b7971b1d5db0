"""Waiting for a job to finish without holding a SQL connection or polling hard.

Used by `GET /v1/jobs/{id}?wait=` and `POST /v1/chat/completions`. The session is closed
while waiting (the connection goes back to the pool); the wake-up comes from the notifier,
with a SQL re-read every few seconds in case a notification was lost.
"""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AppState
from core.errors import NotFound
from core.store import jobs as store
from core.store.models import Job

RECHECK_S = 5.0


async def load_job(session: AsyncSession, tenant_id: str, job_id: str) -> Job:
    # The row as it is now, not as this session last saw it: the request that submitted the job
    # holds it in its identity map as `queued`, and a job finished before the waiter was
    # registered (its notification missed) would then look queued until the next re-read.
    stmt = store.select_job(tenant_id, job_id).execution_options(populate_existing=True)
    job = (await session.execute(stmt)).scalars().first()
    if job is None:
        raise NotFound(f"No job with id {job_id!r}.", param="job_id")
    return job


async def wait_for_job(
    state: AppState, session: AsyncSession, tenant_id: str, job_id: str, wait_s: float
) -> Job:
    """The job as soon as it is final, or as it is once `wait_s` has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    async with state.notifier.watch(job_id) as woken:
        job = await load_job(session, tenant_id, job_id)
        while job.status not in store.FINAL_STATES:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            await session.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(woken), timeout=min(remaining, RECHECK_S))
            job = await load_job(session, tenant_id, job_id)
    return job
