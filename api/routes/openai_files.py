"""`/openai/v1/files`: OpenAI's Files API for batch input (`purpose=batch`), so
`client.files.create(file=..., purpose="batch")` and `client.files.content(...)` work against
jobgate. Uploads are read a chunk at a time into SQL (`api/file_store.py`), at most
`JOBGATE_MAX_BATCH_BYTES` (200 MB) and `JOBGATE_MAX_BATCH_REQUESTS` (50,000) lines; batch
output and error files are served here too (`purpose=batch_output`).

An upload with an `Idempotency-Key` is fingerprinted as it is read: its form fields, its
filename and its content (not the raw body, whose multipart boundary an SDK draws anew for
each retry). The same key with the same upload is the first file (200, nothing stored
twice); with another upload, a 409."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import UploadFile

from api.deps import UPLOAD_SLOT, PrincipalDep, SessionDep, StateDep
from api.file_store import (
    CHUNK_BYTES,
    FileLimits,
    delete_file,
    load_file,
    new_stored_file,
    read_file,
    write_file,
)
from api.idempotency import IdempotencyKeyHeader, fingerprinted, keys_since
from api.openai_wire import file_object
from api.schemas import MAX_ID_CHARS
from core.errors import Conflict, InvalidRequest
from core.ids import new_id
from core.services.submit import made_with_key
from core.store.models import StoredFile

router = APIRouter(prefix="/openai/v1/files", tags=["openai-compatible"])

# OpenAI's defaults and bounds for a batch file's life (`expires_after.seconds`).
DEFAULT_EXPIRY = timedelta(days=30)
EXPIRY_RANGE_S = (3600, 2_592_000)


def new_file_id() -> str:
    """`file-…`, OpenAI's form, time-ordered like every jobgate id."""
    return "file-" + new_id("file").removeprefix("file_")


@router.post("", response_model=None, dependencies=[UPLOAD_SLOT])
async def create_file(
    request: Request,
    state: StateDep,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> dict[str, Any]:
    form = await request.form(max_files=1, max_fields=8)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise InvalidRequest(f"Only purpose 'batch' is supported here, not {purpose!r}.", param="purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Send the file as the multipart field 'file'.", param="file")
        if form.get("expires_after[anchor]") not in (None, "created_at"):
            raise InvalidRequest("expires_after.anchor is 'created_at'.", param="expires_after.anchor")
        seconds = form.get("expires_after[seconds]")
        expiry = _expiry(seconds)
        fields = {"purpose": purpose, "filename": upload.filename, "expires_after_seconds": seconds}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode() + b"\n")

        async def pieces() -> AsyncIterator[bytes]:
            while piece := await upload.read(CHUNK_BYTES):
                yield piece

        content = fingerprinted(pieces(), digest)
        if idempotency_key is not None:
            earlier = await made_with_key(
                session, StoredFile, principal.tenant_id, idempotency_key, keys_since(state)
            )
            if earlier is not None:  # a repeat: read only to compare, store nothing
                async for _ in content:
                    pass
                return _same_upload(earlier, digest.hexdigest())
        now = state.clock.utcnow()
        stored = new_stored_file(
            new_file_id(), principal.tenant_id, "batch", upload.filename or "upload", now
        )
        stored.expires_at = now + expiry
        limits = FileLimits(state.settings.max_batch_bytes, state.settings.max_batch_requests)
        await write_file(session, stored, content, limits)
        if idempotency_key is not None:
            stored.idempotency_key, stored.request_hash = idempotency_key, digest.hexdigest()
        try:
            await session.commit()
        except IntegrityError:
            # Two uploads with one key raced; the loser answers with the winner's file.
            await session.rollback()
            if idempotency_key is None:
                raise
            earlier = await made_with_key(session, StoredFile, principal.tenant_id, idempotency_key, None)
            if earlier is None:
                raise
            return _same_upload(earlier, digest.hexdigest())
    finally:
        await form.close()
    return file_object(stored)


def _same_upload(earlier: StoredFile, upload_hash: str) -> dict[str, Any]:
    """The file an earlier upload with the same Idempotency-Key made, if it sent the same."""
    if earlier.request_hash != upload_hash:
        raise Conflict(
            "This Idempotency-Key was already used with a different upload; use a new key.",
            param="Idempotency-Key",
        )
    return file_object(earlier)


def _expiry(seconds: Any) -> timedelta:
    if seconds is None:
        return DEFAULT_EXPIRY
    low, high = EXPIRY_RANGE_S
    if not (isinstance(seconds, str) and seconds.isdigit() and low <= int(seconds) <= high):
        raise InvalidRequest(
            f"expires_after.seconds is between {low} and {high}.", param="expires_after.seconds"
        )
    return timedelta(seconds=int(seconds))


@router.get("", response_model=None)
async def list_files(
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[str | None, Query(max_length=MAX_ID_CHARS)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    stmt = select(StoredFile).where(StoredFile.tenant_id == principal.tenant_id)
    if purpose is not None:
        stmt = stmt.where(StoredFile.purpose == purpose)
    if after is not None:
        stmt = stmt.where(StoredFile.id < after if order == "desc" else StoredFile.id > after)
    stmt = stmt.order_by(StoredFile.id.desc() if order == "desc" else StoredFile.id.asc()).limit(limit + 1)
    rows = list((await session.execute(stmt)).scalars())
    page = rows[:limit]
    return {
        "object": "list",
        "data": [file_object(stored) for stored in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": len(rows) > limit,
    }


@router.get("/{file_id}", response_model=None)
async def retrieve_file(file_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    return file_object(await load_file(session, principal.tenant_id, file_id))


@router.get("/{file_id}/content", response_class=StreamingResponse)
async def file_content(
    file_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> StreamingResponse:
    stored = await load_file(session, principal.tenant_id, file_id)
    await session.close()
    return StreamingResponse(read_file(state, stored.id), media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=None)
async def remove_file(file_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    await delete_file(session, await load_file(session, principal.tenant_id, file_id))
    return {"id": file_id, "object": "file", "deleted": True}
