"""The broker contract jobgate builds on, against a real Redis and a real Dramatiq worker.

`core.queue` enqueues through Dramatiq's own `dispatch` script (pipelined, job id as the
Redis message id) rather than `actor.send`. These tests pin what that relies on: a message
enqueued that way is consumed by an unmodified Dramatiq worker and runs its actor with the
job id; `pending_job_ids` sees it while it is queued, delayed or unacked, and not once it is
acked. A Dramatiq upgrade that changes the script's arguments fails here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name

from core import queue
from core.redis.keys import Keys
from tests.processes import wait_until, waking_queues


@dataclass
class Recorder:
    """What the actors were called with; a job may be held running until released."""

    runs: list[tuple[str, str]] = field(default_factory=list)
    started: dict[str, threading.Event] = field(default_factory=dict)
    hold: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)

    def actor(self, priority: str):  # type: ignore[no-untyped-def]
        def run_job(job_id: str) -> None:
            self.started.setdefault(job_id, threading.Event()).set()
            if job_id in self.hold:
                self.release.wait(timeout=10)
            self.runs.append((priority, job_id))

        return run_job

    def ran(self, job_id: str) -> bool:
        return any(ran_id == job_id for _, ran_id in self.runs)


@pytest.fixture
def broker(redis_url: str, keys: Keys) -> Iterator[RedisBroker]:
    broker = queue.build_broker(redis_url, keys, max_connections=16, timeout_s=5)
    yield broker
    broker.close()


@pytest.fixture
def recorder(broker: RedisBroker) -> Recorder:
    recorder = Recorder()
    for priority, spec in queue.RUN_ACTORS.items():
        dramatiq.Actor(
            recorder.actor(priority),
            broker=broker,
            actor_name=spec.actor_name,
            queue_name=spec.queue_name,
            priority=spec.priority,
            options={"max_retries": 0},
        )
    return recorder


@pytest.fixture
def start_worker(broker: RedisBroker, recorder: Recorder, redis_url: str) -> Iterator[object]:
    """Starts a real Dramatiq worker on both job queues, in this process; stopped afterwards."""
    workers: list[dramatiq.Worker] = []

    def start() -> None:
        names = {spec.queue_name for spec in queue.RUN_ACTORS.values()}
        worker = dramatiq.Worker(broker, queues=names, worker_threads=2, worker_timeout=100)
        worker.start()
        workers.append(worker)

    yield start
    recorder.release.set()
    with waking_queues({redis_url: {broker.namespace}}):
        for worker in workers:
            worker.stop(timeout=5_000)


@pytest.mark.parametrize("priority", queue.PRIORITIES)
def test_dispatched_job_runs_its_actor_on_a_real_worker(
    broker: RedisBroker, recorder: Recorder, start_worker, priority: str
) -> None:
    job_id = f"job_dispatched_{priority}"
    queue.dispatch_jobs(broker, [(job_id, priority)])

    start_worker()
    wait_until(lambda: recorder.ran(job_id), timeout_s=10, what=f"{job_id} to run")

    assert recorder.runs == [(priority, job_id)]


def test_pending_job_ids_sees_a_message_until_it_is_acked(
    broker: RedisBroker, recorder: Recorder, start_worker
) -> None:
    job = ("job_pending", queue.INTERACTIVE)
    other = ("job_never_dispatched", queue.BATCH)
    recorder.hold.add(job[0])
    queue.dispatch_jobs(broker, [job])

    queued = queue.pending_job_ids(broker, [job, other])
    start_worker()
    assert recorder.started.setdefault(job[0], threading.Event()).wait(timeout=10)
    while_running = queue.pending_job_ids(broker, [job, other])
    recorder.release.set()
    wait_until(lambda: not queue.pending_job_ids(broker, [job]), timeout_s=10, what="the ack")

    assert queued == {job[0]}
    assert while_running == {job[0]}  # unacked: a crash now would bring it back, so not lost
    assert recorder.runs == [(queue.INTERACTIVE, job[0])]


def test_delayed_dispatch_is_pending_and_runs_only_once_due(
    broker: RedisBroker, recorder: Recorder, start_worker
) -> None:
    job = ("job_delayed", queue.BATCH)
    delay_s = 1.0
    dispatched_at = time.monotonic()
    queue.dispatch_jobs(broker, [job], delay_ms=int(delay_s * 1000))

    pending = queue.pending_job_ids(broker, [job])
    start_worker()
    wait_until(lambda: recorder.ran(job[0]), timeout_s=10, what="the delayed job to run")
    ran_after_s = time.monotonic() - dispatched_at

    assert pending == {job[0]}
    assert queue.queue_depths(broker)[queue.RUN_BATCH.queue_name] == 0
    assert ran_after_s >= delay_s * 0.9
    assert recorder.runs == [(queue.BATCH, job[0])]


def test_a_due_time_dispatch_is_delayed_to_that_time_not_by_a_delay_from_now(
    broker: RedisBroker, recorder: Recorder, start_worker
) -> None:
    """A job put back for a due time comes back at it however long its transition took to
    commit; a due time already past runs at once, from the queue itself."""
    later, past = ("job_due_later", queue.BATCH), ("job_due_past", queue.BATCH)
    due_ms = queue.now_ms() + 1_500
    queue.dispatch_jobs_due(broker, [(*later, due_ms), (*past, queue.now_ms() - 1_000)])

    depths = queue.queue_depths(broker)
    assert depths[queue.RUN_BATCH.queue_name] == 1  # the past one, not on the delay queue
    assert queue.pending_job_ids(broker, [later, past]) == {later[0], past[0]}
    start_worker()
    wait_until(lambda: recorder.ran(later[0]), timeout_s=10, what="the due job to run")
    ran_at_ms = queue.now_ms()
    assert ran_at_ms >= due_ms
    assert recorder.runs[0] == (queue.BATCH, past[0])


def test_bulk_dispatch_over_several_pipeline_chunks_enqueues_every_job(broker: RedisBroker) -> None:
    count = queue.ENQUEUE_CHUNK + 500
    interactive = [(f"job_bulk_i{i}", queue.INTERACTIVE) for i in range(count)]
    batch = [(f"job_bulk_b{i}", queue.BATCH) for i in range(3)]

    enqueued = queue.dispatch_jobs(broker, interactive + batch)

    assert enqueued == count + 3
    assert queue.queue_depths(broker) == {
        queue.RUN_INTERACTIVE.queue_name: count,
        queue.RUN_BATCH.queue_name: 3,
        queue.DELIVER_WEBHOOK.queue_name: 0,
    }
    assert queue.pending_job_ids(broker, interactive + batch) == {job_id for job_id, _ in interactive + batch}


def fetch_one(broker: RedisBroker, queue_name: str) -> Any:
    """Fetch one message as a worker's consumer does (it joins this broker's acks set)."""
    consumer = broker.consume(queue_name, prefetch=1, timeout=100)
    deadline = time.monotonic() + 5
    while (message := next(consumer)) is None:
        assert time.monotonic() < deadline, f"nothing to fetch on {queue_name}"
    return consumer, message


def move_due(broker: RedisBroker, held: Any) -> None:
    """Put a delayed message that fell due on its queue, as Dramatiq's worker does."""
    due = held.copy(queue_name=queue.RUN_BATCH.queue_name)
    del due.options["eta"]
    broker.enqueue(due)


