"""`/v1/jobs`: submit, read (with long-poll), list, cancel, delete."""

from __future__ import annotations

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.deps import PrincipalDep, SessionDep, StateDep
from api.dispatch import apply_after_commit, commit_final_events, dispatch_committed
from api.documentation import DeletedObject, JobList, JobObject, JobStatus, answer
from api.idempotency import IdempotencyKeyHeader, keys_since
from api.job_specs import job_spec
from api.request_id import request_id_of
from api.schemas import MAX_ID_CHARS, JobRequest
from api.waiting import load_job, wait_for_job
from core import metrics
from core.representation import attempt_object, job_object
from core.services.erasure import erase_job
from core.services.submit import request_hash, submit_job
from core.store import jobs as store
from core.store.models import Job

log = structlog.get_logger("jobgate.api")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=202,
    response_model=None,
    responses={
        202: answer(JobObject, "The job, queued."),
        200: answer(JobObject, "The job an earlier request with this Idempotency-Key and body made."),
    },
)
async def create_job(
    request: Request,
    body: JobRequest,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    spec = job_spec(
        body,
        config=state.config,
        settings=state.settings,
        default_priority="interactive",
        principal=principal,
    )
    job, created = await submit_job(
        session,
        spec,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        idempotency_key=idempotency_key,
        body_hash=request_hash(body.model_dump(mode="json", exclude_unset=True)) if idempotency_key else None,
        request_id=request_id_of(request),
        keys_since=keys_since(state),
    )
    log.info("job_submitted", job_id=job.id, priority=job.priority, created=created)
    if created:
        await dispatch_committed(
            state.broker,
            [(job.id, job.priority)],
            fault_exit_after_commit=state.settings.fault_exit_after_commit,
        )
    return JSONResponse(
        job_object(job), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"}
    )


@router.get("/{job_id}", response_model=None, responses={200: answer(JobObject, "The job.")})
async def get_job(
    job_id: str,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    wait: Annotated[float, Query(ge=0, le=60, description="seconds to wait for a final state")] = 0,
) -> dict[str, Any]:
    if not wait:
        return job_object(await wait_for_job(state, session, principal.tenant_id, job_id, 0))
    # A long poll past the caps on waiting (JOBGATE_MAX_WAITS_PER_*) is a 429 with Retry-After,
    # not an answer at once: a client polling in a loop backs off instead of spinning on it.
    with state.waits.hold(principal.tenant_id):
        return job_object(await wait_for_job(state, session, principal.tenant_id, job_id, wait))


@router.post(
    "/{job_id}/cancel",
    response_model=None,
    responses={200: answer(JobObject, "The job, cancelled if it was queued.")},
)
async def cancel_job(
    job_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    stmt = store.cancel_job_stmt(principal.tenant_id, job_id, state.clock.now()).returning(Job.id)
    cancelled = list((await session.execute(stmt)).scalars())
    effects = await commit_final_events(session, cancelled, state.clock.utcnow())
    if cancelled:
        metrics.record_jobs_finished("cancelled")
        await apply_after_commit(state.broker, state.keys, effects)
    return job_object(await load_job(session, principal.tenant_id, job_id))


@router.delete(
    "/{job_id}",
    response_model=None,
    responses={
        200: answer(DeletedObject, "The job's prompt and answer are erased; it is gone (409 until final).")
    },
)
async def delete_job(
    job_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Erase a final job's content at once, keeping only its usage (core/services/erasure.py)."""
    await erase_job(session, await load_job(session, principal.tenant_id, job_id), state.clock.utcnow())
    log.info("job_deleted", job_id=job_id)
    return {"id": job_id, "object": "job.deleted", "deleted": True}


@router.get("", response_model=None, responses={200: answer(JobList, "The tenant's jobs, newest first.")})
async def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    status: JobStatus | None = None,
    batch_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
) -> dict[str, Any]:
    stmt = store.select_jobs_page(
        principal.tenant_id, status=status, batch_id=batch_id, limit=limit, after=after
    )
    rows = list((await session.execute(stmt)).scalars())
    page = rows[:limit]
    return {
        "object": "list",
        "data": [job_object(job) for job in page],
        "has_more": len(rows) > limit,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


@router.get("/{job_id}/attempts")
async def job_attempts(job_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    """Every call (or refusal) made for the job: target, outcome, latency; oldest first."""
    await load_job(session, principal.tenant_id, job_id)
    rows = (await session.execute(store.select_attempts(job_id))).scalars()
    return {"object": "list", "data": [attempt_object(row) for row in rows]}
