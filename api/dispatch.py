"""Hand committed jobs to the broker from the async API without blocking its event loop.

The broker is redis-py's sync client, so the pipelined enqueue runs in a worker thread.
A failure here loses nothing: the jobs are committed, and the sweeper dispatches queued
jobs that have no message in Redis. The client still gets its 202 (DESIGN.md principle 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
import structlog
from anyio import to_thread
from dramatiq.brokers.redis import RedisBroker

from core import queue

log = structlog.get_logger("jobgate.dispatch")


async def dispatch_committed(broker: RedisBroker, jobs: Sequence[tuple[str, str]]) -> bool:
    try:
        await to_thread.run_sync(lambda: queue.dispatch_jobs(broker, jobs))
    except redis.RedisError as exc:
        log.warning("enqueue_failed_sweeper_will_dispatch", jobs=len(jobs), error=type(exc).__name__)
        return False
    return True
