"""Running one job: claim it, call its targets in order, write the outcome once.

This is the job pipeline of DESIGN.md ("the life of a job"), free of Dramatiq: the actor
only passes a job id in. SQL connections are never held across an upstream call: the claim
commits, the call runs, the result is written in a new short transaction conditional on
the claim (a late writer whose lease was reaped cannot overwrite the retry's result).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from core.config import GatewayConfig, Target
from core.domain.chat import ChatRequest, Completion
from core.errors import UpstreamError
from core.pricing import cost_usd
from core.providers.base import Provider
from core.store import jobs as store
from core.store.clock import SqlClock
from core.store.models import JobAttempt, as_utc

log = structlog.get_logger("jobgate.execute")


@dataclass(frozen=True)
class ExecutionPolicy:
    lease_s: float
    # Delay before a job whose every target failed with a retryable error runs again.
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
    """What happened to a job in this run (for the actor's logs and the tests)."""

    status: str  # "succeeded", "failed", "requeued", "skipped"
    delay_s: float | None = None


class JobExecutor:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        clock: SqlClock,
        config: GatewayConfig,
        providers: dict[str, Provider],
        policy: ExecutionPolicy,
        on_final: Callable[[str], None],
        active: ActiveClaims | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.config = config
        self.providers = providers
        self.policy = policy
        self.on_final = on_final
        self.active = active or ActiveClaims()
        self.monotonic = monotonic

    def run(self, job_id: str) -> Outcome:
        with self.sessions() as session:
            claim = store.claim_job(session, self.clock, job_id, lease_s=self.policy.lease_s)
            if claim is None:
                return self._not_claimed(session, job_id)
        self.active.add(claim)
        try:
            return self._execute(claim)
        finally:
            self.active.remove(claim)

    def _not_claimed(self, session: Session, job_id: str) -> Outcome:
        """Duplicate delivery, a cancelled job, or a message that came before the job was due."""
        state = store.job_status(session, job_id)
        if state is not None and state[0] == store.QUEUED and state[1] is not None:
            wait_s = (as_utc(state[1]) - self.clock.utcnow()).total_seconds()  # type: ignore[operator]
            if wait_s > 0:
                return Outcome("requeued", delay_s=wait_s)
        return Outcome("skipped")

    def _execute(self, claim: store.Claim) -> Outcome:
        job = claim.job
        deadline = as_utc(job.deadline)
        if deadline is not None and deadline <= self.clock.utcnow():
            error = {"type": "deadline_exceeded", "message": "The job's deadline passed before it could start."}
            return self._fail(claim, error, [])
        targets = self.config.targets_for(job.model) or []
        request = ChatRequest.from_body(job.request)
        attempts: list[JobAttempt] = []
        last_error: UpstreamError | None = None
        for target in targets:
            provider = self.providers[target.provider]
            started_at = self.clock.utcnow()
            t0 = self.monotonic()
            try:
                completion = provider.complete(request, target.model)
            except UpstreamError as exc:
                attempts.append(self._attempt(claim, target, started_at, t0, exc.error_type, exc.message))
                log.info("upstream_failed", job_id=job.id, target=_name(target), error_type=exc.error_type)
                if not exc.retryable:
                    return self._fail(claim, exc.to_error(), attempts)
                last_error = exc
                continue
            attempts.append(self._attempt(claim, target, started_at, t0, "succeeded", None))
            return self._succeed(claim, target, completion, attempts)
        if last_error is None:
            error = {"type": "bad_request", "message": f"No targets are configured for model {job.model!r}."}
            return self._fail(claim, error, attempts)
        if claim.attempt < job.max_attempts:
            return self._requeue(claim, attempts, self.policy.retry_delay_s)
        return self._fail(claim, last_error.to_error(), attempts)

    def _attempt(
        self, claim: store.Claim, target: Target, started_at: datetime, t0: float, outcome: str, error: str | None
    ) -> JobAttempt:
        return JobAttempt(
            job_id=claim.job.id,
            attempt=claim.attempt,
            provider=target.provider,
            model=target.model,
            outcome=outcome,
            error_message=error,
            latency_ms=int((self.monotonic() - t0) * 1000),
            started_at=started_at,
        )

    def _succeed(
        self, claim: store.Claim, target: Target, completion: Completion, attempts: list[JobAttempt]
    ) -> Outcome:
        values: dict[str, Any] = {
            "status": store.SUCCEEDED,
            "result": completion.body,
            "error": None,
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
            "cost_usd": cost_usd(self.config, target.model, completion.input_tokens, completion.output_tokens),
            "served_provider": target.provider,
            "served_model": target.model,
        }
        return self._final(claim, values, attempts, store.SUCCEEDED)

    def _fail(self, claim: store.Claim, error: dict[str, str], attempts: list[JobAttempt]) -> Outcome:
        return self._final(claim, {"status": store.FAILED, "error": error}, attempts, store.FAILED)

    def _final(
        self, claim: store.Claim, values: dict[str, Any], attempts: list[JobAttempt], status: str
    ) -> Outcome:
        with self.sessions() as session:
            won = store.finish_job(session, self.clock, claim, **values)
            store.record_attempts(session, attempts)
        if not won:
            log.warning("final_write_lost", job_id=claim.job.id, attempt=claim.attempt)
            return Outcome("skipped")
        self.on_final(claim.job.id)
        return Outcome(status)

    def _requeue(self, claim: store.Claim, attempts: list[JobAttempt], delay_s: float) -> Outcome:
        with self.sessions() as session:
            won = store.requeue_job(session, self.clock, claim, delay_s=delay_s)
            store.record_attempts(session, attempts)
        return Outcome("requeued", delay_s=delay_s) if won else Outcome("skipped")


def _name(target: Target) -> str:
    return f"{target.provider}/{target.model}"
