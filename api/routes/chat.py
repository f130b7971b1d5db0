"""`POST /v1/chat/completions`: the synchronous convenience path (submit, then wait).

Any OpenAI client can point its `base_url` at jobgate: the job runs with priority
`interactive` through the same queue, limiter and cache as every other job, and the answer
is the `chat.completion` body. A job still running after `JOBGATE_SYNC_TIMEOUT_S` answers
504 with its id (header `x-jobgate-job-id`), so the client can go on polling it. A job that
failed rate-limited or overloaded answers 429/503 with `Retry-After`: the seconds until one of
its model's providers ends its fleet-wide pause, or 1.
"""

from __future__ import annotations

import math
from typing import Any

import redis
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import AppState, PrincipalDep, SessionDep, StateDep
from api.dispatch import dispatch_committed
from api.documentation import ErrorBody, answer
from api.errors import error_body
from api.job_specs import job_spec
from api.request_id import request_id_of
from api.schemas import JobRequest
from api.waiting import wait_for_job
from core.errors import http_status_for
from core.redis.rate_limit import RateLimiter
from core.services.submit import submit_job
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
        200: {"description": "The chat.completion body; header x-jobgate-job-id names the job."},
        429: {
            **answer(ErrorBody, "The job failed rate-limited; retry after `Retry-After` seconds."),
            "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
        },
        502: answer(ErrorBody, "The upstream failed the job (OpenAI's error shape, with `code`)."),
        504: answer(ErrorBody, "The job did not finish in time; `error.job_id` can be polled."),
    },
)
async def chat_completions(
    request: Request, body: JobRequest, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> JSONResponse:
    spec = job_spec(body, config=state.config, settings=state.settings, default_priority="interactive")
    job, _ = await submit_job(
        session,
        spec,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        request_id=request_id_of(request),
    )
    await dispatch_committed(
        state.broker, [(job.id, job.priority)], fault_exit_after_commit=state.settings.fault_exit_after_commit
    )
    job = await wait_for_job(state, session, principal.tenant_id, job.id, state.settings.sync_timeout_s)
    headers = {"x-jobgate-job-id": job.id}
    if job.status == store.SUCCEEDED:
        return JSONResponse(job.result, headers=headers)
    if job.status in store.FINAL_STATES:
        error: dict[str, Any] = job.error or {"type": "server_error", "message": "The job failed."}
        body_out = error_body(error["type"], error.get("message", ""))
        body_out["error"]["code"] = error["type"]
        status = http_status_for(error["type"])
        if status in (429, 503):
            headers["Retry-After"] = str(await _retry_after_s(state, job.model))
        return JSONResponse(body_out, status_code=status, headers=headers)
    body_out = error_body(
        "timeout",
        f"The job did not finish within {state.settings.sync_timeout_s:g} s; poll GET /v1/jobs/{job.id}.",
    )
    body_out["error"]["job_id"] = job.id
    return JSONResponse(body_out, status_code=504, headers=headers)
