"""Running one job: claim it, answer from cache or a concurrent twin, else call its targets.

This is the job pipeline of DESIGN.md ("the life of a job"), free of Dramatiq: the actor
only passes a job id in. Order of business, so that no upstream call is wasted:
1. claim (conditional UPDATE; a duplicate message finds nothing to claim),
2. response cache (per tenant, or shared when the tenant opts in),
3. single-flight: if an identical request is in flight anywhere in the fleet, wait briefly
   for its answer instead of calling,
4. the model's targets in order (`UpstreamCaller`: breaker, limiter, retries), falling back
   on retryable failure, breaker open or budget booked,
5. one conditional final write; or back to the queue with a delay when every target was
   only busy (no attempt is spent on waiting for budget).
SQL connections are never held across an upstream call.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from core import metrics
from core.config import GatewayConfig, Target
from core.domain.chat import ChatRequest, Completion
from core.errors import UpstreamError
from core.fingerprint import SHARED_SCOPE, request_fingerprint
from core.pricing import cost_usd
from core.redis.cache import ResponseCache
from core.redis.rate_limit import Bucket, tenant_bucket
from core.redis.single_flight import Flight, SingleFlight
from core.services.upstream import CallRecord, TargetUnavailable, UpstreamCaller
from core.services.webhook_events import commit_final
from core.store import jobs as store
from core.store.clock import SqlClock
from core.store.models import JobAttempt, Tenant, as_utc
from core.store.retry import retrying_on_disconnect

log = structlog.get_logger("jobgate.execute")

FOLLOWER_WAIT_S = 30.0
MIN_REDELAY_S = 0.1
MAX_FLIGHT_ROUNDS = 3


@dataclass(frozen=True)
class ExecutionPolicy:
    lease_s: float
    # Base delay before a job whose every target failed runs again (doubles per attempt).
    retry_delay_s: float = 2.0


@dataclass
class ActiveClaims:
    """The claims this process holds right now; the lease keeper renews them all at once."""

    _claims: dict[str, store.Claim] = field(default_factory=dict)

    def add(self, claim: store.Claim) -> None:
        self._claims[claim.job.id] = claim

    def remove(self, claim: store.Claim) -> None:
        self._claims.pop(claim.job.id, None)

    def snapshot(self) -> list[store.Claim]:
        return list(self._claims.values())


@dataclass(frozen=True)
class Outcome:
    """What happened to a job in this run (for the actor and the tests)."""

    status: str  # "succeeded", "failed", "requeued", "skipped"
    delay_s: float | None = None


@dataclass
class _Run:
    """The state of one claimed job while it runs."""

    claim: store.Claim
    request: ChatRequest
    records: list[CallRecord] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        return self.claim.job.id


class JobExecutor:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        clock: SqlClock,
        config: GatewayConfig,
        caller: UpstreamCaller,
        cache: ResponseCache,
        single_flight: SingleFlight,
        policy: ExecutionPolicy,
        on_final: Callable[[str, list[str]], None],
        active: ActiveClaims | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.config = config
        self.caller = caller
        self.cache = cache
        self.single_flight = single_flight
        self.policy = policy
        self.on_final = on_final
        self.active = active or ActiveClaims()
        self.monotonic = monotonic
        self.jitter = jitter
        self.sleep = sleep  # the backoff of a final write retried after a lost connection
        self._tenant_names: dict[str, str] = {}

    # --- entry point ---------------------------------------------------------------------

    def run(self, job_id: str) -> Outcome:
        with self.sessions() as session:
            claim = store.claim_job(session, self.clock, job_id, lease_s=self.policy.lease_s)
            if claim is None:
                return self._not_claimed(session, job_id)
            tenant = self._tenant_name(session, claim.job.tenant_id)
        self.active.add(claim)
        try:
            with structlog.contextvars.bound_contextvars(request_id=claim.job.request_id):
                return self._execute(_Run(claim, ChatRequest.from_body(claim.job.request)), tenant)
        finally:
            self.active.remove(claim)

    def _not_claimed(self, session: Session, job_id: str) -> Outcome:
        """Duplicate delivery, a cancelled job, or a message that came before the job was due.

        An early message is put back until the job is due, and never dropped: the claim found
        the job not due by the SQL clock, so even when this worker's own clock already says it
        is (a clock ahead of the database's, or a message that came at the due moment itself)
        it comes back after `MIN_REDELAY_S`. Dropping it would leave the job to the sweeper."""
        state = store.job_status(session, job_id)
        if state is not None and state[0] == store.QUEUED and state[1] is not None:
            due = as_utc(state[1])
            assert due is not None
            wait_s = (due - self.clock.utcnow()).total_seconds()
            return Outcome("requeued", delay_s=max(wait_s, MIN_REDELAY_S))
        return Outcome("skipped")

    def _tenant_name(self, session: Session, tenant_id: str) -> str:
        name = self._tenant_names.get(tenant_id)
        if name is None:
            name = session.execute(select(Tenant.name).where(Tenant.id == tenant_id)).scalar_one()
            self._tenant_names[tenant_id] = name
        return name

    # --- the pipeline --------------------------------------------------------------------

    def _execute(self, run: _Run, tenant: str) -> Outcome:
        job = run.claim.job
        deadline = as_utc(job.deadline)
        if deadline is not None and deadline <= self.clock.utcnow():
            error = {
                "type": "deadline_exceeded",
                "message": "The job's deadline passed before it could start.",
            }
            return self._fail(run, error)
        limits = self.config.tenant_limits(tenant)
        if not job.use_cache:
            return self._call_targets(run, tenant)
        scope = SHARED_SCOPE if limits.shared_cache else job.tenant_id
        fingerprint = request_fingerprint(job.model, run.request, scope=scope)
        hit = self.cache.get(fingerprint)
        metrics.CACHE_LOOKUPS.labels(result="hit" if hit is not None else "miss").inc()
        if hit is not None:
            return self._succeed(run, hit, cached=True)
        for _ in range(MAX_FLIGHT_ROUNDS):
            flight = self.single_flight.begin(fingerprint)
            if flight.is_done:
                assert flight.result is not None
                metrics.SINGLE_FLIGHT_COLLAPSES.inc()
                return self._succeed(run, flight.result, cached=True)
            if flight.is_leader:
                outcome = self._call_targets(
                    run, tenant, on_success=functools.partial(self._share, flight, fingerprint)
                )
                if outcome.status != "succeeded":
                    self.single_flight.abandon(flight, error_retryable=outcome.status == "requeued")
                return outcome
            answer = self.single_flight.wait(flight, timeout_s=FOLLOWER_WAIT_S)
            if answer is not None:
                metrics.SINGLE_FLIGHT_COLLAPSES.inc()
                return self._succeed(run, answer, cached=True)
        # The twin keeps failing or vanishing: come back later rather than hold the thread.
        return self._requeue(run, self.policy.retry_delay_s, refund=True)

    def _share(self, flight: Flight, fingerprint: str, completion: Completion) -> None:
        """Leader's success: cache the answer, then hand it to the waiting twins."""
        self.cache.put(fingerprint, completion, ttl_s=self.config.cache.ttl_s)
        self.single_flight.complete(flight, completion)

    def _tenant_bucket(self, tenant: str) -> Bucket | None:
        limits = self.config.tenant_limits(tenant)
        if limits.rpm is None and limits.tpm is None:
            return None
        return tenant_bucket(tenant, rpm=limits.rpm, tpm=limits.tpm)

    def _call_targets(
        self, run: _Run, tenant: str, on_success: Callable[[Completion], None] | None = None
    ) -> Outcome:
        job = run.claim.job
        targets = self.config.targets_for(job.model) or []
        if not targets:
            return self._fail(run, {"type": "bad_request", "message": f"No targets for model {job.model!r}."})
        busy_for: list[float] = []
        last_error: UpstreamError | None = None
        for target in targets:
            try:
                completion = self.caller.call(
                    target,
                    run.request,
                    interactive=job.priority == "interactive",
                    tenant_bucket=self._tenant_bucket(tenant),
                    records=run.records,
                )
            except TargetUnavailable as busy:
                busy_for.append(busy.retry_after_s)
                continue
            except UpstreamError as exc:
                if not exc.retryable:
                    return self._fail(run, exc.to_error())
                last_error = exc
                continue
            if on_success is not None:
                on_success(completion)
            return self._succeed(run, completion, cached=False)
        return self._after_all_targets(run, busy_for, last_error)

    def _after_all_targets(
        self, run: _Run, busy_for: list[float], last_error: UpstreamError | None
    ) -> Outcome:
        job = run.claim.job
        if busy_for and last_error is None:
            # Jittered (later, never earlier, and by at most half a second: a batch's delays
            # are already spread by the limiter's waiting line), so jobs refused together do
            # not all come back at the same moment.
            wait_s = min(busy_for)
            delay_s = wait_s + min(0.25 * wait_s, 0.5) * self.jitter()
            deadline = as_utc(job.deadline)
            if deadline is not None and (deadline - self.clock.utcnow()).total_seconds() < delay_s:
                error = {
                    "type": "deadline_exceeded",
                    "message": "Every target was rate-limited or unavailable until after the job's deadline.",
                }
                return self._fail(run, error)
            return self._requeue(run, delay_s, refund=True)
        assert last_error is not None
        if run.claim.attempt < job.max_attempts:
            delay_s = self.policy.retry_delay_s * 2 ** (run.claim.attempt - 1)
            if busy_for:
                delay_s = min(delay_s, min(busy_for))
            return self._requeue(run, delay_s, refund=False)
        return self._fail(run, last_error.to_error())

    # --- final writes --------------------------------------------------------------------

    def _attempt_rows(self, run: _Run) -> list[JobAttempt]:
        return [
            JobAttempt(
                job_id=run.job_id,
                attempt=run.claim.attempt,
                provider=r.target.provider,
                model=r.target.model,
                outcome=r.outcome,
                error_message=r.message[:1000] if r.message else None,
                latency_ms=r.latency_ms,
                started_at=r.started_at,
            )
            for r in run.records
        ]

    def _succeed(self, run: _Run, completion: Completion, *, cached: bool) -> Outcome:
        cost = Decimal(0)
        if not cached:
            cost = cost_usd(self.config, completion.model, completion.input_tokens, completion.output_tokens)
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
        if cached:
            run.records.append(
                CallRecord(
                    Target(provider=completion.provider, model=completion.model),
                    "cached",
                    None,
                    0,
                    self.clock.utcnow(),
                )
            )
        return self._final(run, values, store.SUCCEEDED)

    def _fail(self, run: _Run, error: dict[str, str]) -> Outcome:
        return self._final(run, {"status": store.FAILED, "error": error}, store.FAILED)

    def _final(self, run: _Run, values: dict[str, Any], status: str) -> Outcome:
        """One transaction: the final state, the attempt log and the webhook outbox rows."""

        def write(session: Session) -> tuple[bool, list[str]]:
            won = store.finish_job(session, self.clock, run.claim, **values)
            store.record_attempts(session, self._attempt_rows(run))
            return won, commit_final(session, [run.job_id] if won else [], self.clock.utcnow())

        won, deliveries = self._write_claimed(run, status, run.claim.attempt, write)
        if not won:
            log.warning("final_write_lost", job_id=run.job_id, attempt=run.claim.attempt)
            return Outcome("skipped")
        self._observe_final(run, status)
        self.on_final(run.job_id, deliveries)
        return Outcome(status)

    def _write_claimed(
        self,
        run: _Run,
        status: str,
        attempts: int,
        write: Callable[[Session], tuple[bool, list[str]]],
    ) -> tuple[bool, list[str]]:
        """`write` (conditional on the claim, committing) in a session of its own, retried if
        the database connection is lost: the upstream call is paid for. A retry first asks
        whether the last try's COMMIT landed and only its answer was lost (the job already
        holds `status` at `attempts`, with this claim's attempt rows); writing again would
        fail the claim (reported as lost) and log the attempts twice. Then its webhook
        deliveries and batch check were committed with it, or are left to the sweeper."""
        tries = 0

        def once() -> tuple[bool, list[str]]:
            nonlocal tries
            tries += 1
            with self.sessions() as session:
                if tries > 1 and store.holds(session, run.claim, status=status, attempts=attempts):
                    log.info("sql_write_had_landed", job_id=run.job_id, status=status)
                    return True, []
                return write(session)

        return retrying_on_disconnect(self.policy.lease_s, sleep=self.sleep)(once)

    def _observe_final(self, run: _Run, status: str) -> None:
        job = run.claim.job
        metrics.record_jobs_finished(status)
        created = as_utc(job.created_at)
        if created is not None:
            elapsed_s = (self.clock.utcnow() - created).total_seconds()
            metrics.JOB_DURATION.labels(priority=job.priority).observe(max(elapsed_s, 0.0))
        log.info(
            "job_finished",
            job_id=job.id,
            status=status,
            attempt=run.claim.attempt,
            calls=len(run.records),
        )

    def _requeue(self, run: _Run, delay_s: float, *, refund: bool) -> Outcome:
        def write(session: Session) -> tuple[bool, list[str]]:
            won = store.requeue_job(session, self.clock, run.claim, delay_s=delay_s, refund_attempt=refund)
            store.record_attempts(session, self._attempt_rows(run))
            session.commit()
            return won, []

        attempts_after = run.claim.attempt - 1 if refund else run.claim.attempt
        won, _ = self._write_claimed(run, store.QUEUED, attempts_after, write)
        if won and refund:
            metrics.LIMITER_DELAYS.labels(reason="busy").inc()
        return Outcome("requeued", delay_s=delay_s) if won else Outcome("skipped")
