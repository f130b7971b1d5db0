"""The throughput baseline: a worker process whose one actor does nothing.

Built like `workers/process.py` builds a jobgate worker (the same `core.queue.build_broker`,
the same pool sizes, the same `worker_timeout`, Dramatiq's default middleware), so the only
difference from a jobgate worker is the work done per message. `python -m bench.noop_worker
--threads N` prints "noop worker ready" and stops on SIGTERM. Messages are enqueued by
`enqueue_noops` (pipelined, as jobgate enqueues a batch).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from core import queue
from core.redis.keys import Keys
from core.settings import Settings

NOOP = queue.ActorSpec("bench_noop", "bench-noop", 10)
READY_LINE = "noop worker ready"


def enqueue_noops(broker: RedisBroker, count: int, *, run_id: str) -> int:
    return queue.enqueue_messages(broker, ((NOOP, f"{run_id}-{i}", ()) for i in range(count)))


def pending_noops(broker: RedisBroker) -> int:
    """Messages not yet acked (queued, prefetched or running): the broker keeps each in this hash."""
    return int(broker.client.hlen(f"{broker.namespace}:{NOOP.queue_name}.msgs"))


def declare_noop(broker: RedisBroker) -> dramatiq.Actor:
    broker.declare_queue(NOOP.queue_name)
    return dramatiq.Actor(
        lambda: None,
        broker=broker,
        actor_name=NOOP.actor_name,
        queue_name=NOOP.queue_name,
        priority=NOOP.priority,
        options={"max_retries": 0},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-noop-worker")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--grace-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    settings = Settings()
    assert settings.redis_url, "JOBGATE_REDIS_URL is not set"
    broker = queue.build_broker(
        settings.redis_url,
        Keys(settings.redis_prefix),
        max_connections=args.threads + 32,
        timeout_s=settings.redis_timeout_s,
    )
    declare_noop(broker)
    worker = dramatiq.Worker(
        broker,
        queues={NOOP.queue_name},
        worker_threads=args.threads,
        worker_timeout=settings.worker_idle_poll_ms,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker.start()
    print(f"{READY_LINE} pid={os.getpid()} threads={args.threads}", flush=True)
    stop.wait()
    worker.stop(timeout=int(args.grace_s * 1000))
    broker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
