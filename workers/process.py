"""One worker process: its composition root, and its life from start to graceful stop.

Builds the SQL engine, Redis pools, providers, executor and broker once, declares the
actors, and runs Dramatiq's worker with `--threads` threads. On SIGTERM/SIGINT it stops
taking messages, lets running jobs finish for up to the grace period, and Dramatiq returns
prefetched messages to the queue. `jobgate worker` starts and supervises these processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

import dramatiq
import redis
import structlog

from core import queue
from core.config import load_config
from core.logging import configure_logging
from core.providers import build_providers, close_providers
from core.redis.breaker import CircuitBreaker
from core.redis.cache import ResponseCache
from core.redis.keys import Keys
from core.redis.rate_limit import RateLimiter
from core.redis.single_flight import SingleFlight
from core.services.execute import ActiveClaims, ExecutionPolicy, JobExecutor
from core.services.upstream import UpstreamCaller
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.db import make_sync_engine, make_sync_sessions
from workers.actors import declare_actors
from workers.maintenance import FleetSweeper, LeaseKeeper

log = structlog.get_logger("jobgate.worker")

DEFAULT_GRACE_S = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="jobgate-worker-process")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (concurrent jobs)")
    parser.add_argument(
        "--queues",
        default="interactive,batch",
        help="comma-separated: interactive, batch (default both)",
    )
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
    keys = Keys(settings.redis_prefix)
    config = load_config(settings.config_path())

    engine = make_sync_engine(settings)
    sessions = make_sync_sessions(engine)
    clock = SqlClock(engine.dialect.name)
    # Threads + margin: every thread may hold one connection at once (DESIGN.md, pools).
    broker = queue.build_broker(
        settings.redis_url, keys, max_connections=threads + 32, timeout_s=settings.redis_timeout_s
    )
    # Fleet state (limiter, breaker, cache, single-flight) has its own pool: a single-flight
    # follower holds a connection while it waits, so one per thread plus a margin.
    state = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=threads + 32,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
    )
    providers = build_providers(config, max_connections=threads + 16)
    active = ActiveClaims()

    def publish_final(job_id: str) -> None:
        try:
            state.publish(keys.job_done_channel, job_id)
        except redis.RedisError:
            # Waiters re-read SQL on their own timeout; a lost notification only delays them.
            log.warning("job_done_publish_failed", job_id=job_id)

    longest_timeout_s = max((p.timeout_s for p in config.providers.values()), default=60)
    caller = UpstreamCaller(
        config=config,
        providers=providers,
        limiter=RateLimiter(state, keys),
        breaker=CircuitBreaker(state, keys),
        utcnow=clock.utcnow,
    )
    executor = JobExecutor(
        sessions=sessions,
        clock=clock,
        config=config,
        caller=caller,
        cache=ResponseCache(state, keys),
        single_flight=SingleFlight(state, keys, lock_ttl_s=longest_timeout_s + 30),
        policy=ExecutionPolicy(lease_s=settings.lease_s),
        on_final=publish_final,
        active=active,
    )
    declare_actors(broker, executor, time_limit_s=longest_timeout_s * 3 + 30)

    worker = dramatiq.Worker(
        broker,
        queues=_queue_names(args.queues),
        worker_threads=threads,
        worker_timeout=settings.worker_idle_poll_ms,
    )
    keeper = LeaseKeeper(sessions, clock, active, lease_s=settings.lease_s)
    sweeper = FleetSweeper(sessions, clock, broker, state, keys, settings)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    worker.start()
    keeper.start()
    sweeper.start()
    log.info("worker_started", pid=os.getpid(), threads=threads, queues=args.queues)
    print(f"worker ready pid={os.getpid()} threads={threads}", flush=True)
    stop.wait()
    log.info("worker_stopping", grace_s=args.grace_s)
    keeper.stopping.set()
    sweeper.stopping.set()
    worker.stop(timeout=int(args.grace_s * 1000))
    close_providers(providers)
    broker.close()
    engine.dispose()
    log.info("worker_stopped")
    return 0
