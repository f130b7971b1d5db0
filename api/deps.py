"""Request dependencies: the app's shared state, the DB session, and the caller's tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, TypeVar

import redis.asyncio as aioredis
import structlog
from dramatiq.brokers.redis import RedisBroker
from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.inline_calls import InlineCalls
from api.key_cache import KeyCache
from api.key_gate import MISSING_KEY, api_key_of
from api.notifier import JobNotifier
from core.auth import hash_key
from core.config import GatewayConfig
from core.errors import NotFound, Unauthenticated
from core.redis.keys import Keys
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.models import ApiKey, Tenant, TenantOwned

log = structlog.get_logger("jobgate.api")


@dataclass
class AppState:
    """Everything the composition root (api/app.py lifespan) builds once per process."""

    settings: Settings
    config: GatewayConfig
    sessions: async_sessionmaker[AsyncSession]
    clock: SqlClock
    keys: Keys
    redis: aioredis.Redis
    broker: RedisBroker
    notifier: JobNotifier
    principals: KeyCache[Principal]
    # The sync path's own calls (api/inline_calls.py); None: every sync request takes the queue.
    inline: InlineCalls | None = None


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    tenant_name: str


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.jobgate
    return state


async def get_state(request: Request) -> AppState:
    # `async`: FastAPI runs a plain `def` dependency on its thread pool, a thread hand-off
    # (0.1-0.5 ms) on every request for a dict lookup.
    return app_state(request)


async def get_session(state: Annotated[AppState, Depends(get_state)]) -> AsyncIterator[AsyncSession]:
    session = state.sessions()
    try:
        yield session
    finally:
        try:
            await session.close()
        except (DBAPIError, OSError) as exc:
            # FastAPI closes this after the answer has started: a database gone meanwhile would
            # break the client's keep-alive connection instead of failing its next request
            # with a 503. The pool discards the dead connection; nothing here is left undone.
            log.warning("session_close_failed", error=type(exc).__name__)


def _bearer(request: Request) -> str:
    token = api_key_of(
        request.url.path, request.headers.get("authorization", ""), request.headers.get("x-api-key", "")
    )
    if token is None:  # refused by KeyGateMiddleware already, unless this app runs without it
        raise Unauthenticated(MISSING_KEY)
    return token


async def get_principal(
    request: Request, session: Annotated[AsyncSession, Depends(get_session)]
) -> Principal:
    token = _bearer(request)
    key_hash = hash_key(token)
    state = app_state(request)
    principal = state.principals.get(key_hash)
    if principal is not None:
        return principal
    stmt = (
        select(Tenant.id, Tenant.name)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )
    row = (await session.execute(stmt)).first()
    if row is None:
        raise Unauthenticated("Incorrect API key provided.")
    principal = Principal(tenant_id=row[0], tenant_name=row[1])
    state.principals.put(key_hash, principal)
    return principal


Owned = TypeVar("Owned", bound=TenantOwned)


async def load_owned(
    session: AsyncSession, model: type[Owned], tenant_id: str, object_id: str, *, missing: str, param: str
) -> Owned:
    """The caller's object of `model` with this id; `NotFound(missing)` when there is none
    (another tenant's object included: its existence is not the caller's to learn)."""
    stmt = select(model).where(model.id == object_id, model.tenant_id == tenant_id)
    found = (await session.execute(stmt)).scalars().first()
    if found is None:
        raise NotFound(missing, param=param)
    return found


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
