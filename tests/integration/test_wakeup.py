"""The wake-on-enqueue consumer (core/queue/wakeup.py) against a real Redis and a real Dramatiq worker."""

from __future__ import annotations

import statistics
import threading
import time

import dramatiq
import pytest

from core import queue
from core.redis.keys import Keys
from tests.processes import waking_queues


@pytest.fixture
def broker_and_worker(redis_url: str, keys: Keys):
    broker = queue.build_broker(redis_url, keys, max_connections=32, timeout_s=5)
    seen: dict[str, threading.Event] = {}

    def run_job(job_id: str) -> None:
        seen.setdefault(job_id, threading.Event()).set()

    spec = queue.RUN_INTERACTIVE
    dramatiq.Actor(
        run_job, broker=broker, actor_name=spec.actor_name, queue_name=spec.queue_name, priority=0, options={}
    )
    # A long idle back-off: pick-up must come from the wake-up, not from polling.
    worker = dramatiq.Worker(broker, queues={spec.queue_name}, worker_threads=2, worker_timeout=2_000)
    worker.start()
    try:
        yield broker, seen
    finally:
        with waking_queues({redis_url: {broker.namespace}}):
            worker.stop(timeout=5_000)
        broker.close()


def test_idle_worker_picks_up_a_message_within_milliseconds_of_its_enqueue(broker_and_worker) -> None:
    broker, seen = broker_and_worker
    latencies = []
    for i in range(15):
        job_id = f"job_wake_{i}"
        event = seen.setdefault(job_id, threading.Event())
        # Let the consumer go idle (blocked on its wake list) before each enqueue.
        time.sleep(0.15)
        started = time.perf_counter()
        queue.dispatch_jobs(broker, [(job_id, queue.INTERACTIVE)])
        assert event.wait(timeout=5), f"{job_id} was never run"
        latencies.append(time.perf_counter() - started)
    # Dramatiq's own back-off (up to worker_timeout, 2 s here) would take far longer.
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.9, latencies


def test_bulk_enqueue_wakes_consumers_and_every_message_runs(broker_and_worker) -> None:
    broker, seen = broker_and_worker
    ids = [f"job_bulk_{i}" for i in range(500)]
    for job_id in ids:
        seen.setdefault(job_id, threading.Event())
    queue.dispatch_jobs(broker, [(job_id, queue.INTERACTIVE) for job_id in ids])
    deadline = time.monotonic() + 20
    for job_id in ids:
        assert seen[job_id].wait(timeout=max(0.0, deadline - time.monotonic())), f"{job_id} was never run"
