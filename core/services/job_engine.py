"""Building a job runtime and what it runs on: the one assembly a worker process and an API
process (its sync calls, `api/inline_calls.py`) both use.

A `JobEngine` holds a `JobRuntime` with its own small sync SQL pool (`JOB_SQL_CONNECTIONS`, no
pre-ping: the runtime retries a claim or write that finds its connection gone), an asyncio
Redis pool for fleet state (limiter, breaker, cache, single-flight) and another for
single-flight followers, and the providers' async SDK clients sized to the in-flight bound.
Everything in it is used on one event loop: the one `JobRuntime.start` runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.engine import Engine

from core.config import GatewayConfig
from core.providers import Provider, build_providers, close_providers
from core.ratelimit.budget import SpendLedger
from core.ratelimit.limiter import RateLimiter
from core.redis.breaker import CircuitBreaker
from core.redis.cache import ResponseCache
from core.redis.keys import Keys
from core.redis.latency import LatencyBoard
from core.redis.single_flight import SingleFlight
from core.services.execute import JobRunner
from core.services.lifecycle import Effects, apply_effects
from core.services.routing import Router
from core.services.runtime import SQL_THREADS, JobRuntime
from core.services.upstream import UpstreamCaller
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.db import make_sync_engine, make_sync_sessions

JOB_SQL_CONNECTIONS = SQL_THREADS

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


def longest_timeout_s(config: GatewayConfig) -> float:
    """The longest provider timeout: how long one call can last."""
    return max((p.timeout_s for p in config.providers.values()), default=60)


def build_runner(
    config: GatewayConfig,
    state: aioredis.Redis,
    keys: Keys,
    providers: dict[str, Provider],
    clock: SqlClock,
    *,
    waits: aioredis.Redis | None = None,
) -> JobRunner:
    limiter = RateLimiter(state, keys)
    latencies = LatencyBoard(state, keys)
    return JobRunner(
        config=config,
        caller=UpstreamCaller(
            config=config,
            providers=providers,
            limiter=limiter,
            breaker=CircuitBreaker(state, keys),
            utcnow=clock.utcnow,
        ),
        cache=ResponseCache(state, keys),
        single_flight=SingleFlight(state, keys, lock_ttl_s=longest_timeout_s(config) + 30, wait_client=waits),
        ledger=SpendLedger(state, keys),
        router=Router(config, limiter, latencies),
        latencies=latencies,
        utcnow=clock.utcnow,
    )


@dataclass
class JobEngine:
    runtime: JobRuntime
    engine: Engine
    clock: SqlClock
    state: aioredis.Redis
    waits: aioredis.Redis
    providers: dict[str, Provider]

    async def aclose(self) -> None:
        """On the runtime's loop, after `runtime.stop`: the SDK clients and Redis pools."""
        await close_providers(self.providers)
        await self.state.aclose()
        await self.waits.aclose()
        self.engine.dispose()


def build_job_engine(
    settings: Settings,
    config: GatewayConfig,
    keys: Keys,
    *,
    max_in_flight: int,
    broker: RedisBroker,
) -> JobEngine:
    """The runtime applies its transitions' after-commit effects through `broker`."""

    def after_commit(effects: Effects) -> None:
        apply_effects(effects, broker, keys)

    job_engine = make_sync_engine(settings, pool_size=JOB_SQL_CONNECTIONS, pre_ping=False)
    clock = SqlClock(job_engine.dialect.name)
    state = fleet_state_client(settings, max_connections=FLEET_STATE_CONNECTIONS, blocking=True)
    # A single-flight follower holds a connection while it waits: up to one per job in flight.
    waits = fleet_state_client(settings, max_connections=max_in_flight + 16, blocking=False)
    providers = build_providers(config, max_connections=max_in_flight + 16)
    runtime = JobRuntime(
        runner=build_runner(config, state, keys, providers, clock, waits=waits),
        fleet_state=state,
        sessions=make_sync_sessions(job_engine),
        clock=clock,
        lease_s=settings.lease_s,
        apply_effects=after_commit,
    )
    return JobEngine(runtime, job_engine, clock, state, waits, providers)
