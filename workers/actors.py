"""The Dramatiq actors. Thin: each takes a job id and hands it to `core.services`.

Actors are declared against an explicit broker at start-up (no import-time globals), take
`max_retries=0` (jobgate counts attempts in SQL; Dramatiq's retries would fight it) and a
time limit just above the longest provider timeout.
"""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker

from core import queue
from core.services.execute import JobExecutor
from core.services.webhook_delivery import WebhookDeliverer

log = structlog.get_logger("jobgate.actors")

# A delay longer than this is not parked in Dramatiq's delay queue (it would sit unacked in
# one worker's memory): the job keeps its `not_before` in SQL and the sweeper dispatches it.
MAX_BROKER_DELAY_S = 60.0


def _run_job_fn(executor: JobExecutor, broker: RedisBroker, priority: str) -> Callable[[str], None]:
    def run_job(job_id: str) -> None:
        structlog.contextvars.bind_contextvars(job_id=job_id)
        try:
            outcome = executor.run(job_id)
            delay_s = outcome.delay_s
            if outcome.status == "requeued" and delay_s is not None and delay_s <= MAX_BROKER_DELAY_S:
                # Through the delay queue even for ~0 s, under the job id that this message,
                # still unacked, also has: safe, as acks settle only their own message
                # (core/own_ack.py).
                queue.dispatch_jobs(broker, [(job_id, priority)], delay_ms=max(1, int(delay_s * 1000)))
        except Exception:
            # The claim's lease expires and the reaper re-queues the job: nothing is lost.
            log.exception("run_job_crashed")
            raise
        finally:
            structlog.contextvars.unbind_contextvars("job_id")

    return run_job


def _deliver_webhook_fn(deliverer: WebhookDeliverer, broker: RedisBroker) -> Callable[..., None]:
    def deliver_webhook(delivery_id: str, manual: bool = False) -> None:
        structlog.contextvars.bind_contextvars(delivery_id=delivery_id)
        try:
            result = deliverer.deliver(delivery_id, manual=manual)
            retry_in_s = result.retry_in_s
            if result.status == "pending" and retry_in_s is not None and retry_in_s <= MAX_BROKER_DELAY_S:
                # Under the delivery's id, as its first dispatch: a copy still in flight (a fast
                # failure's retry overtaking the ack of its delay-queue copy) is safe, as acks
                # settle only their own message (core/own_ack.py).
                queue.dispatch_deliveries(broker, [delivery_id], delay_ms=max(1, int(retry_in_s * 1000)))
        except Exception:
            # The delivery's hold lapses and the sweeper dispatches it again: nothing is lost.
            log.exception("deliver_webhook_crashed")
            raise
        finally:
            structlog.contextvars.unbind_contextvars("delivery_id")

    return deliver_webhook


def declare_actors(
    broker: RedisBroker, executor: JobExecutor, deliverer: WebhookDeliverer, *, time_limit_s: float
) -> list[dramatiq.Actor]:
    options = {"max_retries": 0, "time_limit": int(time_limit_s * 1000)}
    actors = []
    for priority, spec in queue.RUN_ACTORS.items():
        actors.append(
            dramatiq.Actor(
                _run_job_fn(executor, broker, priority),
                broker=broker,
                actor_name=spec.actor_name,
                queue_name=spec.queue_name,
                priority=spec.priority,
                options=options,
            )
        )
    spec = queue.DELIVER_WEBHOOK
    actors.append(
        dramatiq.Actor(
            _deliver_webhook_fn(deliverer, broker),
            broker=broker,
            actor_name=spec.actor_name,
            queue_name=spec.queue_name,
            priority=spec.priority,
            options=options,
        )
    )
    return actors
