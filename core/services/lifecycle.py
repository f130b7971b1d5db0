"""The after-commit side of a job's transitions, and the one place that applies it.

Every transition of a job (a worker's claim, finish or requeue, a cancel from the API, the
reaper's requeue or failure) is one SQL transaction; what it leaves for outside SQL is an
`Effects` value: the job ids that became final (long-polls and sync requests wait on them),
the webhook deliveries its outbox rows need dispatched, and the jobs to put (back) on the
queue with their delays. `apply_effects` does all of it in a few pipelined Redis round trips,
after the commit, so a crash in between loses nothing: SQL holds the truth, and the sweeper
re-dispatches queued jobs and pending deliveries that have no message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker

from core import queue
from core.redis.keys import Keys

log = structlog.get_logger("jobgate.lifecycle")


@dataclass
class Effects:
    finished: list[str] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)
    # (job_id, priority, due_ms) to enqueue: due at that Unix time in ms, 0 for now. A due time
    # rather than a delay, so the time the transition took to commit is not added to it.
    dispatch: list[tuple[str, str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.finished or self.deliveries or self.dispatch)

    def add(self, other: Effects) -> None:
        self.finished += other.finished
        self.deliveries += other.deliveries
        self.dispatch += other.dispatch


def job_done_message(job_ids: list[str]) -> str:
    """The job-done channel's message: the ids, space-separated (one publish per group)."""
    return " ".join(job_ids)


def apply_effects(effects: Effects, broker: RedisBroker, keys: Keys) -> None:
    """Dispatch, deliver and announce, after the commit. Best effort: on a Redis error the
    sweeper dispatches what has no message and waiters re-read SQL, so nothing is lost."""
    try:
        if effects.dispatch:
            queue.dispatch_jobs_due(broker, effects.dispatch)
        if effects.deliveries:
            queue.dispatch_deliveries(broker, effects.deliveries)
        if effects.finished:
            broker.client.publish(keys.job_done_channel, job_done_message(effects.finished))
    except redis.RedisError as exc:
        log.warning(
            "after_commit_effects_failed",
            error=type(exc).__name__,
            finished=len(effects.finished),
            deliveries=len(effects.deliveries),
            dispatch=len(effects.dispatch),
        )
