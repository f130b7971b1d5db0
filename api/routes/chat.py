"""`POST /v1/chat/completions`: the synchronous convenience path (submit, then wait).

Any OpenAI client can point its `base_url` at jobgate: the job runs with priority
`interactive` through the same limiter, cache, fallback and records as every other job, and
the answer is the `chat.completion` body. Its first attempt runs in this API process
(api/inline_calls.py) unless `JOBGATE_SYNC_MAX_IN_FLIGHT` calls already do; then, and for
its retries, it goes through the queue to the workers. A job still running after
`JOBGATE_SYNC_TIMEOUT_S` answers 504 with its id (header `x-jobgate-job-id`), so the client can
go on polling it. A job that failed rate-limited or overloaded answers 429/503 with
`Retry-After`: the seconds until one of its model's providers ends its fleet-wide pause, or 1.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Annotated, Any

import redis
import structlog
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AppState, Principal, PrincipalDep, SessionDep, StateDep
from api.dispatch import dispatch_committed, exit_if_faulted
from api.documentation import ErrorBody, answer
from api.errors import error_body
from api.inline_calls import InlineCalls
from api.job_specs import job_spec
from api.request_id import request_id_of
from api.schemas import JobRequest
from api.waiting import wait_for_job
from core.errors import http_status_for
from core.ratelimit.limiter import RateLimiter
from core.services.submit import JobSpec, existing_for_key, request_hash, submit_job
from core.store import jobs as store

router = APIRouter(prefix="/v1/chat", tags=["openai-compatible"])

log = structlog.get_logger("jobgate.api")

# Retry-After when no target of the model is paused: the job used its attempts on a provider
# that is busy, not one that named a time; OpenAI's clients back off from 1 s on their own.
DEFAULT_RETRY_AFTER_S = 1


async def _retry_after_s(state: AppState, model: str) -> int:
    """Seconds until one of the model's providers is out of its fleet-wide pause (the soonest),
    at least `DEFAULT_RETRY_AFTER_S` (also when Redis cannot say)."""
    providers = {target.provider for target in state.config.targets_for(model) or []}
    try:
        left_s = await RateLimiter(state.redis, state.keys).shortest_pause_left_s(providers)
    except redis.RedisError as exc:
        log.warning("retry_after_unknown", error=type(exc).__name__)
        return DEFAULT_RETRY_AFTER_S
    return max(DEFAULT_RETRY_AFTER_S, math.ceil(left_s))


@router.post(
    "/completions",
    response_model=None,
    responses={
        200: {
            "description": "The chat.completion body; header x-jobgate-job-id names the job. A repeat"
            " with the same Idempotency-Key and body answers the first request's job (no second call).",
        },
        409: answer(ErrorBody, "This Idempotency-Key was used with another body."),
        429: {
            **answer(ErrorBody, "The job failed rate-limited; retry after `Retry-After` seconds."),
            "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
        },
        502: answer(ErrorBody, "The upstream failed the job (OpenAI's error shape, with `code`)."),
        504: answer(ErrorBody, "The job did not finish in time; `error.job_id` can be polled."),
    },
)
async def chat_completions(
    request: Request,
    body: JobRequest,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> JSONResponse:
    spec = job_spec(body, config=state.config, settings=state.settings, default_priority="interactive")
    key = None
    if idempotency_key is not None:
        key = _Key(idempotency_key, request_hash(body.model_dump(mode="json", exclude_unset=True)))
        earlier = await existing_for_key(session, principal.tenant_id, key.key, key.body_hash)
        if earlier is not None:  # a retry: the first request's job, not a second call
            return await _answer_when_final(
                state, session, principal, earlier.id, state.settings.sync_timeout_s
            )
    if state.inline is not None and state.inline.has_room():
        return await _call_here(state.inline, request, spec, state, session, principal, key)
    job, created = await submit_job(
        session,
        spec,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        idempotency_key=key.key if key else None,
        body_hash=key.body_hash if key else None,
        request_id=request_id_of(request),
    )
    if created:
        await dispatch_committed(
            state.broker,
            [(job.id, job.priority)],
            fault_exit_after_commit=state.settings.fault_exit_after_commit,
        )
    return await _answer_when_final(state, session, principal, job.id, state.settings.sync_timeout_s)


@dataclass(frozen=True)
class _Key:
    """A request's Idempotency-Key and the fingerprint of the body it came with."""

    key: str
    body_hash: str


async def _call_here(
    inline: InlineCalls,
    request: Request,
    spec: JobSpec,
    state: AppState,
    session: AsyncSession,
    principal: Principal,
    key: _Key | None,
) -> JSONResponse:
    """The job inserted claimed and called by this process (api/inline_calls.py); a job its
    first attempt did not finish (requeued for a retry) is waited for like a queued one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.sync_timeout_s
    claim = await inline.submit(
        spec,
        tenant_id=principal.tenant_id,
        request_id=request_id_of(request),
        idempotency_key=key.key if key else None,
        body_hash=key.body_hash if key else None,
    )
    if claim is None:  # a concurrent request with the same key recorded its job first
        assert key is not None
        winner = await existing_for_key(session, principal.tenant_id, key.key, key.body_hash)
        if winner is None:
            raise RuntimeError("an Idempotency-Key's job was neither inserted nor found")
        return await _answer_when_final(state, session, principal, winner.id, deadline - loop.time())
    exit_if_faulted(state.settings.fault_exit_after_commit, 1)
    try:
        outcome, verdict = await asyncio.wait_for(
            inline.run(claim, principal.tenant_name), timeout=state.settings.sync_timeout_s
        )
    except TimeoutError:
        return _timed_out(state, claim.id)
    if verdict is not None and verdict.is_final and outcome.status is verdict.status:
        values = verdict.values
        return await _answer(
            state, claim.id, claim.model, values["status"], values.get("result"), values.get("error")
        )
    return await _answer_when_final(state, session, principal, claim.id, deadline - loop.time())


async def _answer_when_final(
    state: AppState, session: AsyncSession, principal: Principal, job_id: str, wait_s: float
) -> JSONResponse:
    job = await wait_for_job(state, session, principal.tenant_id, job_id, max(wait_s, 0.0))
    if job.status not in store.FINAL_STATES:
        return _timed_out(state, job.id)
    return await _answer(state, job.id, job.model, job.status, job.result, job.error)


async def _answer(
    state: AppState,
    job_id: str,
    model: str,
    status: str,
    result: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> JSONResponse:
    """A final job as OpenAI answers: the completion, or its error shape with the matching status."""
    headers = {"x-jobgate-job-id": job_id}
    if status == store.SUCCEEDED:
        return JSONResponse(result, headers=headers)
    error = error or {"type": "server_error", "message": "The job failed."}
    body_out = error_body(error["type"], error.get("message", ""))
    body_out["error"]["code"] = error["type"]
    http_status = http_status_for(error["type"])
    if http_status in (429, 503):
        headers["Retry-After"] = str(await _retry_after_s(state, model))
    return JSONResponse(body_out, status_code=http_status, headers=headers)


def _timed_out(state: AppState, job_id: str) -> JSONResponse:
    body_out = error_body(
        "timeout",
        f"The job did not finish within {state.settings.sync_timeout_s:g} s; poll GET /v1/jobs/{job_id}.",
    )
    body_out["error"]["job_id"] = job_id
    return JSONResponse(body_out, status_code=504, headers={"x-jobgate-job-id": job_id})
