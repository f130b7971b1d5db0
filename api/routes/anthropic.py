"""`/anthropic/v1`: Anthropic's Messages API, so code written for Anthropic's SDK runs against
jobgate with only its `base_url` changed (`Anthropic(base_url="http://host:8000/anthropic")`).

`POST /anthropic/v1/messages` becomes a job like any other (same queue, limits, cache,
fallback, usage, cost and webhooks, visible through `/v1/jobs`), answered when it is done
through the flow of `api/sync_calls.py`; `model` is a jobgate alias or a provider's model
name; an Anthropic target gets the request as it came (thinking, cache_control, system
blocks kept). The key comes as `Authorization: Bearer` or `x-api-key`; `anthropic-version` is read by
no one (wire-formats.md: do not validate it). Answers and errors take Anthropic's shapes
(`api/anthropic_wire.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.anthropic_wire import (
    AnthropicEvents,
    MessagesRequest,
    anthropic_error_body,
    anthropic_message,
    openai_body,
    with_original,
)
from api.deps import WAIT_SLOT, PrincipalDep, SessionDep, StateDep
from api.documentation import ANTHROPIC_ERROR_RESPONSES, AnthropicMessage, answer
from api.errors import no_retry_headers
from api.idempotency import IdempotencyKeyHeader
from api.job_specs import job_spec
from api.request_id import request_id_of
from api.schemas import JobRequest
from api.streaming import stream_response
from api.sync_calls import TIMED_OUT_RETRY_AFTER_S, SyncAsk, retry_after_s, run_sync
from core.errors import http_status_for
from core.store import jobs as store

router = APIRouter(prefix="/anthropic/v1", tags=["anthropic-compatible"])


@router.post(
    "/messages",
    response_model=None,
    dependencies=[WAIT_SLOT],
    responses={
        **ANTHROPIC_ERROR_RESPONSES,
        200: answer(AnthropicMessage, "An Anthropic Message; header x-jobgate-job-id names the job."),
    },
)
async def create_message(
    request: Request,
    body: MessagesRequest,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    chat = JobRequest.model_validate(openai_body(body))
    spec = with_original(
        job_spec(
            chat,
            config=state.config,
            settings=state.settings,
            default_priority="interactive",
            principal=principal,
        ),
        body,
    )
    ask = SyncAsk.of(request, body, idempotency_key)
    if body.stream:
        return stream_response(request, spec, state, principal, ask, AnthropicEvents(body.model))
    finished = await run_sync(request, spec, state, session, principal, ask)
    headers = {"x-jobgate-job-id": finished.job_id, "request-id": request_id_of(request) or finished.job_id}
    if finished.status is None:
        message = (
            f"The job did not finish within {state.settings.sync_timeout_s:g} s;"
            f" poll GET /v1/jobs/{finished.job_id}."
        )
        headers["Retry-After"] = str(TIMED_OUT_RETRY_AFTER_S)
        return JSONResponse(anthropic_error_body(504, "timeout", message), status_code=504, headers=headers)
    if finished.status == store.SUCCEEDED:
        assert finished.result is not None
        message_out = anthropic_message(finished.result, job_id=finished.job_id, requested_model=body.model)
        return JSONResponse(message_out, headers=headers)
    error = finished.error or {"type": "server_error", "message": "The job failed."}
    status = http_status_for(error["type"])
    headers.update(no_retry_headers(status))
    if status in (429, 503):
        headers["Retry-After"] = str(await retry_after_s(state, finished.model))
    body_out = anthropic_error_body(status, error["type"], error.get("message", ""))
    return JSONResponse(body_out, status_code=status, headers=headers)
