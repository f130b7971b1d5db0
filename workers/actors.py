"""The Dramatiq actors. Thin: `run_job` hands a job id to the process's job runtime and
returns; `deliver_webhook` delivers one webhook on its own thread, or, when the delivery's
tenant already has its cap of attempts in flight, sends it back to the queue until its turn.

The hand-off blocks while the process already holds `WORKER_MAX_IN_FLIGHT` batch jobs, or
that and a tenth more with interactive ones (the back-pressure: the message stays unacked in
Redis and the queue holds the rest). Acking at
hand-off loses nothing, since the SQL claim and its lease own the job (core/services/runtime.py).
Actors take `max_retries=0` (jobgate counts attempts in SQL; Dramatiq's retries would fight it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import dramatiq
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from core import queue, tracing
from core.services.runtime import JobRuntime
from core.webhooks.delivery import WAITING, WebhookDeliverer
from core.webhooks.outbox import PENDING

log = structlog.get_logger("jobgate.actors")

# A delay longer than this is not parked in Dramatiq's delay queue (it would sit unacked in
# one worker's memory): the delivery keeps its time in SQL and the sweeper dispatches it.
MAX_BROKER_DELAY_S = 60.0


class HandOff:
    """Hands job ids from Dramatiq's threads to the runtime, holding one slot of each of
    `slots` while the job is in the process (taken in order, so all callers agree on it)."""

    def __init__(self, runtime: JobRuntime, slots: list[threading.BoundedSemaphore]) -> None:
        self.runtime = runtime
        self._slots = slots

    def __call__(self, job_id: str, priority: str, due_ms: int | None = None) -> None:
        for slot in self._slots:
            slot.acquire()
        try:
            future = self.runtime.submit_threadsafe(job_id, priority, due_ms)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())

    def _release(self) -> None:
        for slot in reversed(self._slots):
            slot.release()


def interactive_reserve(max_in_flight: int) -> int:
    """The slots interactive jobs have on top of `max_in_flight`: a tenth, at least one."""
    return max(max_in_flight // 10, 1)


def hand_offs(runtime: JobRuntime, max_in_flight: int) -> dict[str, HandOff]:
    """One hand-off per priority. Batch jobs hold up to `max_in_flight` slots; interactive
    jobs share them and have `interactive_reserve` more, so a process full of batch work still
    takes a chatbot's interactive job at once (the interactive queue has its own consumer
    threads), and batch work alone can use the whole bound."""
    total = threading.BoundedSemaphore(max_in_flight + interactive_reserve(max_in_flight))
    batch = threading.BoundedSemaphore(max_in_flight)
    return {queue.INTERACTIVE: HandOff(runtime, [total]), queue.BATCH: HandOff(runtime, [batch, total])}


def _run_job_fn(hand_off: HandOff, priority: str) -> Callable[[str], None]:
    def run_job(job_id: str) -> None:
        if tracing.enabled():
            hand_off(job_id, priority, _due_ms(CurrentMessage.get_current_message()))
        else:
            hand_off(job_id, priority)

    return run_job


def _due_ms(message: dramatiq.Message[object] | None) -> int | None:
    """When the message was due, for the job's queue-wait span: its enqueue time, or its
    `eta` if it was delayed (a delay is a wait asked for, not one the queue imposed)."""
    if message is None:
        return None
    return max(message.message_timestamp, int(message.options.get("eta") or 0))


def _deliver_webhook_fn(deliverer: WebhookDeliverer, broker: RedisBroker) -> Callable[..., None]:
    def deliver_webhook(delivery_id: str, manual: bool = False) -> None:
        structlog.contextvars.bind_contextvars(delivery_id=delivery_id)
        try:
            result = deliverer.deliver(delivery_id, manual=manual)
            retry_in_s = result.retry_in_s
            comes_back = result.status in (PENDING, WAITING)
            if comes_back and retry_in_s is not None and retry_in_s <= MAX_BROKER_DELAY_S:
                # Under the delivery's id, as its first dispatch: a copy still in flight (a fast
                # failure's retry overtaking the ack of its delay-queue copy) is safe, as acks
                # settle only their own message (core/queue/own_ack.py).
                queue.dispatch_deliveries(broker, [delivery_id], delay_ms=max(1, int(retry_in_s * 1000)))
        except Exception:
            # The delivery's hold lapses and the sweeper dispatches it again: nothing is lost.
            log.exception("deliver_webhook_crashed")
            raise
        finally:
            structlog.contextvars.unbind_contextvars("delivery_id")

    return deliver_webhook


def declare_actors(
    broker: RedisBroker, hand_offs: dict[str, HandOff], deliverer: WebhookDeliverer, *, time_limit_s: float
) -> list[dramatiq.Actor]:
    """`hand_offs`: one per priority, so a full batch hand-off never holds up interactive jobs."""
    options = {"max_retries": 0, "time_limit": int(time_limit_s * 1000)}
    if tracing.enabled():
        # The job's queue wait starts at its message's time, which only the message knows.
        broker.add_middleware(CurrentMessage())
    actors = []
    for priority, spec in queue.RUN_ACTORS.items():
        actors.append(
            dramatiq.Actor(
                _run_job_fn(hand_offs[priority], priority),
                broker=broker,
                actor_name=spec.actor_name,
                queue_name=spec.queue_name,
                priority=spec.priority,
                options=options,
            )
        )
    actors.append(declare_webhook_actor(broker, deliverer, time_limit_s=time_limit_s))
    return actors


def declare_webhook_actor(
    broker: RedisBroker, deliverer: WebhookDeliverer, *, time_limit_s: float
) -> dramatiq.Actor:
    spec = queue.DELIVER_WEBHOOK
    return dramatiq.Actor(
        _deliver_webhook_fn(deliverer, broker),
        broker=broker,
        actor_name=spec.actor_name,
        queue_name=spec.queue_name,
        priority=spec.priority,
        options={"max_retries": 0, "time_limit": int(time_limit_s * 1000)},
    )
