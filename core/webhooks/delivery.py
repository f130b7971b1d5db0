"""Delivering one webhook attempt, and scheduling the next one when it fails.

An attempt is claimed like a job (a conditional UPDATE on the attempt count), so a message
delivered twice sends once. Any 2xx is success; everything else, timeouts and connection
errors included, is retried on `JOBGATE_WEBHOOK_RETRY_SCHEDULE_S` with the same
`webhook-id` and a fresh timestamp and signature. Every attempt is logged in SQL. An
endpoint that has failed every attempt for `JOBGATE_WEBHOOK_DISABLE_AFTER_S` (or answered
410 Gone) is disabled with the reason shown; a disabled endpoint gets nothing more until it
is enabled again.

A tenant with `JOBGATE_WEBHOOK_MAX_IN_FLIGHT_PER_TENANT` attempts in flight in this process
gets no thread for another: the delivery stays pending with its attempt count unchanged, takes
the next turn in the tenant's waiting line (`core/webhooks/fairness.py`) as its due time, and
comes back then, so other tenants' deliveries go ahead of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core import metrics, tracing
from core.representation import rfc3339
from core.store.jobs import rowcount
from core.store.models import Job, WebhookAttempt, WebhookDelivery, WebhookEndpoint, as_utc
from core.webhooks.fairness import AttemptSlots
from core.webhooks.outbox import DELIVERED, FAILED, PENDING, active_secrets, tenant_secret
from core.webhooks.sender import DeliveryOutcome, WebhookSender
from core.webhooks.signing import webhook_headers

log = structlog.get_logger("jobgate.webhooks")

SNIPPET_CHARS = 1000
# The tenant is at its cap: no attempt made, the delivery comes back at its turn.
WAITING = "waiting"


@dataclass(frozen=True)
class AttemptResult:
    status: str  # delivered | pending (retry scheduled) | failed | skipped | waiting
    retry_in_s: float | None = None  # when it comes back (pending, waiting)


SKIPPED = AttemptResult("skipped")


@dataclass(frozen=True)
class _Claimed:
    delivery: WebhookDelivery
    attempt: int
    secrets: list[str]
    tenant_id: str
    slot: int | None  # the tenant's attempt slot, when the deliverer caps tenants
    traceparent: str | None = None  # its job's trace, when traces are on (core/tracing.py)


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
        attempt_slots: AttemptSlots | None = None,
    ) -> None:
        self.sessions = sessions
        self.sender = sender
        self.schedule_s = schedule_s or [0.0]
        self.disable_after_s = disable_after_s
        self.attempt_timeout_s = attempt_timeout_s
        self.utcnow = utcnow
        # None: no per-tenant cap (a deliverer driven one attempt at a time, as tests do).
        self.attempt_slots = attempt_slots

    def deliver(self, delivery_id: str, *, manual: bool = False) -> AttemptResult:
        claimed = self._claim(delivery_id, manual=manual)
        if isinstance(claimed, AttemptResult):
            return claimed
        delivery = claimed.delivery
        took_s: float | None = None
        # Every path out gives the slot back: one lost would shrink the tenant's cap for good.
        try:
            started_ns = time.time_ns() if claimed.traceparent is not None else 0
            body = delivery.payload.encode()
            now = self.utcnow()
            headers = webhook_headers(claimed.secrets, delivery.webhook_id, int(now.timestamp()), body)
            outcome = self.sender.send(delivery.url, body, headers, tenant_id=delivery.tenant_id)
            took_s = outcome.latency_ms / 1000
            result = self._record(claimed, outcome)
            if claimed.traceparent is not None:
                tracing.record_delivery(
                    claimed.traceparent,
                    delivery_id=delivery.id,
                    job_id=delivery.job_id,
                    event_type=delivery.event_type,
                    attempt=claimed.attempt,
                    outcome=result.status,
                    status_code=outcome.status_code,
                    started_ns=started_ns,
                )
            return result
        finally:
            self._give_back(claimed.tenant_id, claimed.slot, took_s)

    def _give_back(self, tenant_id: str, slot: int | None, took_s: float | None) -> None:
        if self.attempt_slots is not None and slot is not None:
            self.attempt_slots.give_back(tenant_id, slot, took_s=took_s)

    def _claim(self, delivery_id: str, *, manual: bool) -> _Claimed | AttemptResult:
        now = self.utcnow()
        with self.sessions() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is None or delivery.status != PENDING:
                return SKIPPED
            due = as_utc(delivery.next_attempt_at)
            if not manual and due is not None and due > now + timedelta(seconds=1):
                return SKIPPED  # an early duplicate message; the scheduled one will come
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id) if delivery.endpoint_id else None
            if endpoint is not None and (not endpoint.enabled or endpoint.deleted_at is not None):
                return SKIPPED
            # Read now: after a failed statement the session cannot load an expired attribute.
            tenant_id = delivery.tenant_id
            slot: int | None = None
            if self.attempt_slots is not None:
                slot = self.attempt_slots.take(tenant_id)
                if slot is None:
                    return self._wait_turn(session, delivery, self.attempt_slots, now)
            try:
                claimed = self._claim_attempt(session, delivery, endpoint, slot, now)
            except BaseException:
                self._give_back(tenant_id, slot, None)
                raise
            if claimed is None:
                self._give_back(tenant_id, slot, None)
                return SKIPPED
            return claimed

    def _wait_turn(
        self, session: Session, delivery: WebhookDelivery, slots: AttemptSlots, now: datetime
    ) -> AttemptResult:
        """The tenant is at its cap: the delivery stays pending, no attempt counted, due at its
        turn in the tenant's line (which also keeps the sweeper from sending a copy sooner)."""
        wait_s = slots.take_turn(delivery.tenant_id)
        moved = rowcount(
            session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery.id,
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.attempt_count == delivery.attempt_count,
                )
                .values(next_attempt_at=now + timedelta(seconds=wait_s))
            )
        )
        session.commit()
        if not moved:
            return SKIPPED  # claimed meanwhile by a copy of its message
        log.debug("webhook_delivery_waits_for_tenant_slot", delivery_id=delivery.id, wait_s=round(wait_s, 3))
        return AttemptResult(WAITING, wait_s)

    def _claim_attempt(
        self,
        session: Session,
        delivery: WebhookDelivery,
        endpoint: WebhookEndpoint | None,
        slot: int | None,
        now: datetime,
    ) -> _Claimed | None:
        attempt = delivery.attempt_count + 1
        # Hold the delivery for the length of one attempt; a crash lets the sweeper retry it.
        hold_until = now + timedelta(seconds=self.attempt_timeout_s * 2 + 5)
        won = rowcount(
            session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery.id,
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
        traceparent = None
        if tracing.enabled() and delivery.job_id is not None:
            traceparent = session.scalar(select(Job.traceparent).where(Job.id == delivery.job_id))
        session.commit()
        return _Claimed(delivery, attempt, secrets, delivery.tenant_id, slot, traceparent)

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
