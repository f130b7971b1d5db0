"""Calling one target as a well-mannered member of the fleet.

Before each call: the target's circuit breaker (fleet-wide, `core/redis/breaker.py`) and a
rate-limit reservation in every bucket the call counts against (`core/ratelimit/limiter.py`):
the provider, and the tenant when it has limits. After: reconcile the reservation with the
real usage, report the outcome to the breaker, and feed the provider's own signals back
(`Retry-After`, `x-ratelimit-remaining-* = 0`) as a fleet-wide pause. A retryable failure is
tried again once (`retry_wait_s`: exponential backoff with jitter, honouring a short
Retry-After; a plain loop, as tenacity's machinery cost more CPU a call than the rest of this
module); a target that is busy or broken raises `TargetUnavailable`, so the caller can
fall back to the next target or put the job back on the queue without holding a thread.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

import structlog

from core import metrics, tracing
from core.config import GatewayConfig, ProviderConfig, Target
from core.domain.chat import ChatRequest, Completion
from core.domain.relay import Relay
from core.errors import RateLimited, StreamInterrupted, UpstreamError
from core.providers.base import Provider
from core.ratelimit import wait
from core.ratelimit.estimate import estimate_tokens
from core.ratelimit.gate import Gate
from core.ratelimit.limiter import Bucket, Place, RateLimiter, Reservation, model_bucket, provider_bucket
from core.redis.breaker import CircuitBreaker, Permit
from core.redis.scripts import FleetOp

log = structlog.get_logger("jobgate.upstream")

TRIES_PER_TARGET = 2
# Waits a thread may spend inline; longer ones become a fleet pause and a re-queue instead.
MAX_INLINE_RETRY_WAIT_S = 2.0
# Outcomes that say the target is unhealthy (a bad request or a 429 says nothing of its health).
# Failures the provider did not count against its limits (refused before it ran the call).
NOT_CHARGED = frozenset({"rate_limited", "connection_error", "bad_request", "auth"})
BREAKER_FAILURES = frozenset({"server_error", "overloaded", "timeout", "connection_error", "truncated"})
# Called (at most once a call, at the loop's next turn) when a call goes out, its request on its
# way: the API's sync path begins recording its job's row then (core/services/runtime.py,
# `PendingRecord`), so that work does not compete with the gate and the request for the GIL.
CALL_GOING_OUT: ContextVar[Callable[[], None] | None] = ContextVar("call_going_out", default=None)


def target_buckets(target: Target, provider: ProviderConfig) -> list[Bucket]:
    """The budgets a call to `target` books: its provider's, and its model's own if it has one."""
    buckets = [provider_bucket(target.provider, rpm=provider.rpm, tpm=provider.tpm)]
    limits = provider.models.get(target.model)
    if limits is not None:
        buckets.append(model_bucket(target.provider, target.model, rpm=limits.rpm, tpm=limits.tpm))
    return buckets


class TargetUnavailable(Exception):
    """The target cannot be called now (breaker open, budget booked, provider paused).
    `in_line`: `retry_after_s` is the call's own place in the limiter's waiting line."""

    def __init__(self, reason: str, retry_after_s: float, *, in_line: bool = False) -> None:
        super().__init__(f"{reason}; retry in {retry_after_s:.2f} s")
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.in_line = in_line


@dataclass(frozen=True)
class CallRecord:
    """One call (or refusal) on one target, for the job's attempt log."""

    target: Target
    outcome: str
    message: str | None
    latency_ms: int
    started_at: datetime
    route: str | None = None  # why this target was tried (core/services/routing.py)


def target_name(target: Target) -> str:
    return f"{target.provider}/{target.model}"


def retry_wait_s(failure: UpstreamError, tries: int) -> float:
    """The wait before the next try at a target, after `tries` tries: a short Retry-After as
    asked, else exponential backoff (0.2 s doubling) with up to 0.2 s of jitter; at most
    `MAX_INLINE_RETRY_WAIT_S`."""
    if failure.retry_after_s:
        return min(failure.retry_after_s, MAX_INLINE_RETRY_WAIT_S)
    return min(0.2 * 2 ** (tries - 1) + random.uniform(0, 0.2), MAX_INLINE_RETRY_WAIT_S)


def _asks_to_wait(exc: UpstreamError) -> bool:
    """A rate limit, or an overload that names a Retry-After: the provider pauses, nothing broke."""
    return bool(exc.retry_after_s) and (isinstance(exc, RateLimited) or exc.error_type == "overloaded")


