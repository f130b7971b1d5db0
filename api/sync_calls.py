"""One request answered when its job is done: the flow every synchronous surface shares
(`POST /v1/chat/completions`, `POST /anthropic/v1/messages`); each surface renders the
`Finished` job in its own wire format.

The job runs with priority `interactive` through the same limiter, cache, fallback and
records as every other job. Its first attempt runs in this API process (api/inline_calls.py)
unless `JOBGATE_SYNC_MAX_IN_FLIGHT` calls already do; then, and for its retries, it goes
through the queue to the workers. An `Idempotency-Key` makes a client's retry safe: the same
key and body answer the first request's job (waiting for it if needed) with no second call.
A job still running after `JOBGATE_SYNC_TIMEOUT_S` comes back unfinished (`status` None), for
the surface to answer 504 with its id. A final job's 429/503 carries the `retry_after_s`
until one of its model's providers ends its fleet-wide pause, or 1.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AppState, Principal
from api.dispatch import dispatch_committed, exit_if_faulted
from api.inline_calls import InlineCalls
from api.request_id import request_id_of
from api.waiting import wait_for_job
from core.ratelimit.limiter import RateLimiter
from core.services.submit import JobSpec, existing_for_key, submit_job
from core.store import jobs as store

log = structlog.get_logger("jobgate.api")

# Retry-After when no target of the model is paused: the job used its attempts on a provider
# that is busy, not one that named a time; OpenAI's clients back off from 1 s on their own.
DEFAULT_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class IdempotencyKey:
    """A request's Idempotency-Key and the fingerprint of the body it came with."""

    key: str
    body_hash: str


@dataclass(frozen=True)
class Finished:
    """A sync request's job as the surface must answer it; `status` None: still running."""

    job_id: str
    model: str
    status: str | None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


async def run_sync(
    request: Request,
    spec: JobSpec,
    state: AppState,
    session: AsyncSession,
    principal: Principal,
    key: IdempotencyKey | None,
) -> Finished:
    """Submit the job (or find the one an earlier request with the key made), run it, and
    return it once final or once `JOBGATE_SYNC_TIMEOUT_S` has passed."""
    wait_s = state.settings.sync_timeout_s
    if key is not None:
        earlier = await existing_for_key(session, principal.tenant_id, key.key, key.body_hash)
        if earlier is not None:  # a retry: the first request's job, not a second call
            return await _when_final(state, session, principal, earlier.id, wait_s)
    if state.inline is not None and state.inline.has_room():
        return await _call_here(state.inline, request, spec, state, session, principal, key)
    job, created = await submit_job(
        session,
        spec,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        idempotency_key=key.key if key else None,
        body_hash=key.body_hash if key else None,
        request_id=request_id_of(request),
    )
    if created:
        await dispatch_committed(
            state.broker,
            [(job.id, job.priority)],
            fault_exit_after_commit=state.settings.fault_exit_after_commit,
        )
    return await _when_final(state, session, principal, job.id, wait_s)


async def _call_here(
    inline: InlineCalls,
    request: Request,
    spec: JobSpec,
    state: AppState,
    session: AsyncSession,
    principal: Principal,
    key: IdempotencyKey | None,
) -> Finished:
    """The job inserted claimed and called by this process; a job its first attempt did not
    finish (requeued for a retry) is waited for like a queued one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.sync_timeout_s
    claim = await inline.submit(
        spec,
        tenant_id=principal.tenant_id,
        request_id=request_id_of(request),
        idempotency_key=key.key if key else None,
        body_hash=key.body_hash if key else None,
    )
    if claim is None:  # a concurrent request with the same key recorded its job first
        assert key is not None
        winner = await existing_for_key(session, principal.tenant_id, key.key, key.body_hash)
        if winner is None:
            raise RuntimeError("an Idempotency-Key's job was neither inserted nor found")
        return await _when_final(state, session, principal, winner.id, deadline - loop.time())
    exit_if_faulted(state.settings.fault_exit_after_commit, 1)
    try:
        outcome, verdict = await asyncio.wait_for(
            inline.run(claim, principal.tenant_name), timeout=state.settings.sync_timeout_s
        )
    except TimeoutError:
        return Finished(claim.id, claim.model, None)
    if verdict is not None and verdict.is_final and outcome.status is verdict.status:
        values = verdict.values
        return Finished(claim.id, claim.model, values["status"], values.get("result"), values.get("error"))
    return await _when_final(state, session, principal, claim.id, deadline - loop.time())


async def _when_final(
    state: AppState, session: AsyncSession, principal: Principal, job_id: str, wait_s: float
) -> Finished:
    job = await wait_for_job(state, session, principal.tenant_id, job_id, max(wait_s, 0.0))
    if job.status not in store.FINAL_STATES:
        return Finished(job.id, job.model, None)
    return Finished(job.id, job.model, job.status, job.result, job.error)


async def retry_after_s(state: AppState, model: str) -> int:
    """Seconds until one of the model's providers is out of its fleet-wide pause (the soonest),
    at least `DEFAULT_RETRY_AFTER_S` (also when Redis cannot say)."""
    providers = {target.provider for target in state.config.targets_for(model) or []}
    try:
        left_s = await RateLimiter(state.redis, state.keys).shortest_pause_left_s(providers)
    except redis.RedisError as exc:
        log.warning("retry_after_unknown", error=type(exc).__name__)
        return DEFAULT_RETRY_AFTER_S
    return max(DEFAULT_RETRY_AFTER_S, math.ceil(left_s))
