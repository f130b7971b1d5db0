"""One worker process: from start to graceful stop.

Runs the job runtime on an event loop of its own (core/services/runtime.py: up to
`--max-in-flight` jobs at once) and three Dramatiq workers over one broker: `--threads`
consumer threads for each job queue (interactive and batch apart, so a full batch hand-off
never holds up a chatbot), which only hand job ids to the loop, and `--webhook-threads`
threads for webhook deliveries, so a receiver that hangs can never take a thread from a job.
On SIGTERM/SIGINT it stops taking messages, lets jobs in flight finish and their writes land
for up to the grace period, and Dramatiq returns prefetched messages to Redis. `jobgate
worker` starts and supervises these processes.

File descriptors: each job in flight holds one upstream connection and, while it waits on
Redis, one Redis connection; a process needs about 2 x max-in-flight + 100 descriptors, so
the process raises its soft `RLIMIT_NOFILE` to that (within the hard limit) at start.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import threading

import dramatiq
import structlog

from core import queue, tracing
from core.logging import configure_logging
from core.services.runtime import LoopThread
from core.settings import Settings
from workers.actors import declare_actors, hand_offs, interactive_reserve
from workers.composition import WorkerComponents, compose
from workers.maintenance import BrokerHeartbeat, FleetSweeper

log = structlog.get_logger("jobgate.worker")

DEFAULT_GRACE_S = 30.0
DEFAULT_WEBHOOK_THREADS = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobgate-worker-process")
    parser.add_argument("--threads", type=int, default=None, help="consumer threads per job queue")
    parser.add_argument("--max-in-flight", type=int, default=None, help="jobs in flight at most")
    parser.add_argument("--webhook-threads", type=int, default=DEFAULT_WEBHOOK_THREADS)
    parser.add_argument("--queues", default="interactive,batch", help="comma-separated: interactive, batch")
    parser.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S)
    return parser.parse_args(argv)


def _queue_names(spec: str) -> list[str]:
    names = []
    for part in spec.split(","):
        part = part.strip()
        if part not in queue.RUN_ACTORS:
            raise SystemExit(f"--queues: unknown queue {part!r} (use interactive, batch)")
        names.append(queue.RUN_ACTORS[part].queue_name)
    return names


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (never past the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class _SharedBrokerWarning(logging.Filter):
    """Each `dramatiq.Worker` adds a middleware of its own to the broker it consumes from, and
    the workers here (one per queue) share one broker, so Dramatiq warned "adding a middleware
    of the same type twice" at every start. Each one only routes the actors declared after its
    worker started (none are), so it is harmless; the warning read like an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "middleware of the same type twice" not in record.getMessage()


def _dramatiq_workers(
    parts: WorkerComponents, args: argparse.Namespace, threads: int
) -> list[dramatiq.Worker]:
    parts.broker.logger.addFilter(_SharedBrokerWarning())
    poll_ms = parts.settings.worker_idle_poll_ms
    workers = [
        dramatiq.Worker(parts.broker, queues={name}, worker_threads=threads, worker_timeout=poll_ms)
        for name in _queue_names(args.queues)
    ]
    workers.append(
        dramatiq.Worker(
            parts.broker,
            queues={queue.DELIVER_WEBHOOK.queue_name},
            worker_threads=args.webhook_threads,
            worker_timeout=poll_ms,
        )
    )
    return workers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    tracing.configure(settings, "jobgate-worker")
    if not settings.redis_url:
        raise SystemExit("JOBGATE_REDIS_URL is not set (jobgate dev sets it for you)")
    threads = args.threads or settings.worker_threads
    max_in_flight = args.max_in_flight or settings.worker_max_in_flight
    fd_limit = raise_fd_limit(2 * (max_in_flight + interactive_reserve(max_in_flight)) + 100)
    parts = compose(
        settings, threads=threads, webhook_threads=args.webhook_threads, max_in_flight=max_in_flight
    )
    loop = LoopThread()
    loop.run(parts.jobs.runtime.start())
    declare_actors(
        parts.broker,
        hand_offs(parts.jobs.runtime, max_in_flight),
        parts.deliverer,
        time_limit_s=parts.longest_timeout_s * 3 + 30,
    )
    workers = _dramatiq_workers(parts, args, threads)
    heartbeat = BrokerHeartbeat(parts.broker)
    sweeper = FleetSweeper(
        parts.sessions, parts.clock, parts.broker, parts.broker.client, parts.keys, settings, parts.purger
    )

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    for worker in workers:
        worker.start()
    heartbeat.start()
    sweeper.start()
    log.info(
        "worker_started", pid=os.getpid(), threads=threads, max_in_flight=max_in_flight, fd_limit=fd_limit
    )
    print(f"worker ready pid={os.getpid()} threads={threads} max_in_flight={max_in_flight}", flush=True)
    stop.wait()
    log.info("worker_stopping", grace_s=args.grace_s)
    sweeper.stopping.set()
    for worker in workers:
        worker.stop(timeout=int(args.grace_s * 1000))
    # Only now: the jobs still in flight keep their leases (the runtime renews them) and the
    # broker heartbeat until they are written or the grace period ends.
    loop.run(parts.jobs.runtime.stop(grace_s=args.grace_s))
    heartbeat.stopping.set()
    loop.run(parts.jobs.aclose())
    loop.stop()
    parts.sender.close()
    parts.broker.close()
    parts.engine.dispose()
    log.info("worker_stopped")
    return 0
