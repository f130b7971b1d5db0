"""Managing webhook endpoints and secrets, and reading deliveries (what the API routes call).

Secrets are shown once at creation, readable again through their own endpoint, and rotated
with an overlap: the previous secret keeps signing beside the new one for 24 h.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest, NotFound
from core.ids import new_id
from core.representation import rfc3339
from core.store.models import Tenant, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from core.webhooks.outbox import PENDING, SECRET_OVERLAP, tenant_secret
from core.webhooks.signing import new_secret

MAX_ENDPOINTS = 16


def endpoint_object(endpoint: WebhookEndpoint, *, with_secret: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "url": endpoint.url,
        "events": endpoint.events,
        "description": endpoint.description,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "created_at": rfc3339(endpoint.created_at),
    }
    if with_secret:
        data["secret"] = endpoint.secret
    return data


def create_endpoint(
    session: Session,
    tenant_id: str,
    url: str,
    events: list[str] | None,
    description: str | None,
    now: datetime,
) -> WebhookEndpoint:
    """A new endpoint, at most `MAX_ENDPOINTS` live ones per tenant: every final job writes one
    delivery per endpoint, so their number multiplies a batch's rows and outgoing requests."""
    # The tenant row locked first: two creates at MAX_ENDPOINTS - 1 cannot both pass the count.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    live = session.execute(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))
    ).scalar_one()
    if live >= MAX_ENDPOINTS:
        raise InvalidRequest(
            f"A tenant has at most {MAX_ENDPOINTS} webhook endpoints; delete one first, or filter"
            " one endpoint's events instead of adding another.",
            param="url",
        )
    endpoint = WebhookEndpoint(
        id=new_id("we"),
        tenant_id=tenant_id,
        url=url,
        events=events,
        description=description,
        secret=new_secret(),
        enabled=True,
        created_at=now,
    )
    session.add(endpoint)
    session.commit()
    return endpoint


def get_endpoint(session: Session, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    endpoint = session.execute(
        select(WebhookEndpoint).where(
            WebhookEndpoint.id == endpoint_id,
            WebhookEndpoint.tenant_id == tenant_id,
            WebhookEndpoint.deleted_at.is_(None),
        )
    ).scalar_one_or_none()
    if endpoint is None:
        raise NotFound(f"No webhook endpoint with id {endpoint_id!r}.", param="endpoint_id")
    return endpoint


def list_endpoints(session: Session, tenant_id: str) -> list[WebhookEndpoint]:
    stmt = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.deleted_at.is_(None))
        .order_by(WebhookEndpoint.id.desc())
    )
    return list(session.execute(stmt).scalars())


def rotate_endpoint_secret(session: Session, endpoint: WebhookEndpoint, now: datetime) -> str:
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_expires_at = now + SECRET_OVERLAP
    endpoint.secret = new_secret()
    session.commit()
    return endpoint.secret


def tenant_secret_value(session: Session, tenant_id: str, now: datetime) -> str:
    row = tenant_secret(session, tenant_id, now)
    session.commit()
    return row.secret


def rotate_tenant_secret(session: Session, tenant_id: str, now: datetime) -> str:
    row = tenant_secret(session, tenant_id, now)
    row.previous_secret = row.secret
    row.previous_expires_at = now + SECRET_OVERLAP
    row.secret = new_secret()
    session.commit()
    return row.secret


def deliveries_for_job(session: Session, tenant_id: str, job_id: str) -> list[dict[str, Any]]:
    deliveries = list(
        session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.job_id == job_id)
            .order_by(WebhookDelivery.id)
        ).scalars()
    )
    attempts: dict[str, list[dict[str, Any]]] = {d.id: [] for d in deliveries}
    if deliveries:
        rows = session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
        ).scalars()
        for row in rows:
            attempts[row.delivery_id].append(
                {
                    "attempt": row.attempt,
                    "at": rfc3339(row.at),
                    "status_code": row.status_code,
                    "latency_ms": row.latency_ms,
                    "error": row.error,
                    "response_snippet": row.response_snippet,
                }
            )
    return [delivery_object(d, attempts[d.id]) for d in deliveries]


def delivery_object(delivery: WebhookDelivery, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "object": "webhook_delivery",
        "event_type": delivery.event_type,
        "webhook_id": delivery.webhook_id,
        "endpoint_id": delivery.endpoint_id,
        "url": delivery.url,
        "status": delivery.status,
        "next_attempt_at": rfc3339(delivery.next_attempt_at) if delivery.status == PENDING else None,
        "attempts": attempts,
    }


def reopen_delivery(session: Session, tenant_id: str, delivery_id: str, now: datetime) -> WebhookDelivery:
    """A hand-made retry: the delivery goes back to pending, due now; its log keeps growing."""
    delivery = session.execute(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id
        )
    ).scalar_one_or_none()
    if delivery is None:
        raise NotFound(f"No webhook delivery with id {delivery_id!r}.", param="delivery_id")
    delivery.status = PENDING
    delivery.next_attempt_at = now
    session.commit()
    return delivery
