"""One request answered when its job is done: the flow every synchronous surface shares
(`POST /v1/chat/completions`, `POST /anthropic/v1/messages`); each surface renders the
`Finished` job in its own wire format.

The job runs with priority `interactive` through the same limiter, cache, fallback and
records as every other job. Its first attempt runs in this API process (api/inline_calls.py)
unless `JOBGATE_SYNC_MAX_IN_FLIGHT` calls already do; then, and for its retries, it goes
through the queue to the workers. An `Idempotency-Key` makes a client's retry safe: the same
key and body answer the first request's job (waiting for it if needed) with no second call;
an SDK's retry (`x-stainless-retry-count` > 0) of a request whose job is still running, or
succeeded, attaches to that job the same way (same tenant, same body, within the sync
timeout), cache or no cache.
A job still running after `JOBGATE_SYNC_TIMEOUT_S` comes back unfinished (`status` None), for
the surface to answer 504 with its id and `Retry-After: 1` (`TIMED_OUT_RETRY_AFTER_S`): the
SDK's retry then waits on the same job. A final job's 429/503 carries the `retry_after_s`
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
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import AppState, Principal
from api.dispatch import dispatch_committed, exit_if_faulted
from api.idempotency import keys_since
from api.inline_calls import InlineCalls
from api.request_id import request_id_of
from api.waiting import wait_for_job
from core.domain.relay import Relay
from core.ids import id_floor
from core.ratelimit.limiter import RateLimiter
from core.services.runtime import PendingRecord
from core.services.submit import JobSpec, existing_for_key, request_hash, submit_job
from core.store import jobs as store

log = structlog.get_logger("jobgate.api")

# How long before the sync timeout's start a job may have been made and still be what an
# SDK's retry attaches to (the SDK's own back-off and the request's travel).
RETRY_WINDOW_MARGIN_S = 60.0
# The Retry-After of a 504: the job runs on, and the SDK's retry after this long waits on it.
TIMED_OUT_RETRY_AFTER_S = 1

# Retry-After when no target of the model is paused: the job used its attempts on a provider
# that is busy, not one that named a time; OpenAI's clients back off from 1 s on their own.
DEFAULT_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class SyncAsk:
    """What tells a sync request's job apart beyond its body: the body's fingerprint (as sent),
    the client's Idempotency-Key, and whether it is an SDK's retry (`x-stainless-retry-count`
    above 0), which attaches to the job of the request it repeats."""

    fingerprint: str
    idempotency_key: str | None = None
    retry: bool = False

    @classmethod
    def of(cls, request: Request, body: BaseModel, idempotency_key: str | None) -> SyncAsk:
        retries = request.headers.get("x-stainless-retry-count", "0").strip()
        return cls(
            fingerprint=request_hash(body.model_dump(mode="json", exclude_unset=True)),
            idempotency_key=idempotency_key,
            retry=retries.isdigit() and int(retries) > 0,
        )


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
    ask: SyncAsk,
    relay: Relay | None = None,
) -> Finished:
    """Submit the job (or find the one the request it repeats made), run it, and return it
    once final or once `JOBGATE_SYNC_TIMEOUT_S` has passed. With a `relay`, a call made here
    streams its chunks there as they come (`api/streaming.py`)."""
    wait_s = state.settings.sync_timeout_s
    earlier = await _earlier_job(state, session, principal, ask)
    if earlier is not None:  # a repeat: the first request's job, not a second call
        return await _when_final(state, session, principal, earlier, wait_s)
    if state.inline is not None and state.inline.has_room():
        return await _call_here(state.inline, request, spec, state, session, principal, ask, relay)
    job, created = await submit_job(
        session,
        spec,
        tenant_id=principal.tenant_id,
        now=state.clock.utcnow(),
        max_attempts=state.settings.max_attempts,
        idempotency_key=ask.idempotency_key,
        body_hash=ask.fingerprint,
        request_id=request_id_of(request),
        keys_since=keys_since(state),
    )
    if created:
        await dispatch_committed(
            state.broker,
            [(job.id, job.priority)],
            fault_exit_after_commit=state.settings.fault_exit_after_commit,
        )
    return await _when_final(state, session, principal, job.id, wait_s)


async def _earlier_job(
    state: AppState, session: AsyncSession, principal: Principal, ask: SyncAsk
) -> str | None:
    """The job a repeat belongs to: the one made with its Idempotency-Key (a Conflict if that
    came with another body), or for an SDK's retry the newest job from the same body within the
    sync timeout (and a minute) that is still to finish or succeeded."""
    if ask.idempotency_key is not None:
        job = await existing_for_key(
            session, principal.tenant_id, ask.idempotency_key, ask.fingerprint, keys_since=keys_since(state)
        )
        return job.id if job is not None else None
    if not ask.retry:
        return None
    window_s = state.settings.sync_timeout_s + RETRY_WINDOW_MARGIN_S
    since = id_floor("job", int((state.clock.utcnow().timestamp() - window_s) * 1000))
    stmt = store.select_recent_twin(principal.tenant_id, ask.fingerprint, since)
    return (await session.execute(stmt)).scalar_one_or_none()


async def _call_here(
    inline: InlineCalls,
    request: Request,
    spec: JobSpec,
    state: AppState,
    session: AsyncSession,
    principal: Principal,
    ask: SyncAsk,
    relay: Relay | None,
) -> Finished:
    """The job inserted claimed and called by this process; a job its first attempt did not
    finish (requeued for a retry) is waited for like a queued one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + state.settings.sync_timeout_s
    inserted: PendingRecord | None = None
    if ask.idempotency_key is None and not state.settings.fault_exit_after_commit:
        # The row's insert begins once the call goes out: the upstream's round trip hides it.
        claim, inserted = inline.submit_started(
            spec, tenant_id=principal.tenant_id, request_id=request_id_of(request), body_hash=ask.fingerprint
        )
    else:
        recorded = await inline.submit(
            spec,
            tenant_id=principal.tenant_id,
            request_id=request_id_of(request),
            idempotency_key=ask.idempotency_key,
            body_hash=ask.fingerprint,
        )
        if recorded is None:  # a concurrent request with the same key recorded its job first
            assert ask.idempotency_key is not None
            winner = await existing_for_key(
                session, principal.tenant_id, ask.idempotency_key, ask.fingerprint, keys_since=None
            )
            if winner is None:
                raise RuntimeError("an Idempotency-Key's job was neither inserted nor found")
            return await _when_final(state, session, principal, winner.id, deadline - loop.time())
        claim = recorded
        exit_if_faulted(state.settings.fault_exit_after_commit, 1)
    try:
        # `timeout`, not `wait_for`: the call starts in this task, not one hop later in another.
        async with asyncio.timeout(state.settings.sync_timeout_s):
            outcome, verdict = await inline.run(claim, relay=relay, inserted=inserted)
    except TimeoutError:
        if inserted is not None:
            inserted.begin()
            await inserted.done  # the 504 names the job: it must exist (or this answers the SQL error)
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
