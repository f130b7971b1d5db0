"""Webhook endpoints, the tenant signing secret, and delivery logs / hand-made retries."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import ConfigDict, Field, field_validator

from api.deps import PrincipalDep, SessionDep, StateDep
from api.dispatch import dispatch_deliveries
from api.job_specs import check_webhook_url
from api.schemas import CheckedBody
from api.waiting import load_job
from core.representation import rfc3339
from core.webhooks import admin
from core.webhooks.outbox import EVENT_TYPES
from core.webhooks.retry_limit import count_manual_retry

router = APIRouter(tags=["webhooks"])


def _check_events(value: list[str] | None) -> list[str] | None:
    for event in value or []:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown event {event!r}; known: {', '.join(EVENT_TYPES)}")
    return list(dict.fromkeys(value)) if value is not None else None  # each once, in order


class EndpointCreate(CheckedBody):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    events: list[str] | None = Field(default=None, max_length=len(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=500)

    _events = field_validator("events")(_check_events)


class EndpointPatch(CheckedBody):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    url: str | None = Field(default=None, max_length=2048)
    events: list[str] | None = Field(default=None, max_length=len(EVENT_TYPES))
    description: str | None = Field(default=None, max_length=500)

    _events = field_validator("events")(_check_events)

    @field_validator("url")
    @classmethod
    def _url_not_null(cls, value: str | None) -> str | None:
        # Absent keeps the URL; an explicit null would reach the NOT NULL column (a 5xx).
        if value is None:
            raise ValueError("url cannot be null; leave it out to keep the current URL")
        return value


@router.post("/v1/webhook-endpoints", status_code=201)
async def create_endpoint(
    body: EndpointCreate, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> JSONResponse:
    check_webhook_url(state.settings, body.url, param="url")
    now = state.clock.utcnow()
    endpoint = await session.run_sync(
        lambda s: admin.create_endpoint(s, principal.tenant_id, body.url, body.events, body.description, now)
    )
    return JSONResponse(admin.endpoint_object(endpoint, with_secret=True), status_code=201)


@router.get("/v1/webhook-endpoints")
async def list_endpoints(session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    endpoints = await session.run_sync(lambda s: admin.list_endpoints(s, principal.tenant_id))
    return {"object": "list", "data": [admin.endpoint_object(e) for e in endpoints], "has_more": False}


@router.get("/v1/webhook-endpoints/{endpoint_id}")
async def get_endpoint(endpoint_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    endpoint = await session.run_sync(lambda s: admin.get_endpoint(s, principal.tenant_id, endpoint_id))
    return admin.endpoint_object(endpoint)


@router.patch("/v1/webhook-endpoints/{endpoint_id}")
async def update_endpoint(
    endpoint_id: str, body: EndpointPatch, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    if body.url is not None:
        check_webhook_url(state.settings, body.url, param="url")

    def apply(s: Any) -> Any:
        endpoint = admin.get_endpoint(s, principal.tenant_id, endpoint_id)
        for name in ("url", "events", "description"):
            if name in body.model_fields_set:
                setattr(endpoint, name, getattr(body, name))
        if body.enabled is not None:
            endpoint.enabled = body.enabled
            if body.enabled:
                endpoint.disabled_reason = None
                endpoint.failing_since = None
        s.commit()
        return endpoint

    return admin.endpoint_object(await session.run_sync(apply))


@router.delete("/v1/webhook-endpoints/{endpoint_id}")
async def delete_endpoint(
    endpoint_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    now = state.clock.utcnow()

    def delete(s: Any) -> None:
        endpoint = admin.get_endpoint(s, principal.tenant_id, endpoint_id)
        endpoint.deleted_at = now
        endpoint.enabled = False
        s.commit()

    await session.run_sync(delete)
    return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}


@router.get("/v1/webhook-endpoints/{endpoint_id}/secret")
async def endpoint_secret(endpoint_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, str]:
    endpoint = await session.run_sync(lambda s: admin.get_endpoint(s, principal.tenant_id, endpoint_id))
    return {"secret": endpoint.secret}


@router.post("/v1/webhook-endpoints/{endpoint_id}/rotate-secret")
async def rotate_endpoint_secret(
    endpoint_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, str]:
    now = state.clock.utcnow()
    secret = await session.run_sync(
        lambda s: admin.rotate_endpoint_secret(
            s, admin.get_endpoint(s, principal.tenant_id, endpoint_id), now
        )
    )
    return {"secret": secret}


@router.get("/v1/webhook-secret")
async def tenant_secret(state: StateDep, session: SessionDep, principal: PrincipalDep) -> dict[str, str]:
    now = state.clock.utcnow()
    return {
        "secret": await session.run_sync(lambda s: admin.tenant_secret_value(s, principal.tenant_id, now))
    }


@router.post("/v1/webhook-secret/rotate")
async def rotate_tenant_secret(
    state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, str]:
    now = state.clock.utcnow()
    return {
        "secret": await session.run_sync(lambda s: admin.rotate_tenant_secret(s, principal.tenant_id, now))
    }


@router.get("/v1/jobs/{job_id}/deliveries")
async def job_deliveries(job_id: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    await load_job(session, principal.tenant_id, job_id)
    data = await session.run_sync(lambda s: admin.deliveries_for_job(s, principal.tenant_id, job_id))
    return {"object": "list", "data": data}


@router.post("/v1/webhook-deliveries/{delivery_id}/retry", status_code=202)
async def retry_delivery(
    delivery_id: str, state: StateDep, session: SessionDep, principal: PrincipalDep
) -> dict[str, Any]:
    per_window = state.settings.webhook_manual_retries_per_minute
    await count_manual_retry(state.redis, state.keys, principal.tenant_id, per_window=per_window)
    now = state.clock.utcnow()
    delivery = await session.run_sync(
        lambda s: admin.reopen_delivery(s, principal.tenant_id, delivery_id, now)
    )
    await dispatch_deliveries(state.broker, [delivery.id], manual=True)
    return {
        "id": delivery.id,
        "object": "webhook_delivery",
        "status": delivery.status,
        "queued_at": rfc3339(now),
    }
