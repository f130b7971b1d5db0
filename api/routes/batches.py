"""`/v1/batches`: submit (JSON or NDJSON), read with counts, list, cancel, stream results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask

from api.batch_upload import BatchParser, parse_json_requests, parse_ndjson_batch, split_json_batch
from api.deps import AppState, PrincipalDep, SessionDep, StateDep
from api.dispatch import apply_after_commit, commit_final_events, dispatch_committed
from api.documentation import BatchList, BatchObject, answer
from api.errors import describe_validation_error
from api.job_specs import check_webhook_url
from api.request_id import request_id_of
from api.schemas import MAX_ID_CHARS, BatchOptions
from core import metrics
from core.errors import InvalidRequest, NotFound, UnsupportedMediaType
from core.representation import batch_object
from core.services.submit import BatchSpec, submit_batch
from core.store import jobs as store
from core.store.models import Batch, Job

log = structlog.get_logger("jobgate.api")

router = APIRouter(prefix="/v1/batches", tags=["batches"])

RESULTS_PAGE = 1_000
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson", "application/json-lines")

BATCH_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["requests"],
                    "properties": {
                        "requests": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["custom_id", "body"],
                                "properties": {
                                    "custom_id": {"type": "string", "minLength": 1, "maxLength": 200},
                                    # The same body as POST /v1/jobs (documented there).
                                    "body": {"$ref": "#/components/schemas/JobRequest"},
                                },
                            },
                        },
                        "webhook_url": {"type": "string"},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "priority": {"type": "string", "enum": ["interactive", "batch"]},
                    },
                }
            },
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


def _options(data: dict[str, Any]) -> BatchOptions:
    try:
        return BatchOptions.model_validate(data)
    except ValidationError as exc:
        message, param = describe_validation_error([dict(e) for e in exc.errors()])
        raise InvalidRequest(message, param=param) from None


def _query_options(request: Request) -> BatchOptions:
    """An NDJSON upload's batch options, from its query string (`metadata` as a JSON object)."""
    data: dict[str, Any] = dict(request.query_params)
    if "metadata" in data:
        try:
            data["metadata"] = json.loads(data["metadata"])
        except json.JSONDecodeError:
            raise InvalidRequest(
                'The metadata query parameter must be a JSON object, such as metadata={"team":"search"}.',
                param="metadata",
            ) from None
    return _options(data)


def _parser(state: AppState, options: BatchOptions) -> BatchParser:
    if options.webhook_url is not None:
        check_webhook_url(state.settings, options.webhook_url)
    return BatchParser(config=state.config, settings=state.settings, default_priority=options.priority)


async def _load_batch(session: AsyncSession, tenant_id: str, batch_id: str) -> Batch:
    stmt = select(Batch).where(Batch.id == batch_id, Batch.tenant_id == tenant_id)
    batch = (await session.execute(stmt)).scalars().first()
    if batch is None:
        raise NotFound(f"No batch with id {batch_id!r}.", param="batch_id")
    return batch


async def _batch_view(session: AsyncSession, batch: Batch) -> dict[str, Any]:
    rows = list((await session.execute(store.batch_summary_stmt(batch.id))).all())
    return batch_object(batch, store.summarise_batch(rows))


@router.post(
    "",
    status_code=201,
    openapi_extra=BATCH_BODY_DOC,
    responses={201: answer(BatchObject, "The batch, every job queued.")},
)
async def create_batch(
    request: Request, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> JSONResponse:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type in NDJSON_TYPES:
        options = _query_options(request)
        parser = _parser(state, options)
        await parse_ndjson_batch(request.stream(), parser)
    elif content_type == "application/json":
        raw = await request.body()
        # Parsed in a worker thread, as NDJSON chunks are: up to 200 MB must not hold the loop.
        document, requests = await asyncio.to_thread(split_json_batch, raw)
        options = _options(document)
        parser = _parser(state, options)
        await asyncio.to_thread(parse_json_requests, requests, parser, upload_bytes=len(raw))
    else:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {content_type!r}: send application/json or application/x-ndjson.",
            param="Content-Type",
        )
    specs = parser.finish()
    batch, jobs = await submit_batch(
        session,
        BatchSpec(priority=options.priority, webhook_url=options.webhook_url, metadata=options.metadata),
        specs,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        request_id=request_id_of(request),
    )
    log.info("batch_submitted", batch_id=batch.id, jobs=len(jobs))
    # The batch is committed, so it is the client's: answer now and enqueue its jobs after the
    # answer is sent. Enqueueing tens of thousands of messages takes seconds on a busy machine
    # (workers already running the first ones compete for the CPU); if this process dies
    # meanwhile, the sweeper dispatches what was not enqueued, as for any lost message.
    dispatch = BackgroundTask(
        dispatch_committed, state.broker, jobs, fault_exit_after_commit=state.settings.fault_exit_after_commit
    )
    return JSONResponse(await _batch_view(session, batch), status_code=201, background=dispatch)


@router.get("/{batch_id}", response_model=None, responses={200: answer(BatchObject, "The batch.")})
async def get_batch(batch_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _batch_view(session, await _load_batch(session, principal.tenant_id, batch_id))


@router.get(
    "", response_model=None, responses={200: answer(BatchList, "The tenant's batches, newest first.")}
)
async def list_batches(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
) -> dict[str, Any]:
    rows = list(
        (
            await session.execute(store.select_batches_page(principal.tenant_id, limit=limit, after=after))
        ).scalars()
    )
    page = rows[:limit]
    return {
        "object": "list",
        "data": [await _batch_view(session, batch) for batch in page],
        "has_more": len(rows) > limit,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }


@router.post(
    "/{batch_id}/cancel",
    response_model=None,
    responses={
        200: answer(BatchObject, "The batch; its queued jobs are cancelled. A finished batch is unchanged.")
    },
)
async def cancel_batch(
    batch_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    batch = await _load_batch(session, principal.tenant_id, batch_id)
    now = state.clock.now()
    if batch.cancelled_at is None:
        # A batch whose every job is already final stays as it was (completed), as a final job does.
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
    return await _batch_view(session, await _load_batch(session, principal.tenant_id, batch_id))


async def _result_lines(state: AppState, batch_id: str) -> AsyncIterator[bytes]:
    after_seq = -1
    while True:
        async with state.sessions() as session:
            rows = (
                await session.execute(
                    store.batch_results_stmt(batch_id, after_seq=after_seq, limit=RESULTS_PAGE)
                )
            ).all()
        if not rows:
            return
        chunk = []
        for seq, custom_id, job_id, status, result, error in rows:
            line = {
                "custom_id": custom_id,
                "job_id": job_id,
                "status": status,
                "result": result,
                "error": error,
            }
            chunk.append(json.dumps(line, separators=(",", ":")))
            after_seq = seq
        yield ("\n".join(chunk) + "\n").encode()
        if len(rows) < RESULTS_PAGE:
            return


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON line per final job, in submission order.",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
async def batch_results(
    batch_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> StreamingResponse:
    await _load_batch(session, principal.tenant_id, batch_id)
    await session.close()
    return StreamingResponse(_result_lines(state, batch_id), media_type="application/x-ndjson")
