"""`/openai/v1/files`: OpenAI's Files API for batch input (`purpose=batch`), so
`client.files.create(file=..., purpose="batch")` and `client.files.content(...)` work against
jobgate. Uploads are read a chunk at a time into SQL (`api/file_store.py`), at most
`JOBGATE_MAX_BATCH_BYTES` (200 MB) and `JOBGATE_MAX_BATCH_REQUESTS` (50,000) lines; batch
output and error files are served here too (`purpose=batch_output`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
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
from api.openai_wire import file_object
from api.schemas import MAX_ID_CHARS
from core.errors import InvalidRequest
from core.ids import new_id
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
    request: Request, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    form = await request.form(max_files=1, max_fields=8)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise InvalidRequest(f"Only purpose 'batch' is supported here, not {purpose!r}.", param="purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Send the file as the multipart field 'file'.", param="file")
        now = state.clock.utcnow()
        stored = new_stored_file(
            new_file_id(), principal.tenant_id, "batch", upload.filename or "upload", now
        )
        stored.expires_at = now + _expiry(form.get("expires_after[seconds]"))

        async def pieces() -> AsyncIterator[bytes]:
            while piece := await upload.read(CHUNK_BYTES):
                yield piece

        limits = FileLimits(state.settings.max_batch_bytes, state.settings.max_batch_requests)
        await write_file(session, stored, pieces(), limits)
        await session.commit()
    finally:
        await form.close()
    return file_object(stored)


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
