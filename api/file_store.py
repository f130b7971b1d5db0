"""Stored files: an upload's or a batch output's bytes in SQL, 1 MiB a row (`file_chunks`).

Files live where the deployment's data is, so a backup of the database holds them and no
shared disk is needed between API processes; disk use is the files' size in the database
(Postgres may compress JSONL further), freed when a file is deleted. Writing takes the bytes
as they come (an upload is read a chunk at a time, never whole), reading streams them back
a few chunks at a time, each page on a session of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AppState, load_owned
from core.errors import InvalidRequest, PayloadTooLarge
from core.store.models import FileChunk, StoredFile

CHUNK_BYTES = 1 << 20
READ_PAGE = 8  # chunks read per round trip when streaming a file back


@dataclass(frozen=True)
class FileLimits:
    max_bytes: int
    max_lines: int


async def write_file(
    session: AsyncSession, stored: StoredFile, data: AsyncIterable[bytes], limits: FileLimits | None = None
) -> StoredFile:
    """Insert `stored` (its `bytes` and `lines` counted here) and its content, in 1 MiB rows;
    the caller commits. A file over `limits` is refused before anything is committed."""
    stored.bytes = stored.lines = 0
    session.add(stored)
    await session.flush()
    seq, pending = 0, b""
    async for piece in data:
        stored.bytes += len(piece)
        stored.lines += piece.count(b"\n")
        if limits is not None:
            _check(stored, limits)
        pending += piece
        while len(pending) >= CHUNK_BYTES:
            await _insert_chunk(session, stored.id, seq, pending[:CHUNK_BYTES])
            seq, pending = seq + 1, pending[CHUNK_BYTES:]
    if pending:
        await _insert_chunk(session, stored.id, seq, pending)
        if not pending.endswith(b"\n"):
            stored.lines += 1
    return stored


def _check(stored: StoredFile, limits: FileLimits) -> None:
    if stored.bytes > limits.max_bytes:
        raise PayloadTooLarge(f"A file may hold at most {limits.max_bytes} bytes.", param="file")
    if stored.lines > limits.max_lines:
        raise InvalidRequest(f"A batch input file may hold at most {limits.max_lines} lines.", param="file")


async def _insert_chunk(session: AsyncSession, file_id: str, seq: int, data: bytes) -> None:
    await session.execute(insert(FileChunk).values(file_id=file_id, seq=seq, data=data))


async def load_file(session: AsyncSession, tenant_id: str, file_id: str) -> StoredFile:
    missing = f"No such File object: {file_id}"
    return await load_owned(session, StoredFile, tenant_id, file_id, missing=missing, param="file_id")


async def read_file(state: AppState, file_id: str) -> AsyncIterator[bytes]:
    """The file's bytes, a few chunks per round trip."""
    after = -1
    while True:
        async with state.sessions() as session:
            stmt = (
                select(FileChunk.seq, FileChunk.data)
                .where(FileChunk.file_id == file_id, FileChunk.seq > after)
                .order_by(FileChunk.seq)
                .limit(READ_PAGE)
            )
            rows = (await session.execute(stmt)).all()
        for seq, data in rows:
            after = seq
            yield bytes(data)
        if len(rows) < READ_PAGE:
            return


async def delete_file(session: AsyncSession, stored: StoredFile) -> None:
    await session.execute(delete(FileChunk).where(FileChunk.file_id == stored.id))
    await session.execute(delete(StoredFile).where(StoredFile.id == stored.id))
    await session.commit()


def new_stored_file(file_id: str, tenant_id: str, purpose: str, filename: str, now: datetime) -> StoredFile:
    return StoredFile(
        id=file_id, tenant_id=tenant_id, purpose=purpose, filename=filename, bytes=0, lines=0, created_at=now
    )
