"""`/anthropic/v1/messages/batches`: Anthropic's Message Batches API over jobgate's batches.

A message batch is a jobgate batch (id `msgbatch_…`, priority `batch`) whose jobs are the
requests' `params` translated as `/anthropic/v1/messages` translates them: same queue, limits,
cache, fallback, cost and webhooks, visible through `/v1/batches` and `/v1/jobs` too. Create,
retrieve, list (`after_id` / `before_id` / `limit`), cancel, and results as JSONL once the
batch has ended. One departure: a request whose `params` jobgate cannot run is refused at
create (400 naming it, the batch all or nothing, as `/v1/batches`), where Anthropic reports it
as an `errored` result later.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from api.anthropic_wire import (
    BATCH_ID_PREFIX,
    MessageBatchCreate,
    MessagesRequest,
    batch_result,
    message_batch,
    openai_body,
    with_original,
)
from api.batch_ops import cancel, final_job_pages, load_batch, summary
from api.batch_upload import BatchParser
from api.deps import AppState, PrincipalDep, SessionDep, StateDep
from api.dispatch import dispatch_after_answer
from api.documentation import ANTHROPIC_ERROR_RESPONSES
from api.errors import describe_validation_error
from api.idempotency import IdempotencyKeyHeader, keys_since
from api.request_id import request_id_of
from api.schemas import MAX_ID_CHARS
from core.errors import Conflict, InvalidRequest, NotFound
from core.services.submit import BatchSpec, existing_batch_for_key, request_hash, submit_batch
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
    parser = BatchParser(
        config=state.config, settings=state.settings, default_priority="batch", principal=principal
    )
    originals: list[MessagesRequest] = []
    for index, item in enumerate(body.requests):
        param = f"requests.{index}.params"
        try:
            params = MessagesRequest.model_validate(item.params)
        except ValidationError as exc:
            message, field = describe_validation_error([dict(e) for e in exc.errors()], prefix=param)
            raise InvalidRequest(f"Request {index + 1}: {message}", param=field) from None
        try:
            chat = openai_body(params)
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"Request {index + 1}: {exc.message}", param=f"{param}.{exc.param}"
            ) from None
        parser.add(index + 1, {"custom_id": item.custom_id, "body": chat}, f"requests.{index}")
        originals.append(params)
    specs = [with_original(spec, original) for spec, original in zip(parser.finish(), originals, strict=True)]
    batch, jobs = await submit_batch(
        session,
        BatchSpec(priority="batch", idempotency_key=idempotency_key, request_hash=body_hash),
        specs,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        request_id=request_id_of(request),
        id_prefix=BATCH_ID_PREFIX,
    )
    log.info("message_batch_submitted", batch_id=batch.id, jobs=len(jobs))
    dispatch = dispatch_after_answer(state, jobs)
    return JSONResponse(await _view(request, session, batch), background=dispatch)


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
