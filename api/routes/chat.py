"""`POST /v1/chat/completions`: the synchronous convenience path (submit, then wait).

Any OpenAI client can point its `base_url` at jobgate; the flow is `api/sync_calls.py`'s.
The answer is the `chat.completion` body; a failed job answers OpenAI's error shape with the
matching status (429/503 with `Retry-After`); a job still running after
`JOBGATE_SYNC_TIMEOUT_S` answers 504 with its id (header `x-jobgate-job-id`), so the client can
go on polling it. `stream: true` answers with OpenAI's chunks as server-sent events
(`api/streaming.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from api.deps import WAIT_SLOT, PrincipalDep, SessionDep, StateDep
from api.documentation import ErrorBody, answer
from api.errors import error_body, no_retry_headers
from api.idempotency import IdempotencyKeyHeader
from api.job_specs import job_spec
from api.schemas import JobRequest
from api.streaming import OpenAIEvents, stream_response
from api.sync_calls import TIMED_OUT_RETRY_AFTER_S, SyncAsk, retry_after_s, run_sync
from core.errors import BUDGET_EXCEEDED, http_status_for, openai_code
from core.store import jobs as store

router = APIRouter(prefix="/v1/chat", tags=["openai-compatible"])


@router.post(
    "/completions",
    response_model=None,
    dependencies=[WAIT_SLOT],
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
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    spec = job_spec(
        body,
        config=state.config,
        settings=state.settings,
        default_priority="interactive",
        allow_stream=True,
        principal=principal,
    )
    ask = SyncAsk.of(request, body, idempotency_key)
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return stream_response(
            request, spec, state, principal, ask, OpenAIEvents(include_usage=include_usage)
        )
    finished = await run_sync(request, spec, state, session, principal, ask)
    headers = {"x-jobgate-job-id": finished.job_id}
    if finished.status is None:
        body_out = error_body(
            "timeout",
            f"The job did not finish within {state.settings.sync_timeout_s:g} s;"
            f" poll GET /v1/jobs/{finished.job_id}.",
        )
        body_out["error"]["job_id"] = finished.job_id
        headers["Retry-After"] = str(TIMED_OUT_RETRY_AFTER_S)
        return JSONResponse(body_out, status_code=504, headers=headers)
    if finished.status == store.SUCCEEDED:
        return JSONResponse(finished.result, headers=headers)
    error = finished.error or {"type": "server_error", "message": "The job failed."}
    body_out = error_body(error["type"], error.get("message", ""))
    body_out["error"]["code"] = openai_code(error["type"])
    http_status = http_status_for(error["type"])
    headers.update(no_retry_headers(http_status))
    if http_status in (429, 503) and error["type"] != BUDGET_EXCEEDED:  # a budget waits for its reset
        headers["Retry-After"] = str(await retry_after_s(state, finished.model))
    return JSONResponse(body_out, status_code=http_status, headers=headers)
