"""Running one claimed job: answer from cache or a concurrent twin, else call its targets.

This is the job pipeline of DESIGN.md ("the life of a job") as small async stages on the
worker's event loop, free of SQL and of Dramatiq: `JobRuntime` (core/services/runtime.py)
claims jobs in batches, hands each claim here, and writes the verdict in a group. Order of
business, so that no upstream call is wasted:
1. deadline: a job whose deadline passed is not started;
2. response cache (per tenant, or shared when the tenant opts in);
3. single-flight: if an identical request is in flight anywhere in the fleet, wait for its
   answer instead of calling;
4. the model's targets in order (`UpstreamCaller`: breaker, limiter, retries), falling back
   on retryable failure, breaker open or budget booked;
5. the verdict: final (succeeded / failed), or back to the queue with a delay decided by the
   pure `retry_policy.after_all_targets` (no attempt is spent on waiting for budget).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from core import metrics, queue
from core.config import GatewayConfig, Target
from core.domain.chat import ChatRequest, Completion
from core.domain.relay import Relay
from core.errors import BUDGET_EXCEEDED, Unsupported, UpstreamError
from core.fingerprint import SHARED_SCOPE, request_fingerprint
from core.pricing import cost_usd
from core.ratelimit.budget import Budget, SpendLedger
from core.ratelimit.estimate import estimate_prompt_tokens, output_bound
from core.ratelimit.limiter import Bucket, Place, tenant_bucket
from core.redis.cache import ResponseCache
from core.redis.latency import LatencyBoard
from core.redis.scripts import FleetOp, run_calls
from core.redis.single_flight import Flight, SingleFlight
from core.services.retry_policy import GiveUp, RetryPolicy, after_all_targets
from core.services.routing import Router
from core.services.upstream import CallRecord, TargetUnavailable, UpstreamCaller, target_name
from core.store import jobs as store
from core.tenancy import KeyBudget, TenantPolicy

log = structlog.get_logger("jobgate.execute")

# Outcomes of attempts that never reached the provider: no latency to learn from.
NOT_CALLED = frozenset({"breaker_open", "rate_limit_wait", "cached", Unsupported.error_type})
MAX_FLIGHT_ROUNDS = 3
FOLLOWER_WAIT_S = 30.0

DEADLINE_PASSED = {"type": "deadline_exceeded", "message": "The job's deadline passed before it could start."}
DEADLINE_BUSY = {
    "type": "deadline_exceeded",
    "message": "Every target was rate-limited or unavailable until after the job's deadline.",
}


class OutcomeStatus(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REQUEUED = "requeued"
    SKIPPED = "skipped"  # a duplicate message, a cancelled job, or a write the claim lost


@dataclass(frozen=True)
class Outcome:
    """What happened to a job in this run (for the actor's caller and the tests)."""

    status: OutcomeStatus
    delay_s: float | None = None


@dataclass
class Verdict:
    """What the pipeline decided for one claimed job, for the group writer to record.

    Final: `values` are the job's final columns. Requeue: `delay_s` (counted from
    `decided_at`, this process's monotonic clock) and `refund`."""

    status: OutcomeStatus
    records: list[CallRecord]
    values: dict[str, Any] = field(default_factory=dict)
    delay_s: float = 0.0
    refund: bool = False
    decided_at: float = field(default_factory=time.monotonic)
    # Fleet-state updates nothing waits long on (a success's breaker report, reconciliation,
    # cache entry and single-flight answer):
    # the group writer runs them after its commit, in the group's one Redis pipeline.
    fleet_updates: list[FleetOp] = field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.status in (OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED)

    def delay_left_s(self) -> float:
        """What is left of the requeue delay now: the time a verdict waited for its group
        write is not added to it (a job refused a place in the limiter's line comes back at
        its place, not that much after it)."""
        return max(self.delay_s - (time.monotonic() - self.decided_at), 0.0)

    def due_ms(self) -> int:
        """When the requeued job is due, in Unix ms (the broker's clock for a delayed message)."""
        return queue.due_ms(int(self.delay_left_s() * 1000))


def _none_can_honour(model: str, refusals: list[Unsupported]) -> dict[str, str]:
    """The job's error when no target of `model` can honour its request: the parameters named."""
    params = list(dict.fromkeys(refusal.param for refusal in refusals))
    reasons = "; ".join(refusal.message for refusal in refusals)
    return {
        "type": Unsupported.error_type,
        "message": f"No target of {model!r} can honour {', '.join(params)}: {reasons}.",
        "param": params[0],
    }


def over_budget(budget: Budget) -> dict[str, str]:
    resets = budget.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": BUDGET_EXCEEDED,
        "message": f"The job would pass {budget.describe()}; it resets at {resets}.",
    }


def _label(records: list[CallRecord], since: int, route: str) -> None:
    """Say why the target was tried on the records its call just added."""
    for i in range(since, len(records)):
        records[i] = dataclasses.replace(records[i], route=route)


def failed(records: list[CallRecord], error: dict[str, str]) -> Verdict:
    return Verdict(OutcomeStatus.FAILED, records, {"status": store.FAILED, "error": error})


