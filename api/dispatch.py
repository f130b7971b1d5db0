"""Hand committed jobs to the broker from the async API without blocking its event loop.

The broker is redis-py's sync client, so the pipelined enqueue runs in a worker thread.
A failure here loses nothing: the jobs are committed, and the sweeper dispatches queued
jobs that have no message in Redis. The client still gets its 202 (DESIGN.md principle 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime

import redis
import structlog
from anyio import to_thread
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask

from api.deps import AppState
from core import queue
from core.redis.keys import Keys
from core.services.lifecycle import Effects, apply_effects
from core.webhooks.outbox import commit_final

log = structlog.get_logger("jobgate.dispatch")


def exit_if_faulted(fault_exit_after_commit: bool, jobs: int) -> None:
    """The test-only fault `JOBGATE_FAULT_EXIT_AFTER_COMMIT`: die right after a commit."""
    if fault_exit_after_commit:
        log.warning("fault_injection_exit_after_commit", jobs=jobs)
        os._exit(137)


async def dispatch_committed(
    broker: RedisBroker, jobs: Sequence[tuple[str, str]], *, fault_exit_after_commit: bool = False
) -> bool:
    exit_if_faulted(fault_exit_after_commit, len(jobs))
    try:
        await to_thread.run_sync(lambda: queue.dispatch_jobs(broker, jobs))
    except redis.RedisError as exc:
        log.warning("enqueue_failed_sweeper_will_dispatch", jobs=len(jobs), error=type(exc).__name__)
        return False
    return True


def dispatch_after_answer(state: AppState, jobs: Sequence[tuple[str, str]]) -> BackgroundTask:
    """Enqueue a committed batch's jobs once the answer has gone out: the batch is the
    client's already, and enqueueing tens of thousands of messages takes seconds on a busy
    machine; if this process dies meanwhile, the sweeper dispatches what was not enqueued."""
    return BackgroundTask(
        dispatch_committed, state.broker, jobs, fault_exit_after_commit=state.settings.fault_exit_after_commit
    )


async def commit_final_events(session: AsyncSession, job_ids: list[str], now: datetime) -> Effects:
    """Commit, with the webhook outbox rows of the jobs this request made final (and of the
    batches that completed); returns what is left to do after the commit."""
    deliveries = await session.run_sync(lambda sync_session: commit_final(sync_session, job_ids, now))
    return Effects(finished=list(job_ids), deliveries=deliveries)


async def apply_after_commit(broker: RedisBroker, keys: Keys, effects: Effects) -> None:
    """`lifecycle.apply_effects` off the event loop (the broker's client is redis-py's sync one)."""
    if effects:
        await to_thread.run_sync(lambda: apply_effects(effects, broker, keys))


async def dispatch_deliveries(
    broker: RedisBroker, delivery_ids: Sequence[str], *, manual: bool = False
) -> None:
    if not delivery_ids:
        return
    try:
        await to_thread.run_sync(lambda: queue.dispatch_deliveries(broker, delivery_ids, manual=manual))
    except redis.RedisError as exc:
        log.warning(
            "webhook_enqueue_failed_sweeper_will_dispatch",
            deliveries=len(delivery_ids),
            error=type(exc).__name__,
        )
