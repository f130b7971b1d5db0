"""`/v1/batches`: submit (JSON or NDJSON), read with counts, list, cancel, stream results, delete."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from api.batch_ops import cancel, final_job_pages, load_batch, summary
from api.batch_upload import BatchParser, parse_ndjson_batch
from api.deps import UPLOAD_SLOT, AppState, Principal, PrincipalDep, SessionDep, StateDep
from api.dispatch import dispatch_after_answer
from api.documentation import BatchList, BatchObject, DeletedObject, answer
from api.errors import describe_validation_error
from api.idempotency import IdempotencyKeyHeader, fingerprinted, keys_since
from api.job_specs import check_webhook_url
from api.json_batch import JsonBatchLines, read_json_batch
from api.request_id import request_id_of
from api.schemas import MAX_ID_CHARS, BatchOptions
from core.errors import InvalidRequest, UnsupportedMediaType
from core.representation import batch_object
from core.services.erasure import erase_batch
from core.services.submit import BatchSpec, existing_batch_for_key, submit_batch
from core.store import jobs as store
from core.store.models import Batch

log = structlog.get_logger("jobgate.api")

router = APIRouter(prefix="/v1/batches", tags=["batches"])

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


def _check_options(state: AppState, options: BatchOptions, principal: Principal) -> None:
    principal.check_priority(options.priority)
    if options.webhook_url is not None:
        check_webhook_url(state.settings, options.webhook_url)


def _parser(state: AppState, options: BatchOptions, principal: Principal) -> BatchParser:
    _check_options(state, options, principal)
    return BatchParser(
        config=state.config, settings=state.settings, default_priority=options.priority, principal=principal
    )


async def _batch_view(session: AsyncSession, batch: Batch) -> dict[str, Any]:
    return batch_object(batch, await summary(session, batch))


@router.post(
    "",
    status_code=201,
    dependencies=[UPLOAD_SLOT],
    openapi_extra=BATCH_BODY_DOC,
    responses={
        201: answer(BatchObject, "The batch, every job queued."),
        200: answer(BatchObject, "The batch an earlier request with this Idempotency-Key and body made."),
    },
)
async def create_batch(
    request: Request,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    digest = hashlib.sha256(request.url.query.encode() + b"\n")
    if content_type in NDJSON_TYPES:
        options = _query_options(request)
        parser = _parser(state, options, principal)
        await parse_ndjson_batch(fingerprinted(request.stream(), digest), parser)
    elif content_type == "application/json":
        # Read as it streams, a request at a time (api/json_batch.py). The options may follow
        # the requests: they are checked once the body is read, before any bad request is named,
        # and the batch's priority goes to the requests that set none (`finish` below).
        lines = JsonBatchLines(_parser(state, BatchOptions(), principal))
        await read_json_batch(fingerprinted(request.stream(), digest), lines)
        options = _options(lines.options)
        _check_options(state, options, principal)
        if lines.refusal is not None:
            raise lines.refusal
        parser = lines.parser
    else:
        raise UnsupportedMediaType(
            f"Unsupported Content-Type {content_type!r}: send application/json or application/x-ndjson.",
            param="Content-Type",
        )
    specs = parser.finish(options.priority)
    body_hash = digest.hexdigest()
    if idempotency_key is not None:
        earlier = await existing_batch_for_key(
            session, principal.tenant_id, idempotency_key, body_hash, keys_since=keys_since(state)
        )
        if earlier is not None:
            return JSONResponse(await _batch_view(session, earlier), status_code=200)
    batch_spec = BatchSpec(
        priority=options.priority,
        webhook_url=options.webhook_url,
        metadata=options.metadata,
        idempotency_key=idempotency_key,
        request_hash=body_hash,
    )
    batch, jobs, _ = await submit_batch(
        session,
        batch_spec,
        specs,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        request_id=request_id_of(request),
    )
    log.info("batch_submitted", batch_id=batch.id, jobs=len(jobs))
    dispatch = dispatch_after_answer(state, jobs)
    return JSONResponse(
        await _batch_view(session, batch), status_code=201 if jobs else 200, background=dispatch
    )


@router.get("/{batch_id}", response_model=None, responses={200: answer(BatchObject, "The batch.")})
async def get_batch(batch_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return await _batch_view(session, await load_batch(session, principal.tenant_id, batch_id))


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
    await cancel(state, session, await load_batch(session, principal.tenant_id, batch_id))
    return await _batch_view(session, await load_batch(session, principal.tenant_id, batch_id))


@router.delete(
    "/{batch_id}",
    response_model=None,
    responses={
        200: answer(
            DeletedObject, "The batch and its jobs are erased; it is gone (409 until every job is final)."
        )
    },
)
async def delete_batch(
    batch_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    """Erase a finished batch's content and its jobs', keeping only usage (core/services/erasure.py)."""
    await erase_batch(session, await load_batch(session, principal.tenant_id, batch_id), state.clock.utcnow())
    log.info("batch_deleted", batch_id=batch_id)
    return {"id": batch_id, "object": "batch.deleted", "deleted": True}


async def _result_lines(state: AppState, batch_id: str) -> AsyncIterator[bytes]:
    async for rows in final_job_pages(state, batch_id):
        chunk = [
            json.dumps(
                {
                    "custom_id": custom_id,
                    "job_id": job_id,
                    "status": status,
                    "result": result,
                    "error": error,
                },
                separators=(",", ":"),
            )
            for custom_id, job_id, status, result, error in rows
        ]
        yield ("\n".join(chunk) + "\n").encode()


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
    await load_batch(session, principal.tenant_id, batch_id)
    await session.close()
    return StreamingResponse(_result_lines(state, batch_id), media_type="application/x-ndjson")