class JobRunner:
    def __init__(
        self,
        *,
        config: GatewayConfig,
        caller: UpstreamCaller,
        cache: ResponseCache,
        single_flight: SingleFlight,
        ledger: SpendLedger,
        router: Router,
        latencies: LatencyBoard,
        utcnow: Callable[[], datetime],
        policy: RetryPolicy | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.caller = caller
        self.cache = cache
        self.single_flight = single_flight
        self.ledger = ledger
        self.router = router
        self.latencies = latencies
        self.utcnow = utcnow
        self.policy = policy or RetryPolicy()
        self.jitter = jitter

    async def run(
        self,
        claim: store.Claim,
        tenant: TenantPolicy,
        key: KeyBudget | None = None,
        *,
        relay: Relay | None = None,
    ) -> Verdict:
        """The job's verdict; with a `relay` its call is streamed there (a cache hit or a
        twin's answer is not: the relay's owner streams the verdict's result itself). Every
        call's latency joins its target's fleet-wide average with the group's write."""
        verdict = await self._verdict(claim, tenant, key, relay)
        verdict.fleet_updates += [
            self.latencies.record(target_name(r.target), r.latency_ms)
            for r in verdict.records
            if r.outcome not in NOT_CALLED
        ]
        return verdict

    async def _verdict(
        self, claim: store.Claim, tenant: TenantPolicy, key: KeyBudget | None, relay: Relay | None
    ) -> Verdict:
        records: list[CallRecord] = []
        if claim.deadline is not None and claim.deadline <= self.utcnow():
            return failed(records, DEADLINE_PASSED)
        request = ChatRequest.from_body(claim.request)
        payer = _Payer(tenant, self.ledger.budgets(tenant, key, self.utcnow()))
        if not claim.use_cache:
            return await self._call_targets(claim, payer, request, records, relay=relay)
        scope = SHARED_SCOPE if tenant.shared_cache else claim.tenant_id
        fingerprint = request_fingerprint(claim.model, request, scope=scope)
        return await self._single_flight(claim, payer, request, records, fingerprint, relay)

    async def _single_flight(
        self,
        claim: store.Claim,
        payer: _Payer,
        request: ChatRequest,
        records: list[CallRecord],
        fingerprint: str,
        relay: Relay | None = None,
    ) -> Verdict:
        """The cache, then single-flight: the cache read rides in the round trip of the first
        flight lookup; what a hit or a leader's success leaves to write is deferred to the group's
        fleet-state pipeline, sent while its SQL write runs (a twin waiting on this leader hears
        it a few ms later)."""
        updates: list[FleetOp] = []
        for round_ in range(MAX_FLIGHT_ROUNDS):
            lookup: list[FleetOp] = [self.single_flight.begin_call(fingerprint)]
            if round_ == 0:
                lookup.insert(0, self.cache.get_command(fingerprint))
            replies = await run_calls(self.single_flight.client, lookup)
            flight = SingleFlight.flight_from(fingerprint, replies[-1])
            if round_ == 0:
                hit, cleanup = self.cache.decode(fingerprint, replies[0])
                metrics.CACHE_LOOKUPS.labels(result="hit" if hit is not None else "miss").inc()
                updates += [cleanup] if cleanup is not None else []
                if hit is not None:
                    if flight.is_leader:  # taken alongside the read: handed back, unused
                        updates.append(self.single_flight.abandon_call(flight, error_retryable=True))
                    return self._succeeded(records, hit, cached=True, updates=updates)
            if flight.is_done:
                assert flight.result is not None
                metrics.SINGLE_FLIGHT_COLLAPSES.inc()
                return self._succeeded(records, flight.result, cached=True, updates=updates)
            if flight.is_leader:
                share = functools.partial(self._share, flight, fingerprint)
                verdict = await self._call_targets(
                    claim, payer, request, records, on_success=share, relay=relay
                )
                if verdict.status is not OutcomeStatus.SUCCEEDED:
                    retryable = verdict.status is OutcomeStatus.REQUEUED
                    await self.single_flight.abandon(flight, error_retryable=retryable)
                verdict.fleet_updates += updates
                return verdict
            answer = await self.single_flight.wait(flight, timeout_s=FOLLOWER_WAIT_S)
            if answer is not None:
                metrics.SINGLE_FLIGHT_COLLAPSES.inc()
                return self._succeeded(records, answer, cached=True, updates=updates)
        # The twin keeps failing or vanishing: come back later rather than wait on.
        verdict = Verdict(OutcomeStatus.REQUEUED, records, delay_s=self.policy.retry_delay_s, refund=True)
        verdict.fleet_updates += updates
        return verdict

    def _share(self, flight: Flight, fingerprint: str, completion: Completion) -> list[FleetOp]:
        """Leader's success: cache the answer, then hand it to the waiting twins."""
        return [
            self.cache.put_command(fingerprint, completion, ttl_s=self.config.cache.ttl_s),
            self.single_flight.complete_call(flight, completion),
        ]

    async def _call_targets(
        self,
        claim: store.Claim,
        payer: _Payer,
        request: ChatRequest,
        records: list[CallRecord],
        on_success: Callable[[Completion], list[FleetOp]] | None = None,
        relay: Relay | None = None,
    ) -> Verdict:
        choices = await self.router.route(claim.model, request)
        if not choices:
            return failed(
                records, {"type": "bad_request", "message": f"No targets for model {claim.model!r}."}
            )
        busy: list[TargetUnavailable] = []
        unsupported: list[Unsupported] = []
        last_error: UpstreamError | None = None
        fleet_updates: list[FleetOp] = []
        bucket = payer.bucket()
        for choice in choices:
            target = choice.target
            most_usd = self._most_cost_usd(target, request)
            refused = await self.ledger.reserve(payer.budgets, most_usd)
            if refused is not None:
                return failed(records, over_budget(refused))
            tried_from = len(records)
            try:
                completion = await self.caller.call(
                    target,
                    request,
                    interactive=claim.priority == "interactive",
                    tenant_bucket=bucket,
                    place=Place(payer.tenant.tenant_id, payer.tenant.share),
                    records=records,
                    deferred=fleet_updates,
                    relay=relay,
                )
            except (TargetUnavailable, UpstreamError) as exc:
                _label(records, tried_from, choice.reason)
                await payer.refund(self.ledger, most_usd)  # a call that did not answer is not billed
                if isinstance(exc, TargetUnavailable):
                    busy.append(exc)
                elif isinstance(exc, Unsupported):
                    unsupported.append(exc)  # the next target may honour the request
                elif not exc.retryable:
                    return failed(records, exc.to_error())
                else:
                    last_error = exc
                continue
            _label(records, tried_from, choice.reason)
            fleet_updates += payer.settle(self.ledger, most_usd, self._cost(completion))
            if on_success is not None:
                fleet_updates += on_success(completion)
            return self._succeeded(records, completion, cached=False, updates=fleet_updates)
        if unsupported and not busy and last_error is None:
            return failed(records, _none_can_honour(claim.model, unsupported))
        deadline_left_s = None
        if claim.deadline is not None:
            deadline_left_s = (claim.deadline - self.utcnow()).total_seconds()
        decision = after_all_targets(
            self.policy,
            busy_for_s=[b.retry_after_s for b in busy],
            failed=last_error is not None,
            attempt=claim.attempt,
            max_attempts=claim.max_attempts,
            deadline_left_s=deadline_left_s,
            jitter=self.jitter(),
            in_line=bool(busy) and min(busy, key=lambda b: b.retry_after_s).in_line,
        )
        if isinstance(decision, GiveUp):
            if decision.deadline or last_error is None:
                return failed(records, DEADLINE_BUSY)
            return failed(records, last_error.to_error())
        return Verdict(OutcomeStatus.REQUEUED, records, delay_s=decision.delay_s, refund=decision.refund)

    def _succeeded(
        self, records: list[CallRecord], completion: Completion, *, cached: bool, updates: list[FleetOp]
    ) -> Verdict:
        cost = Decimal(0)
        if cached:
            target = Target(provider=completion.provider, model=completion.model)
            records.append(CallRecord(target, "cached", None, 0, self.utcnow()))
        else:
            cost = self._cost(completion)
            metrics.COST_USD.labels(model=completion.model).inc(float(cost))
        values: dict[str, Any] = {
            "status": store.SUCCEEDED,
            "result": completion.body,
            "error": None,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "cost_usd": cost,
            "served_provider": completion.provider,
            "served_model": completion.model,
            "cached": cached,
        }
        return Verdict(OutcomeStatus.SUCCEEDED, records, values, fleet_updates=updates)

    def _cost(self, completion: Completion) -> Decimal:
        return cost_usd(
            self.config,
            completion.provider,
            completion.model,
            completion.input_tokens,
            completion.output_tokens,
            cached_input_tokens=completion.cached_input_tokens,
            cache_write_tokens=completion.cache_write_tokens,
        )

    def _most_cost_usd(self, target: Target, request: ChatRequest) -> Decimal:
        """The most this call can cost: its prompt estimate and its output bound, priced."""
        return cost_usd(
            self.config,
            target.provider,
            target.model,
            estimate_prompt_tokens(request),
            output_bound(request, target.max_output_tokens),
        )


@dataclass(frozen=True)
class _Payer:
    """Who pays for a job's calls: the tenant's rate bucket and the spend budgets that apply."""

    tenant: TenantPolicy
    budgets: list[Budget]

    def bucket(self) -> Bucket | None:
        if self.tenant.rpm is None and self.tenant.tpm is None:
            return None
        return tenant_bucket(self.tenant.name, rpm=self.tenant.rpm, tpm=self.tenant.tpm)

    def settle(self, ledger: SpendLedger, reserved_usd: Decimal, cost_usd: Decimal) -> list[FleetOp]:
        op = ledger.settle(self.budgets, reserved_usd, cost_usd)
        return [op] if op is not None else []

    async def refund(self, ledger: SpendLedger, reserved_usd: Decimal) -> None:
        await run_calls(ledger.client, self.settle(ledger, reserved_usd, Decimal(0)))
