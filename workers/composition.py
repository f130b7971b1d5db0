"""The worker process's composition root: everything a worker needs, built once.

SQL engine (sync driver), the broker, a Redis pool for fleet state, provider clients, the
limiter/breaker/cache/single-flight, the job executor and the webhook deliverer, with pools
sized from the thread counts (DESIGN.md: size pools explicitly).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import queue
from core.config import load_config
from core.providers import Provider, build_providers
from core.redis.breaker import CircuitBreaker
from core.redis.cache import ResponseCache
from core.redis.keys import Keys
from core.redis.rate_limit import RateLimiter
from core.redis.single_flight import SingleFlight
from core.services.execute import ActiveClaims, ExecutionPolicy, JobExecutor
from core.services.upstream import UpstreamCaller
from core.services.webhook_delivery import WebhookDeliverer
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.db import make_sync_engine, make_sync_sessions
from core.webhooks.sender import WebhookSender
from core.webhooks.ssrf import UrlPolicy

log = structlog.get_logger("jobgate.worker")


@dataclass
class WorkerComponents:
    settings: Settings
    keys: Keys
    engine: Engine
    sessions: sessionmaker[Session]
    clock: SqlClock
    broker: RedisBroker
    state: redis.Redis
    providers: dict[str, Provider]
    executor: JobExecutor
    deliverer: WebhookDeliverer
    sender: WebhookSender
    active: ActiveClaims
    longest_timeout_s: float


def compose(settings: Settings, *, threads: int, webhook_threads: int) -> WorkerComponents:
    assert settings.redis_url is not None
    keys = Keys(settings.redis_prefix)
    config = load_config(settings.config_path())
    engine = make_sync_engine(settings)
    sessions = make_sync_sessions(engine)
    clock = SqlClock(engine.dialect.name)
    all_threads = threads + webhook_threads
    broker = queue.build_broker(
        settings.redis_url,
        keys,
        max_connections=all_threads + 32,
        timeout_s=settings.redis_timeout_s,
        heartbeat_timeout_ms=queue.heartbeat_timeout_ms(settings.lease_s),
    )
    # Fleet state (limiter, breaker, cache, single-flight) has its own pool: a single-flight
    # follower holds a connection while it waits, so one per thread plus a margin.
    state = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=all_threads + 32,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
    )
    providers = build_providers(config, max_connections=threads + 16)
    longest_timeout_s = max((p.timeout_s for p in config.providers.values()), default=60)

    def on_final(job_id: str, deliveries: list[str]) -> None:
        try:
            state.publish(keys.job_done_channel, job_id)
            if deliveries:
                queue.dispatch_deliveries(broker, deliveries)
        except redis.RedisError:
            # Waiters re-read SQL on their own; the sweeper dispatches pending deliveries.
            log.warning("job_final_signal_failed", job_id=job_id)

    active = ActiveClaims()
    executor = JobExecutor(
        sessions=sessions,
        clock=clock,
        config=config,
        caller=UpstreamCaller(
            config=config,
            providers=providers,
            limiter=RateLimiter(state, keys),
            breaker=CircuitBreaker(state, keys),
            utcnow=clock.utcnow,
        ),
        cache=ResponseCache(state, keys),
        single_flight=SingleFlight(state, keys, lock_ttl_s=longest_timeout_s + 30),
        policy=ExecutionPolicy(lease_s=settings.lease_s),
        on_final=on_final,
        active=active,
    )
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
        engine=engine,
        sessions=sessions,
        clock=clock,
        broker=broker,
        state=state,
        providers=providers,
        executor=executor,
        deliverer=deliverer,
        sender=sender,
        active=active,
        longest_timeout_s=longest_timeout_s,
    )