class UpstreamCaller:
    def __init__(
        self,
        *,
        config: GatewayConfig,
        providers: dict[str, Provider],
        limiter: RateLimiter,
        breaker: CircuitBreaker,
        utcnow: Callable[[], datetime],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        pace: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`sleep` waits a retry's backoff, `pace` a reservation's wait for its slot (tests
        record them instead)."""
        self.config = config
        self.providers = providers
        self.limiter = limiter
        self.breaker = breaker
        self.gate = Gate(breaker, limiter)
        self.utcnow = utcnow
        self.sleep = sleep
        self.pace = pace
        self.monotonic = monotonic

    async def call(
        self,
        target: Target,
        request: ChatRequest,
        *,
        interactive: bool,
        tenant_bucket: Bucket | None,
        records: list[CallRecord],
        deferred: list[FleetOp],
        relay: Relay | None = None,
        place: Place | None = None,
    ) -> Completion:
        """The completion, or UpstreamError (after retries), or TargetUnavailable; `Unsupported`
        before anything is booked when the target cannot honour the request. With a `relay`,
        the call is streamed to it; once a chunk has gone out, a failure is final
        (`StreamInterrupted`): no retry, no other target.

        The fleet-state updates a success leaves (the breaker's success, the limiter's
        reconciliation) are appended to `deferred`, for the caller to run later in one pipeline.

        A retry refused because the first try's own failure opened the breaker still raises
        that failure: the target failed this job, which must cost it an attempt. Only a
        failure that asked us to wait (a 429, an overload with Retry-After) stays a wait.
        """
        refused = self.providers[target.provider].refuses(request)
        if refused is not None:
            records.append(CallRecord(target, refused.error_type, refused.message, 0, self.utcnow()))
            raise refused
        cfg = self.config.providers[target.provider]
        buckets = target_buckets(target, cfg)
        if tenant_bucket is not None:
            buckets.append(tenant_bucket)
        estimate = estimate_tokens(request)
        failure: UpstreamError | None = None
        for tries in range(1, TRIES_PER_TARGET + 1):
            try:
                return await self._call_once(
                    target,
                    request,
                    buckets,
                    estimate,
                    interactive,
                    records,
                    deferred,
                    relay=relay,
                    place=place,
                )
            except UpstreamError as exc:
                failure = exc
                if relay is not None and relay.started and exc.retryable:
                    raise StreamInterrupted(f"{exc.message} (after part of the answer was sent)") from exc
                if not exc.retryable or tries == TRIES_PER_TARGET:
                    raise
            except TargetUnavailable as busy:
                if failure is not None and not _asks_to_wait(failure):
                    raise failure from busy
                raise
            await self.sleep(retry_wait_s(failure, tries))
        raise AssertionError("unreachable: the last try returns or raises")

    async def _call_once(
        self,
        target: Target,
        request: ChatRequest,
        buckets: list[Bucket],
        estimate: int,
        interactive: bool,
        records: list[CallRecord],
        deferred: list[FleetOp],
        *,
        relay: Relay | None = None,
        place: Place | None = None,
    ) -> Completion:
        cfg = self.config.providers[target.provider]
        name = target_name(target)
        started_at = self.utcnow()
        permit, reservation = await self._pass_gate(
            target, buckets, estimate, interactive, records, started_at, place
        )
        going_out = CALL_GOING_OUT.get()
        if going_out is not None:
            # Run at the loop's next turn: once this task waits on the upstream, its request sent.
            asyncio.get_running_loop().call_soon(going_out)
        t0 = self.monotonic()
        try:
            call = self.providers[target.provider].complete(request, target.model, relay=relay)
            if tracing.enabled():
                call = tracing.traced_attempt(call, provider=target.provider, model=target.model)
            completion = await call
        except UpstreamError as exc:
            latency_ms = int((self.monotonic() - t0) * 1000)
            if exc.error_type in NOT_CHARGED:
                # Refused before the provider counted it; a 5xx or timeout keeps its booking,
                # since the provider may well have charged the call.
                await self.limiter.reconcile(reservation, 0)
            if exc.retry_after_s and _asks_to_wait(exc):
                await self.limiter.pause(cfg.pause_scope(target.provider, target.model), exc.retry_after_s)
            self._observe(target, exc.error_type, latency_ms)
            if exc.error_type in BREAKER_FAILURES:
                state = await self.breaker.record_failure(name, cfg.breaker, probe=permit.probe)
                if state == "open":
                    metrics.BREAKER_OPENED.labels(provider=target.provider).inc()
            else:
                await self.breaker.record_success(name, cfg.breaker, probe=permit.probe)
            records.append(CallRecord(target, exc.error_type, exc.message, latency_ms, started_at))
            log.info(
                "upstream_error",
                target=name,
                error_type=exc.error_type,
                status=exc.status_code,
                request_id=exc.request_id,
                upstream_code=exc.upstream_code,
                latency_ms=latency_ms,
            )
            raise
        latency_ms = int((self.monotonic() - t0) * 1000)
        self._observe(target, "succeeded", latency_ms)
        metrics.UPSTREAM_TOKENS.labels(target.provider, target.model, "input").inc(completion.input_tokens)
        metrics.UPSTREAM_TOKENS.labels(target.provider, target.model, "output").inc(completion.output_tokens)
        # What the provider charges: OpenAI (and the sim) count `max_tokens` when it is set,
        # whatever the answer used; reconciling to less would overdraw its per-second bucket.
        charged = completion.input_tokens + (request.max_output_tokens or completion.output_tokens)
        # Nothing waits on these two: they ride in the group's fleet-state pipeline (sent
        # while its SQL write runs), so a successful call costs no round trip after it.
        deferred.append(self.breaker.call("success", name, cfg.breaker, probe=permit.probe))
        reconcile = self.limiter.reconcile_call(reservation, charged)
        if reconcile is not None:
            deferred.append(reconcile)
        await self._apply_provider_limits(cfg.pause_scope(target.provider, target.model), completion)
        records.append(CallRecord(target, "succeeded", None, latency_ms, started_at))
        return completion

    async def _pass_gate(
        self,
        target: Target,
        buckets: list[Bucket],
        estimate: int,
        interactive: bool,
        records: list[CallRecord],
        started_at: datetime,
        place: Place | None = None,
    ) -> tuple[Permit, Reservation]:
        """Breaker, pause and reservation in one round trip, then the reserved wait; raises
        `TargetUnavailable` when the call may not go out now."""
        cfg = self.config.providers[target.provider]
        answer = await self.gate.open(
            target_name(target),
            cfg.breaker,
            buckets,
            estimate,
            probe_timeout_s=cfg.timeout_s + 5,
            max_wait_s=wait.max_wait_s(interactive),
            line=wait.joins_line(interactive),
            place=place,
        )
        permit, reservation = answer.permit, answer.reservation
        if reservation is None:
            records.append(CallRecord(target, "breaker_open", None, 0, started_at))
            raise TargetUnavailable("breaker open", permit.retry_after_s or cfg.breaker.cooldown_s)
        if not reservation.granted:
            # A probe refused budget was handed back by the gate itself.
            reason = "provider paused" if reservation.paused else "rate limit budget booked"
            records.append(CallRecord(target, "rate_limit_wait", reason, 0, started_at))
            in_line = wait.joins_line(interactive) and not reservation.paused
            raise TargetUnavailable(reason, reservation.retry_after_s or 1.0, in_line=in_line)
        if reservation.wait_s > 0:
            metrics.LIMITER_WAITS.labels(provider=target.provider).inc()
            metrics.LIMITER_WAIT_SECONDS.labels(provider=target.provider).observe(reservation.wait_s)
            slot_at = self.monotonic() + reservation.wait_s
            await self.pace(reservation.wait_s)
            # Other calls booked before this one may have been told to stop meanwhile (a 429,
            # `x-ratelimit-remaining-requests: 0`): a slot booked before a pause is no licence
            # to call through it.
            scopes = {target.provider, cfg.pause_scope(target.provider, target.model)}
            paused_s = await self.limiter.longest_pause_left_s(sorted(scopes))
            # Nor is a slot this process woke up to too late (a loop busy with a thousand jobs
            # starting): sent now, it would land together with the calls booked after it.
            missed = self.monotonic() - slot_at > wait.MISSED_SLOT_S
            if paused_s > 0 or missed:
                await self.limiter.reconcile(reservation, 0)
                if permit.probe:
                    await self.breaker.release_probe(target_name(target))
                reason = "provider paused" if paused_s > 0 else "slot missed"
                records.append(CallRecord(target, "rate_limit_wait", reason, 0, started_at))
                raise TargetUnavailable(reason, paused_s)
        return permit, reservation

    @staticmethod
    def _observe(target: Target, outcome: str, latency_ms: int) -> None:
        metrics.UPSTREAM_REQUESTS.labels(target.provider, target.model, outcome).inc()
        metrics.UPSTREAM_LATENCY.labels(target.provider, target.model).observe(latency_ms / 1000)

    async def _apply_provider_limits(self, scope: str, completion: Completion) -> None:
        """The provider says a budget is spent: pause its scope (the provider, or the model with
        limits of its own) fleet-wide until that budget resets."""
        limits = completion.rate_limits
        if limits is None:
            return
        for remaining, reset_s in (
            (limits.remaining_requests, limits.reset_requests_s),
            (limits.remaining_tokens, limits.reset_tokens_s),
        ):
            if remaining == 0 and reset_s:
                await self.limiter.pause(scope, reset_s)
