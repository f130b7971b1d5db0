"""One worker process: from start to graceful stop.

Runs two Dramatiq workers over one broker: one with `--threads` threads for the job queues,
and one with `--webhook-threads` threads for webhook deliveries, so a receiver that hangs
can never take a thread from a job. On SIGTERM/SIGINT it stops taking messages, lets running
jobs finish for up to the grace period, and Dramatiq returns prefetched messages to Redis.
`jobgate worker` starts and supervises these processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

import dramatiq
import structlog

from core import queue
from core.logging import configure_logging
from core.providers import close_providers
from core.settings import Settings
from workers.actors import declare_actors
from workers.composition import compose
from workers.maintenance import BrokerHeartbeat, FleetSweeper, LeaseKeeper

log = structlog.get_logger("jobgate.worker")

DEFAULT_GRACE_S = 30.0
DEFAULT_WEBHOOK_THREADS = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobgate-worker-process")
    parser.add_argument("--threads", type=int, default=None, help="job threads (concurrent jobs)")
    parser.add_argument("--webhook-threads", type=int, default=DEFAULT_WEBHOOK_THREADS)
    parser.add_argument("--queues", default="interactive,batch", help="comma-separated: interactive, batch")
    parser.add_argument("--grace-s", type=float, default=DEFAULT_GRACE_S)
    return parser.parse_args(argv)


def _queue_names(spec: str) -> set[str]:
    names = set()
    for part in spec.split(","):
        part = part.strip()
        if part not in queue.RUN_ACTORS:
            raise SystemExit(f"--queues: unknown queue {part!r} (use interactive, batch)")
        names.add(queue.RUN_ACTORS[part].queue_name)
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    if not settings.redis_url:
        raise SystemExit("JOBGATE_REDIS_URL is not set (jobgate dev sets it for you)")
    threads = args.threads or settings.worker_threads
    parts = compose(settings, threads=threads, webhook_threads=args.webhook_threads)
    declare_actors(
        parts.broker, parts.executor, parts.deliverer, time_limit_s=parts.longest_timeout_s * 3 + 30
    )

    job_worker = dramatiq.Worker(
        parts.broker,
        queues=_queue_names(args.queues),
        worker_threads=threads,
        worker_timeout=settings.worker_idle_poll_ms,
    )
    webhook_worker = dramatiq.Worker(
        parts.broker,
        queues={queue.DELIVER_WEBHOOK.queue_name},
        worker_threads=args.webhook_threads,
        worker_timeout=settings.worker_idle_poll_ms,
    )
    keeper = LeaseKeeper(parts.sessions, parts.clock, parts.active, lease_s=settings.lease_s)
    heartbeat = BrokerHeartbeat(parts.broker)
    sweeper = FleetSweeper(parts.sessions, parts.clock, parts.broker, parts.state, parts.keys, settings)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    job_worker.start()
    webhook_worker.start()
    keeper.start()
    heartbeat.start()
    sweeper.start()
    log.info("worker_started", pid=os.getpid(), threads=threads, queues=args.queues)
    print(f"worker ready pid={os.getpid()} threads={threads}", flush=True)
    stop.wait()
    log.info("worker_stopping", grace_s=args.grace_s)
    sweeper.stopping.set()
    job_worker.stop(timeout=int(args.grace_s * 1000))
    webhook_worker.stop(timeout=int(args.grace_s * 1000))
    # Only now: the jobs that ran on during the grace period kept their leases and heartbeat.
    keeper.stopping.set()
    heartbeat.stopping.set()
    close_providers(parts.providers)
    parts.sender.close()
    parts.broker.close()
    parts.engine.dispose()
    log.info("worker_stopped")
    return 0
