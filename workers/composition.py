"""The worker process's composition root: everything a worker needs, built once.

Two SQL engines with fixed, small pools (the job runtime's SQL threads; the webhook threads
and the sweeper), the broker, an asyncio Redis pool for fleet state (limiter, breaker, cache,
single-flight) used only on the runtime's event loop, the providers' async SDK clients, the
job runtime and the webhook deliverer. A process holds `JOB_SQL_CONNECTIONS +
AUX_SQL_CONNECTIONS` (7) Postgres connections whatever its load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import queue
from core.config import GatewayConfig, load_config
from core.providers import Provider, build_providers
from core.redis.breaker import CircuitBreaker
from core.redis.cache import ResponseCache
from core.redis.keys import Keys
from core.redis.rate_limit import RateLimiter
from core.redis.single_flight import SingleFlight
from core.services.execute import JobRunner
from core.services.lifecycle import Effects, apply_effects
from core.services.runtime import SQL_THREADS, JobRuntime
from core.services.upstream import UpstreamCaller
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.db import make_sync_engine, make_sync_sessions
from core.webhooks.delivery import WebhookDeliverer
from core.webhooks.sender import WebhookSender
from core.webhooks.ssrf import UrlPolicy

log = structlog.get_logger("jobgate.worker")

JOB_SQL_CONNECTIONS = SQL_THREADS
AUX_SQL_CONNECTIONS = 4


@dataclass
class WorkerComponents:
    settings: Settings
    keys: Keys
    engines: list[Engine]
    sessions: sessionmaker[Session]
    clock: SqlClock
    broker: RedisBroker
    state: aioredis.Redis
    waits: aioredis.Redis
    providers: dict[str, Provider]
    runtime: JobRuntime
    deliverer: WebhookDeliverer
    sender: WebhookSender
    longest_timeout_s: float


# The event loop's short commands share this many connections: a command holds one for a
# round trip, so a thousand jobs in flight need a few dozen, not one each (opening one costs
# round trips of its own, which a burst of jobs starting together paid a connection each).
FLEET_STATE_CONNECTIONS = 128
# How long a command may wait for one of them before it fails (it fails the job's run; the
# reaper hands the job on): far beyond any real wait, which is milliseconds.
FLEET_STATE_WAIT_S = 30.0


def fleet_state_client(settings: Settings, *, max_connections: int, blocking: bool) -> aioredis.Redis:
    """An asyncio Redis pool for the event loop. `blocking`: a task waits for a free
    connection; else connections are opened as needed up to `max_connections`."""
    assert settings.redis_url is not None
    timeout = settings.redis_timeout_s
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No CLIENT SETINFO on connect: two more commands per new connection, for a label.
        "driver_info": None,
    }
    if blocking:
        pool: aioredis.ConnectionPool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, timeout=FLEET_STATE_WAIT_S, **options
        )
    else:
        pool = aioredis.ConnectionPool.from_url(settings.redis_url, **options)
    return aioredis.Redis(connection_pool=pool)


def build_runner(
    config: GatewayConfig,
    state: aioredis.Redis,
    keys: Keys,
    providers: dict[str, Provider],
    clock: SqlClock,
    *,
    waits: aioredis.Redis | None = None,
) -> JobRunner:
    longest_timeout_s = max((p.timeout_s for p in config.providers.values()), default=60)
    return JobRunner(
        config=config,
        caller=UpstreamCaller(
            config=config,
            providers=providers,
            limiter=RateLimiter(state, keys),
            breaker=CircuitBreaker(state, keys),
            utcnow=clock.utcnow,
        ),
        cache=ResponseCache(state, keys),
        single_flight=SingleFlight(state, keys, lock_ttl_s=longest_timeout_s + 30, wait_client=waits),
        utcnow=clock.utcnow,
    )


def compose(
    settings: Settings, *, threads: int, webhook_threads: int, max_in_flight: int
) -> WorkerComponents:
    assert settings.redis_url is not None
    keys = Keys(settings.redis_prefix)
    config = load_config(settings.config_path())
    job_engine = make_sync_engine(settings, pool_size=JOB_SQL_CONNECTIONS, pre_ping=False)
    aux_engine = make_sync_engine(settings, pool_size=AUX_SQL_CONNECTIONS)
    clock = SqlClock(job_engine.dialect.name)
    broker = queue.build_broker(
        settings.redis_url,
        keys,
        max_connections=2 * threads + webhook_threads + 32,
        timeout_s=settings.redis_timeout_s,
        heartbeat_timeout_ms=queue.heartbeat_timeout_ms(settings.lease_s),
    )
    state = fleet_state_client(settings, max_connections=FLEET_STATE_CONNECTIONS, blocking=True)
    # A single-flight follower holds a connection while it waits: up to one per job in flight.
    waits = fleet_state_client(settings, max_connections=max_in_flight + 16, blocking=False)
    providers = build_providers(config, max_connections=max_in_flight + 16)

    def after_commit(effects: Effects) -> None:
        apply_effects(effects, broker, keys)

    runtime = JobRuntime(
        runner=build_runner(config, state, keys, providers, clock, waits=waits),
        fleet_state=state,
        sessions=make_sync_sessions(job_engine),
        clock=clock,
        lease_s=settings.lease_s,
        apply_effects=after_commit,
    )
    sessions = make_sync_sessions(aux_engine)
    sender = WebhookSender(
        UrlPolicy.from_settings(settings),
        timeout_s=settings.webhook_timeout_s,
        max_connections=webhook_threads + 8,
    )
    deliverer = WebhookDeliverer(
        sessions=sessions,
        sender=sender,
        schedule_s=settings.webhook_retry_schedule_s,
        disable_after_s=settings.webhook_disable_after_s,
        attempt_timeout_s=settings.webhook_timeout_s,
        utcnow=clock.utcnow,
    )
    return WorkerComponents(
        settings=settings,
        keys=keys,
        engines=[job_engine, aux_engine],
        sessions=sessions,
        clock=clock,
        broker=broker,
        state=state,
        waits=waits,
        providers=providers,
        runtime=runtime,
        deliverer=deliverer,
        sender=sender,
        longest_timeout_s=max((p.timeout_s for p in config.providers.values()), default=60),
    )
