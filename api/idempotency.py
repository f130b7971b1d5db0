"""The `Idempotency-Key` header every create route takes, and the body fingerprint a repeat is
compared by: the same key with the same body is the first request's object (no second job,
no second call), with another body a 409 (core/services/submit.py decides). A key names its
work for `JOBGATE_IDEMPOTENCY_TTL_S` (24 h); after that it makes new work, as a new key would."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Header

from api.deps import AppState

IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]


async def fingerprinted(chunks: AsyncIterator[bytes], digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """`chunks`, passed on as they come, each also fed to `digest` (an upload's fingerprint
    without holding the upload)."""
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk


def keys_since(state: AppState) -> datetime:
    """Keys made before this time have expired: the lookups pass over them."""
    return state.clock.utcnow() - timedelta(seconds=state.settings.idempotency_ttl_s)
