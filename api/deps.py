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

from api.authentication import HOLDER_SCOPE_KEY, KeyHolder, check_key
from api.concurrency import ConcurrencyCap
from api.inline_calls import InlineCalls
from api.key_cache import KeyCache
from api.key_gate import MISSING_KEY, api_key_of
from api.notifier import JobNotifier
from core.config import GatewayConfig
from core.errors import NotFound, PermissionDenied, Unauthenticated
from core.redis.auth_failures import AuthFailureLimit
from core.redis.keys import Keys
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.models import TenantOwned

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
    principals: KeyCache[KeyHolder]
    # Abuse limits (README): uploads and waits in progress in this process; failed key checks.
    uploads: ConcurrencyCap
    waits: ConcurrencyCap
    auth_failures: AuthFailureLimit
    # The sync path's own calls (api/inline_calls.py); None: every sync request takes the queue.
    inline: InlineCalls | None = None


@dataclass(frozen=True)
class Principal:
    """A tenant key's holder: every query it makes is scoped to `tenant_id`."""

    tenant_id: str
    tenant_name: str
    key_id: str | None = None
    # The model names the key may use (None: every one) and whether its batches may ask for
    # `interactive` priority.
    models: frozenset[str] | None = None
    allow_interactive: bool = True

    def check_model(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise PermissionDenied(
                f"This API key may not use model {model!r} (allowed: {', '.join(sorted(self.models))})",
                param="model",
            )

    def check_priority(self, priority: str | None) -> None:
        """Batch work asking for `interactive` priority needs a key that allows it."""
        if priority == "interactive" and not self.allow_interactive:
            raise PermissionDenied(
                "This API key may not submit batches with priority 'interactive'"
                " (an operator can allow it: jobgate keys create --allow-interactive)",
                param="priority",
            )


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


async def authenticate(request: Request) -> KeyHolder:
    """The key's holder: checked by `KeyGateMiddleware` before the body was read, or here for
    an app without it (and `/metrics`, outside the keyed prefixes)."""
    checked = request.scope.get("state", {}).get(HOLDER_SCOPE_KEY)
    if isinstance(checked, KeyHolder):
        return checked
    address = request.client.host if request.client is not None else None
    return await check_key(app_state(request), _bearer(request), address)


async def get_principal(holder: Annotated[KeyHolder, Depends(authenticate)]) -> Principal:
    """The caller's tenant; an operator key is refused (it manages the service, owns no work)."""
    if holder.scope != "tenant" or holder.tenant_id is None or holder.tenant_name is None:
        raise PermissionDenied(
            "This route needs a tenant key; operator keys manage tenants and keys (/v1/admin/)."
        )
    return Principal(
        tenant_id=holder.tenant_id,
        tenant_name=holder.tenant_name,
        key_id=holder.key_id,
        models=holder.models,
        allow_interactive=holder.allow_interactive,
    )


async def get_operator(holder: Annotated[KeyHolder, Depends(authenticate)]) -> KeyHolder:
    if holder.scope != "operator":
        raise PermissionDenied("This route needs an operator key (jobgate keys create --operator).")
    return holder


async def upload_slot(
    request: Request, principal: Annotated[Principal, Depends(get_principal)]
) -> AsyncIterator[None]:
    """One of the tenant's upload slots (`JOBGATE_MAX_UPLOADS_PER_TENANT`) while the request
    lasts; 429 when they are all taken."""
    with app_state(request).uploads.hold(principal.tenant_id):
        yield


async def wait_slot(
    request: Request, principal: Annotated[Principal, Depends(get_principal)]
) -> AsyncIterator[None]:
    """A sync call's waiting slot (`JOBGATE_MAX_WAITS_PER_TENANT`, `..._PER_PROCESS`) while the
    request lasts, its streamed answer included; 429 when the tenant or the process is full."""
    with app_state(request).waits.hold(principal.tenant_id):
        yield


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
OperatorDep = Annotated[KeyHolder, Depends(get_operator)]
UPLOAD_SLOT = Depends(upload_slot)
WAIT_SLOT = Depends(wait_slot)
