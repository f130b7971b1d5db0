"""The operator API, `/v1/admin/...`: tenants with their limits, budgets and shares, and keys.

Operator keys only; a tenant key gets 403 `permission_denied` (the route exists). The work is
done by `core.tenancy` and `core.auth`, the same functions `jobgate tenants|keys ...` call,
run on this request's session through `run_sync`. A key's secret is in the answer to its
creation and nowhere else.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.deps import OperatorDep, SessionDep, StateDep
from api.job_specs import check_model
from core.auth import KeyOptions, Scope, create_key, find_key, list_keys, revoke_key
from core.representation import key_object, tenant_object
from core.tenancy import create_tenant, get_tenant, list_tenants, update_tenant

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class TenantFields(BaseModel):
    """A tenant's policy; a field set to null falls back to the config file's `tenants` entry."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    budget_usd_day: Decimal | None = Field(default=None, ge=0)
    budget_usd_month: Decimal | None = Field(default=None, ge=0)
    share: float | None = Field(default=None, gt=0, le=1000)
    shared_cache: bool | None = None
    retention_days: int | None = Field(default=None, ge=1)


class TenantCreate(TenantFields):
    name: str = Field(min_length=1, max_length=200)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope = "tenant"
    tenant: str | None = Field(default=None, min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    expires_in_days: float | None = Field(default=None, gt=0, le=36500)
    models: list[str] | None = Field(default=None, max_length=200)
    allow_interactive: bool = False
    budget_usd_day: Decimal | None = Field(default=None, ge=0)
    budget_usd_month: Decimal | None = Field(default=None, ge=0)


def _list(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": False}


@router.get("/tenants")
async def admin_list_tenants(session: SessionDep, _operator: OperatorDep) -> dict[str, Any]:
    return _list([tenant_object(t) for t in await session.run_sync(list_tenants)])


@router.post("/tenants", status_code=201)
async def admin_create_tenant(
    body: TenantCreate, session: SessionDep, _operator: OperatorDep
) -> dict[str, Any]:
    fields = body.model_dump(exclude={"name"}, exclude_unset=True)
    return tenant_object(await session.run_sync(create_tenant, body.name, fields))


@router.get("/tenants/{name}")
async def admin_get_tenant(name: str, session: SessionDep, _operator: OperatorDep) -> dict[str, Any]:
    return tenant_object(await session.run_sync(get_tenant, name))


@router.patch("/tenants/{name}")
async def admin_update_tenant(
    name: str, body: TenantFields, session: SessionDep, _operator: OperatorDep
) -> dict[str, Any]:
    return tenant_object(await session.run_sync(update_tenant, name, body.model_dump(exclude_unset=True)))


@router.get("/keys")
async def admin_list_keys(
    session: SessionDep, _operator: OperatorDep, tenant: str | None = Query(default=None, max_length=200)
) -> dict[str, Any]:
    return _list([key_object(k, name) for k, name in await session.run_sync(list_keys, tenant)])


@router.post("/keys", status_code=201)
async def admin_create_key(
    body: KeyCreate, state: StateDep, session: SessionDep, _operator: OperatorDep
) -> JSONResponse:
    for i, model in enumerate(body.models or []):
        check_model(state.config, model, param=f"models.{i}")
    options = KeyOptions(
        name=body.name,
        expires_in_days=body.expires_in_days,
        models=body.models,
        allow_interactive=body.allow_interactive,
        budget_usd_day=body.budget_usd_day,
        budget_usd_month=body.budget_usd_month,
    )
    new = await session.run_sync(lambda s: create_key(s, body.tenant, scope=body.scope, options=options))
    key, tenant_name = await session.run_sync(find_key, new.key_id)
    # The secret, once: only its hash is kept.
    return JSONResponse({**key_object(key, tenant_name), "key": new.key}, status_code=201)


@router.get("/keys/{key_id}")
async def admin_get_key(key_id: str, session: SessionDep, _operator: OperatorDep) -> dict[str, Any]:
    key, tenant_name = await session.run_sync(find_key, key_id)
    return key_object(key, tenant_name)


@router.delete("/keys/{key_id}")
async def admin_revoke_key(key_id: str, session: SessionDep, _operator: OperatorDep) -> dict[str, Any]:
    """Revoke the key: refused everywhere within the key cache's TTL (JOBGATE_KEY_CACHE_TTL_S)."""
    key, tenant_name = await session.run_sync(revoke_key, key_id)
    return key_object(key, tenant_name)
