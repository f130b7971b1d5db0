"""`/openai/v1/batches`: OpenAI's Batch API over jobgate's batches, for
`client.batches.create(input_file_id=..., endpoint="/v1/chat/completions",
completion_window="24h")` and the rest of its life: retrieve, list, cancel.

The input file is validated when the batch is made, line by line as `/v1/batches` reads an
upload; a bad line makes a batch that is `failed` at once, its `errors.data` naming the line
(OpenAI's shape: the create itself still succeeds). A valid file becomes a jobgate batch of
the same id (priority `batch`: the same queue, limits, cache, fallback, cost and webhooks,
visible through `/v1/batches` and `/v1/jobs`), each job's deadline the end of the 24 h
completion window (or a line's own earlier `deadline`). Once every job is final, the first
request that sees it writes the output file (the successes) and the error file (the rest) as
stored files (`finalizing`, then `completed`, `expired` or `cancelled`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.batch_ops import cancel, final_job_pages, summary
from api.batch_upload import BatchParser, NdjsonLines
from api.deps import AppState, PrincipalDep, SessionDep, StateDep, load_owned
from api.dispatch import dispatch_after_answer
from api.file_store import delete_file, load_file, new_stored_file, read_file, write_file
from api.idempotency import IdempotencyKeyHeader, keys_since
from api.openai_wire import COMPLETION_WINDOW, ENDPOINT, batch_object, batch_status, result_line
from api.request_id import request_id_of
from api.routes.openai_files import new_file_id
from api.schemas import MAX_ID_CHARS, check_metadata
from core.errors import ApiError, InvalidRequest
from core.ids import new_id
from core.services.submit import BatchSpec, existing_batch_for_key, request_hash, submit_batch
from core.store.models import Batch, OpenAIBatch

router = APIRouter(prefix="/openai/v1/batches", tags=["openai-compatible"])

log = structlog.get_logger("jobgate.api")

# A finalizing request that died is taken over after this long.
FINALIZE_TAKEOVER = timedelta(seconds=60)


class BatchCreate(BaseModel):
    # New SDKs add fields: unknown keys are accepted and ignored, as OpenAI does.
    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    endpoint: str = Field(max_length=64)
    completion_window: str = Field(max_length=8)
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)


@router.post("", response_model=None)
async def create_batch(
    request: Request,
    body: BatchCreate,
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
            return JSONResponse(
                await _view(state, session, await _load(session, principal.tenant_id, earlier.id))
            )
    if body.endpoint != ENDPOINT:
        raise InvalidRequest(f"Only {ENDPOINT} can be batched here, not {body.endpoint!r}.", param="endpoint")
    if body.completion_window != "24h":
        raise InvalidRequest("completion_window must be '24h'.", param="completion_window")
    stored = await load_file(session, principal.tenant_id, body.input_file_id)
    if stored.purpose != "batch":
        raise InvalidRequest("The input file must be uploaded with purpose 'batch'.", param="input_file_id")
    now = state.clock.utcnow()
    record = OpenAIBatch(
        id=new_id("batch"),
        tenant_id=principal.tenant_id,
        endpoint=body.endpoint,
        input_file_id=stored.id,
        completion_window=body.completion_window,
        metadata_=body.metadata,
        created_at=now,
    )
    parser = BatchParser(
        config=state.config, settings=state.settings, default_priority="batch", principal=principal
    )
    lines = NdjsonLines(parser)
    try:
        async for chunk in read_file(state, stored.id):
            await asyncio.to_thread(lines.feed, chunk)
        lines.finish()
        specs = parser.finish()
    except ApiError as exc:  # the batch is made, failed, naming the line (OpenAI's way)
        record.errors = {
            "object": "list",
            "data": [
                {
                    "code": exc.error_type,
                    "message": exc.message,
                    "param": exc.param,
                    "line": lines.line_number,
                }
            ],
        }
        record.failed_at = now
        session.add(record)
        await session.commit()
        return JSONResponse(batch_object(record, None, None))
    window_end = now + COMPLETION_WINDOW
    specs = [replace(spec, deadline=min(spec.deadline or window_end, window_end)) for spec in specs]
    session.add(record)
    batch, jobs, _ = await submit_batch(
        session,
        BatchSpec(
            priority="batch", metadata=body.metadata, idempotency_key=idempotency_key, request_hash=body_hash
        ),
        specs,
        tenant_id=principal.tenant_id,
        now=now,
        max_attempts=state.settings.max_attempts,
        request_id=request_id_of(request),
        batch_id=record.id,
    )
    if not jobs:  # a concurrent request with the same Idempotency-Key made it first
        return JSONResponse(await _view(state, session, await _load(session, principal.tenant_id, batch.id)))
    log.info("openai_batch_submitted", batch_id=batch.id, jobs=len(jobs))
    dispatch = dispatch_after_answer(state, jobs)
    return JSONResponse(await _view(state, session, record), background=dispatch)


@router.get("/{batch_id}", response_model=None)
async def retrieve_batch(
    batch_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    return await _view(state, session, await _load(session, principal.tenant_id, batch_id))


@router.get("", response_model=None)
async def list_batches(
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    stmt = select(OpenAIBatch).where(OpenAIBatch.tenant_id == principal.tenant_id)
    if after is not None:
        stmt = stmt.where(OpenAIBatch.id < after)
    rows = list((await session.execute(stmt.order_by(OpenAIBatch.id.desc()).limit(limit + 1))).scalars())
    page = rows[:limit]
    return {
        "object": "list",
        "data": [await _view(state, session, record) for record in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(rows) > limit,
    }


@router.post("/{batch_id}/cancel", response_model=None)
async def cancel_batch(
    batch_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    record = await _load(session, principal.tenant_id, batch_id)
    batch = await session.get(Batch, record.id)
    progress = await summary(session, batch) if batch is not None else None
    if batch is None or progress is None or not progress.active:
        current = batch_status(record, batch, progress)
        raise InvalidRequest(f"A batch that is {current} cannot be cancelled.", param="batch_id")
    await cancel(state, session, batch)
    return await _view(state, session, record)


async def _load(session: AsyncSession, tenant_id: str, batch_id: str) -> OpenAIBatch:
    missing = f"No batch found with id '{batch_id}'."
    return await load_owned(session, OpenAIBatch, tenant_id, batch_id, missing=missing, param="batch_id")


async def _view(state: AppState, session: AsyncSession, record: OpenAIBatch) -> dict[str, Any]:
    """The batch object, with its output and error files written first if it has just ended."""
    batch = await session.get(Batch, record.id, populate_existing=True)
    progress = await summary(session, batch) if batch is not None else None
    if batch is not None and progress is not None and not progress.active and record.finalized_at is None:
        await _finalize(state, session, record)
        await session.refresh(record)
        batch = await session.get(Batch, record.id, populate_existing=True)
    return batch_object(record, batch, progress)


async def _finalize(state: AppState, session: AsyncSession, record: OpenAIBatch) -> None:
    """Write the output and error files, once: the request that takes the batch over (or one
    that finds a takeover older than `FINALIZE_TAKEOVER`) does it; the others see `finalizing`."""
    now = state.clock.utcnow()
    claim = (
        update(OpenAIBatch)
        .where(
            OpenAIBatch.id == record.id,
            OpenAIBatch.finalized_at.is_(None),
            or_(OpenAIBatch.finalizing_at.is_(None), OpenAIBatch.finalizing_at < now - FINALIZE_TAKEOVER),
        )
        .values(finalizing_at=now)
    )
    if (await session.execute(claim)).rowcount != 1:  # type: ignore[attr-defined]
        await session.rollback()
        return
    await session.commit()
    files: dict[bool, str | None] = {}
    for successes, kind in ((True, "output"), (False, "error")):
        stored = new_stored_file(
            new_file_id(), record.tenant_id, "batch_output", f"{record.id}_{kind}.jsonl", now
        )
        await write_file(session, stored, _lines(state, record.id, successes))
        await session.commit()
        files[successes] = stored.id
        if not successes and not stored.bytes:  # no error file when nothing failed, as OpenAI
            await delete_file(session, stored)
            files[successes] = None
    await session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == record.id)
        .values(output_file_id=files[True], error_file_id=files[False], finalized_at=state.clock.utcnow())
    )
    await session.commit()


async def _lines(state: AppState, batch_id: str, successes: bool) -> AsyncIterator[bytes]:
    async for rows in final_job_pages(state, batch_id):
        chosen = [line for ok, line in (result_line(*row) for row in rows) if ok is successes]
        if chosen:
            yield ("\n".join(json.dumps(line, separators=(",", ":")) for line in chosen) + "\n").encode()
