"""`/anthropic/v1/messages/batches`: Anthropic's Message Batches API over jobgate's batches.

A message batch is a jobgate batch (id `msgbatch_…`, priority `batch`) whose jobs are the
requests' `params` translated as `/anthropic/v1/messages` translates them: same queue, limits,
cache, fallback, cost and webhooks, visible through `/v1/batches` and `/v1/jobs` too. Create,
retrieve, list (`after_id` / `before_id` / `limit`), cancel, and results as JSONL once the
batch has ended.

As Anthropic does, create checks only the envelope (each `custom_id` well formed and unique,
`params` an object, at most `JOBGATE_MAX_BATCH_REQUESTS` requests): a request whose `params`
jobgate cannot run (an unknown model, a parameter it cannot carry) is stored as a job that is
`failed` at once (`bad_request`), never dispatched, and ends as an `errored` result. Every
job's deadline is the batch's `expires_at` (24 h): one not started by then fails
`deadline_exceeded` (the sweeper ends it even when no worker takes it), an `expired` result.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from api.anthropic_wire import (
    BATCH_EXPIRY,
    BATCH_ID_PREFIX,
    BatchItem,
    MessageBatchCreate,
    MessagesRequest,
    batch_result,
    message_batch,
    openai_body,
    with_original,
)
from api.batch_ops import cancel, final_job_pages, load_batch, summary
from api.deps import AppState, Principal, PrincipalDep, SessionDep, StateDep
from api.dispatch import apply_after_commit, dispatch_after_answer
from api.documentation import ANTHROPIC_ERROR_RESPONSES
from api.errors import describe_validation_error
from api.idempotency import IdempotencyKeyHeader, keys_since
from api.job_specs import job_spec
from api.request_id import request_id_of
from api.schemas import MAX_ID_CHARS, JobRequest
from core.domain.chat import ANTHROPIC_FIELD
from core.errors import ApiError, Conflict, InvalidRequest, NotFound
from core.services.submit import BatchSpec, JobSpec, existing_batch_for_key, request_hash, submit_batch
from core.store import jobs as store
from core.store.models import Batch

router = APIRouter(
    prefix="/anthropic/v1/messages/batches",
    tags=["anthropic-compatible"],
    responses=ANTHROPIC_ERROR_RESPONSES,
)

log = structlog.get_logger("jobgate.api")


async def _view(request: Request, session: AsyncSession, batch: Batch) -> dict[str, Any]:
    return message_batch(batch, await summary(session, batch), base_url=str(request.base_url))


@router.post("", response_model=None)
async def create_message_batch(
    request: Request,
    body: MessageBatchCreate,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    body_hash = request_hash(body.model_dump(mode="json"))
    if idempotency_key is not None:
        earlier = await existing_batch_for_key(
            session, principal.tenant_id, idempotency_key, body_hash, keys_since=keys_since(state)
        )
        if earlier is not None:
            return JSONResponse(await _view(request, session, earlier))
    _check_envelope(body, state.settings.max_batch_requests)
    now = state.clock.utcnow()
    specs = [
        replace(_request_spec(state, principal, item), deadline=now + BATCH_EXPIRY) for item in body.requests
    ]
    batch, jobs, refused = await submit_batch(
        session,
        BatchSpec(priority="batch", idempotency_key=idempotency_key, request_hash=body_hash),
        specs,
        tenant_id=principal.tenant_id,
        now=now,
        max_attempts=state.settings.max_attempts,
        request_id=request_id_of(request),
        id_prefix=BATCH_ID_PREFIX,
    )
    log.info("message_batch_submitted", batch_id=batch.id, jobs=len(jobs), refused=len(refused.finished))
    await apply_after_commit(state.broker, state.keys, refused)
    dispatch = dispatch_after_answer(state, jobs)
    return JSONResponse(await _view(request, session, batch), background=dispatch)


def _check_envelope(body: MessageBatchCreate, max_requests: int) -> None:
    """What refuses the whole batch at create, as Anthropic's does: too many requests, or a
    `custom_id` used twice (the rest of the envelope is `MessageBatchCreate`'s)."""
    if len(body.requests) > max_requests:
        raise InvalidRequest(
            f"A batch holds at most {max_requests} requests; split it into several.", param="requests"
        )
    seen: set[str] = set()
    for index, item in enumerate(body.requests):
        if item.custom_id in seen:
            raise InvalidRequest(
                f"Request {index + 1}: duplicate custom_id {item.custom_id!r};"
                " custom_id must be unique in a batch.",
                param=f"requests.{index}.custom_id",
            )
        seen.add(item.custom_id)


def _request_spec(state: AppState, principal: Principal, item: BatchItem) -> JobSpec:
    """One request's job: its `params` translated as `/anthropic/v1/messages` translates them,
    or, when jobgate cannot run them, a refusal naming why (its `errored` result)."""
    try:
        try:
            params = MessagesRequest.model_validate(item.params)
            chat = JobRequest.model_validate(openai_body(params))
        except ValidationError as exc:
            message, field = describe_validation_error([dict(e) for e in exc.errors()])
            raise InvalidRequest(message, param=field) from None
        spec = job_spec(
            chat,
            config=state.config,
            settings=state.settings,
            default_priority="batch",
            custom_id=item.custom_id,
            principal=principal,
        )
        return with_original(spec, params)
    except ApiError as exc:
        error = {
            "type": "bad_request" if isinstance(exc, InvalidRequest) else exc.error_type,
            "message": exc.message,
        }
        if exc.param:
            error["param"] = exc.param
        model = item.params.get("model")
        return JobSpec(
            # The request as it came, under the key a translated one keeps its original.
            body={"model": model[:200] if isinstance(model, str) else "", ANTHROPIC_FIELD: item.params},
            priority="batch",
            custom_id=item.custom_id,
            api_key_id=principal.key_id,
            refusal=error,
        )


@router.get("/{batch_id}", response_model=None)
async def retrieve_message_batch(
    batch_id: str, request: Request, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    return await _view(request, session, await _load(session, principal.tenant_id, batch_id))


@router.get("", response_model=None)
async def list_message_batches(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    before_id: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
) -> dict[str, Any]:
    stmt = store.select_batches_page(
        principal.tenant_id, limit=limit, after=after_id, before=before_id, id_prefix=f"{BATCH_ID_PREFIX}_"
    )
    rows = list((await session.execute(stmt)).scalars())
    page = rows[:limit]
    if before_id is not None:
        page.reverse()  # read oldest first to find the ones just newer; shown newest first
    return {
        "data": [await _view(request, session, batch) for batch in page],
        "has_more": len(rows) > limit,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


@router.post("/{batch_id}/cancel", response_model=None)
async def cancel_message_batch(
    batch_id: str, request: Request, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    await cancel(state, session, await _load(session, principal.tenant_id, batch_id))
    return await _view(request, session, await _load(session, principal.tenant_id, batch_id))


async def _result_lines(state: AppState, batch_id: str) -> AsyncIterator[bytes]:
    async for rows in final_job_pages(state, batch_id):
        lines = [json.dumps(batch_result(*row), separators=(",", ":")) for row in rows]
        yield ("\n".join(lines) + "\n").encode()


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={200: {"description": "One JSON line per request", "content": {"application/x-jsonl": {}}}},
)
async def message_batch_results(
    batch_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> StreamingResponse:
    batch = await _load(session, principal.tenant_id, batch_id)
    if (await summary(session, batch)).active:
        raise Conflict("The batch is still processing; its results_url is set once it has ended.")
    await session.close()
    return StreamingResponse(_result_lines(state, batch_id), media_type="application/x-jsonl")


async def _load(session: AsyncSession, tenant_id: str, batch_id: str) -> Batch:
    """One of the tenant's message batches (a batch made through `/v1/batches` is not one)."""
    if not batch_id.startswith(f"{BATCH_ID_PREFIX}_"):
        raise NotFound(f"No message batch with id {batch_id!r}.", param="batch_id")
    return await load_batch(session, tenant_id, batch_id)
