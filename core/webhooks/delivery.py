"""Delivering one webhook attempt, and scheduling the next one when it fails.

An attempt is claimed like a job (a conditional UPDATE on the attempt count), so a message
delivered twice sends once. Any 2xx is success; everything else, timeouts and connection
errors included, is retried on `JOBGATE_WEBHOOK_RETRY_SCHEDULE_S` with the same
`webhook-id` and a fresh timestamp and signature. Every attempt is logged in SQL. An
endpoint that has failed every attempt for `JOBGATE_WEBHOOK_DISABLE_AFTER_S` (or answered
410 Gone) is disabled with the reason shown; a disabled endpoint gets nothing more until it
is enabled again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core import metrics
from core.representation import rfc3339
from core.store.jobs import rowcount
from core.store.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, as_utc
from core.webhooks.outbox import DELIVERED, FAILED, PENDING, active_secrets, tenant_secret
from core.webhooks.sender import DeliveryOutcome, WebhookSender
from core.webhooks.signing import webhook_headers

log = structlog.get_logger("jobgate.webhooks")

SNIPPET_CHARS = 1000


@dataclass(frozen=True)
class AttemptResult:
    status: str  # delivered | pending (retry scheduled) | failed | skipped
    retry_in_s: float | None = None


@dataclass(frozen=True)
class _Claimed:
    delivery: WebhookDelivery
    attempt: int
    secrets: list[str]


class WebhookDeliverer:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        sender: WebhookSender,
        schedule_s: list[float],
        disable_after_s: float,
        attempt_timeout_s: float,
        utcnow: Callable[[], datetime],
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.schedule_s = schedule_s or [0.0]
        self.disable_after_s = disable_after_s
        self.attempt_timeout_s = attempt_timeout_s
        self.utcnow = utcnow

    def deliver(self, delivery_id: str, *, manual: bool = False) -> AttemptResult:
        claimed = self._claim(delivery_id, manual=manual)
        if claimed is None:
            return AttemptResult("skipped")
        delivery = claimed.delivery
        body = delivery.payload.encode()
        now = self.utcnow()
        headers = webhook_headers(claimed.secrets, delivery.webhook_id, int(now.timestamp()), body)
        outcome = self.sender.send(delivery.url, body, headers)
        return self._record(claimed, outcome)

    def _claim(self, delivery_id: str, *, manual: bool) -> _Claimed | None:
        now = self.utcnow()
        with self.sessions() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is None or delivery.status != PENDING:
                return None
            due = as_utc(delivery.next_attempt_at)
            if not manual and due is not None and due > now + timedelta(seconds=1):
                return None  # an early duplicate message; the scheduled one will come
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id) if delivery.endpoint_id else None
            if endpoint is not None and (not endpoint.enabled or endpoint.deleted_at is not None):
                return None
            attempt = delivery.attempt_count + 1
            # Hold the delivery for the length of one attempt; a crash lets the sweeper retry it.
            hold_until = now + timedelta(seconds=self.attempt_timeout_s * 2 + 5)
            won = rowcount(
                session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == delivery_id,
                        WebhookDelivery.status == PENDING,
                        WebhookDelivery.attempt_count == delivery.attempt_count,
                    )
                    .values(attempt_count=attempt, next_attempt_at=hold_until)
                )
            )
            if not won:
                session.rollback()
                return None
            if endpoint is not None:
                secrets = active_secrets(
                    endpoint.secret, endpoint.previous_secret, endpoint.previous_expires_at, now
                )
            else:
                row = tenant_secret(session, delivery.tenant_id, now)
                secrets = active_secrets(row.secret, row.previous_secret, row.previous_expires_at, now)
            session.commit()
            return _Claimed(delivery, attempt, secrets)

    def _record(self, claimed: _Claimed, outcome: DeliveryOutcome) -> AttemptResult:
        now = self.utcnow()
        delivery = claimed.delivery
        retry_in_s: float | None = None
        if outcome.success:
            status = DELIVERED
        elif claimed.attempt < len(self.schedule_s) and not outcome.gone:
            status = PENDING
            retry_in_s = self.schedule_s[claimed.attempt]
            if outcome.retry_after_s is not None:
                retry_in_s = max(retry_in_s, outcome.retry_after_s)
        else:
            status = FAILED
        with self.sessions() as session:
            session.add(
                WebhookAttempt(
                    delivery_id=delivery.id,
                    attempt=claimed.attempt,
                    at=now,
                    status_code=outcome.status_code,
                    latency_ms=outcome.latency_ms,
                    error=outcome.error,
                    response_snippet=(outcome.response_snippet or "")[:SNIPPET_CHARS] or None,
                )
            )
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id, WebhookDelivery.attempt_count == claimed.attempt)
                .values(
                    status=status,
                    next_attempt_at=now + timedelta(seconds=retry_in_s) if retry_in_s is not None else None,
                )
            )
            if delivery.endpoint_id is not None:
                self._track_endpoint(session, delivery.endpoint_id, outcome, now)
            session.commit()
        metrics.WEBHOOK_DELIVERIES.labels(outcome=status if status != PENDING else "retry_scheduled").inc()
        metrics.WEBHOOK_LATENCY.observe(outcome.latency_ms / 1000)
        log.info(
            "webhook_attempt_recorded",
            delivery_id=delivery.id,
            attempt=claimed.attempt,
            status=status,
            status_code=outcome.status_code,
        )
        return AttemptResult(status, retry_in_s)

    def _track_endpoint(
        self, session: Session, endpoint_id: str, outcome: DeliveryOutcome, now: datetime
    ) -> None:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None:
            return
        if outcome.success:
            endpoint.failing_since = None
            return
        if endpoint.failing_since is None:
            endpoint.failing_since = now
        failing_s = (now - (as_utc(endpoint.failing_since) or now)).total_seconds()
        if outcome.gone:
            self._disable(endpoint, "The endpoint answered 410 Gone.")
        elif failing_s >= self.disable_after_s:
            since = rfc3339(endpoint.failing_since)
            self._disable(endpoint, f"Every delivery has failed since {since}; last error: {outcome.error}.")

    @staticmethod
    def _disable(endpoint: WebhookEndpoint, reason: str) -> None:
        endpoint.enabled = False
        endpoint.disabled_reason = reason
        log.warning("webhook_endpoint_disabled", endpoint_id=endpoint.id, reason=reason)


def overdue_deliveries(session: Session, now: datetime, *, grace_s: float, limit: int = 5_000) -> list[str]:
    """Pending deliveries whose attempt is due (for the sweeper: long delays, lost messages).

    A disabled or deleted endpoint's deliveries wait until it is enabled again: dispatched,
    they would only be skipped, and being the oldest they would fill every sweep's `limit`
    and starve the deliveries of working endpoints.
    """
    stmt = (
        select(WebhookDelivery.id)
        .outerjoin(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_at <= now - timedelta(seconds=grace_s),
            or_(
                WebhookDelivery.endpoint_id.is_(None),
                and_(WebhookEndpoint.enabled.is_(True), WebhookEndpoint.deleted_at.is_(None)),
            ),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    return list(session.execute(stmt).scalars())
