"""Checking an API key: the per-process cache, then SQL; revoked, expired and unknown keys
refused, and an address that tried too many unknown keys refused before any lookup.

`KeyGateMiddleware` runs this before the app reads the request's body, so a wrong key hears
401 before anything about its body (400, 413), as OpenAI answers; the dependencies in
`api/deps.py` take the holder it left in the request's scope. The lookup has a session of its
own, closed at once: an upload whose body is still coming holds no pool connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from core.auth import hash_key
from core.errors import KeyExpired, KeyRevoked, Unauthenticated
from core.representation import rfc3339
from core.store.clock import system_utcnow
from core.store.models import ApiKey, Tenant, as_utc

if TYPE_CHECKING:
    from api.deps import AppState

# Where the middleware leaves the checked holder, in the ASGI scope's "state".
HOLDER_SCOPE_KEY = "jobgate_key_holder"


@dataclass(frozen=True)
class KeyHolder:
    """What a key is, as the key cache keeps it: a revoked key stays revoked, so it is kept
    too (each retry with it is refused without a round trip); expiry is checked on every use."""

    key_id: str
    scope: str
    tenant_id: str | None
    tenant_name: str | None
    models: frozenset[str] | None
    allow_interactive: bool
    expires_at: datetime | None
    revoked: bool


async def check_key(state: AppState, token: str, address: str | None) -> KeyHolder:
    """The key's holder; 401 for a wrong, revoked or expired key, 429 for an address past its
    failed attempts."""
    key_hash = hash_key(token)
    holder = state.principals.get(key_hash)
    if holder is None:
        await state.auth_failures.refuse_if_blocked(address)
        stmt = (
            select(
                ApiKey.id,
                ApiKey.scope,
                ApiKey.tenant_id,
                Tenant.name,
                ApiKey.models,
                ApiKey.allow_interactive,
                ApiKey.expires_at,
                ApiKey.revoked_at,
            )
            .outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == key_hash)
        )
        async with state.sessions() as session:
            row = (await session.execute(stmt)).first()
        if row is None:
            await state.auth_failures.count_failure(address)
            raise Unauthenticated("Incorrect API key provided.")
        holder = KeyHolder(
            key_id=row[0],
            scope=row[1],
            tenant_id=row[2],
            tenant_name=row[3],
            models=frozenset(row[4]) if row[4] is not None else None,
            allow_interactive=bool(row[5]),
            expires_at=as_utc(row[6]),
            revoked=row[7] is not None,
        )
        state.principals.put(key_hash, holder)
    if holder.revoked:
        raise KeyRevoked("This API key has been revoked.")
    if holder.expires_at is not None and holder.expires_at <= system_utcnow():
        raise KeyExpired(f"This API key expired at {rfc3339(holder.expires_at)}.")
    return holder