def test_a_delayed_message_that_fell_due_is_found_by_its_job_id_on_its_queue(broker: RedisBroker) -> None:
    job = ("job_fell_due", queue.BATCH)
    queue.dispatch_jobs(broker, [job], delay_ms=1)
    consumer, held = fetch_one(broker, dq_name(queue.RUN_BATCH.queue_name))

    move_due(broker, held)
    consumer.ack(held)

    assert queue.queue_depths(broker)[queue.RUN_BATCH.queue_name] == 1
    assert queue.pending_job_ids(broker, [job]) == {job[0]}  # the sweeper will not send it again
    _, message = fetch_one(broker, queue.RUN_BATCH.queue_name)
    assert message.options["redis_message_id"] == job[0] and message.message_id == held.message_id


@pytest.mark.parametrize("settle", ["ack", "nack"])
def test_a_late_ack_of_a_delayed_message_leaves_the_jobs_next_message_alone(
    broker: RedisBroker, settle: str
) -> None:
    """The interleaving that lost a job: its delayed message falls due and is moved to the
    queue; the job runs, is refused again and put back on the delay queue under the same id;
    only then does the mover ack (or nack) its delay-queue copy."""
    job = ("job_put_back_twice", queue.BATCH)
    delay_queue = dq_name(queue.RUN_BATCH.queue_name)
    queue.dispatch_jobs(broker, [job], delay_ms=1)
    consumer, held = fetch_one(broker, delay_queue)
    move_due(broker, held)

    queue.dispatch_jobs(broker, [job], delay_ms=1)  # refused again: back on the delay queue
    getattr(consumer, settle)(held)  # the mover's late settle

    assert queue.pending_job_ids(broker, [job]) == {job[0]}
    _, again = fetch_one(broker, delay_queue)
    assert again.args == (job[0],) and again.message_id != held.message_id
    assert broker.client.zcard(f"{broker.namespace}:{queue.RUN_BATCH.queue_name}.XQ") == 0


@pytest.mark.parametrize("settle", ["ack", "nack"])
def test_ack_and_nack_settle_their_own_message(broker: RedisBroker, settle: str) -> None:
    job = ("job_settled", queue.INTERACTIVE)
    queue_name = queue.RUN_INTERACTIVE.queue_name
    queue.dispatch_jobs(broker, [job])
    consumer, message = fetch_one(broker, queue_name)

    getattr(consumer, settle)(message)
    if settle == "ack":
        # Queued until the consumer thread settles its acks together, before its next fetch.
        assert queue.pending_job_ids(broker, [job]) == {job[0]}
        consumer.flush_acks()

    assert queue.pending_job_ids(broker, [job]) == set()
    dead = broker.client.zrange(f"{broker.namespace}:{queue_name}.XQ", 0, -1)
    assert dead == ([job[0].encode()] if settle == "nack" else [])
