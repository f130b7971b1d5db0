"""The worker process's composition root: everything a worker needs, built once.

The job engine (`core.services.job_engine`: the job runtime with its own small SQL pool, the
fleet-state Redis pools and the providers' async SDK clients), a second SQL engine for the
webhook threads and the sweeper, the broker, and the webhook deliverer. A process holds
`JOB_SQL_CONNECTIONS + AUX_SQL_CONNECTIONS` (7) Postgres connections whatever its load.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from core import queue
from core.config import load_config
from core.redis.keys import Keys
from core.services.job_engine import JOB_SQL_CONNECTIONS, JobEngine, build_job_engine, longest_timeout_s
from core.services.retention import RetentionPurger
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.db import make_sync_engine, make_sync_sessions
from core.webhooks.delivery import WebhookDeliverer
from core.webhooks.fairness import AttemptSlots
from core.webhooks.sender import WebhookSender
from core.webhooks.ssrf import UrlPolicy
from workers.actors import interactive_reserve

log = structlog.get_logger("jobgate.worker")

AUX_SQL_CONNECTIONS = 4
__all__ = ["AUX_SQL_CONNECTIONS", "JOB_SQL_CONNECTIONS", "WorkerComponents", "compose"]


@dataclass
class WorkerComponents:
    settings: Settings
    keys: Keys
    engine: Engine
    sessions: sessionmaker[Session]
    clock: SqlClock
    broker: RedisBroker
    jobs: JobEngine
    deliverer: WebhookDeliverer
    sender: WebhookSender
    longest_timeout_s: float
    # The fleet's retention purge, run in turns by the sweeper thread (workers/maintenance.py).
    purger: RetentionPurger


def tenant_cap(per_tenant: int, webhook_threads: int) -> int:
    """The per-tenant cap on attempts in flight, below the webhook threads so that one tenant
    never holds them all, whatever the setting says."""
    cap = max(1, min(per_tenant, webhook_threads - 1))
    if cap != per_tenant:
        log.warning(
            "webhook_tenant_cap_lowered", setting=per_tenant, webhook_threads=webhook_threads, cap=cap
        )
    return cap


def compose(
    settings: Settings, *, threads: int, webhook_threads: int, max_in_flight: int
) -> WorkerComponents:
    assert settings.redis_url is not None
    keys = Keys(settings.redis_prefix)
    config = load_config(settings.config_path())
    aux_engine = make_sync_engine(settings, pool_size=AUX_SQL_CONNECTIONS)
    clock = SqlClock(aux_engine.dialect.name)
    broker = queue.build_broker(
        settings.redis_url,
        keys,
        max_connections=2 * threads + webhook_threads + 32,
        timeout_s=settings.redis_timeout_s,
        heartbeat_timeout_ms=queue.heartbeat_timeout_ms(settings.lease_s),
    )

    in_flight = max_in_flight + interactive_reserve(max_in_flight)
    jobs = build_job_engine(settings, config, keys, max_in_flight=in_flight, broker=broker)
    sessions = make_sync_sessions(aux_engine)
    sender = WebhookSender(
        UrlPolicy.from_settings(settings),
        timeout_s=settings.webhook_timeout_s,
        max_connections=webhook_threads + 8,
        dns_lookups_per_tenant=settings.webhook_dns_lookups_per_tenant,
    )
    deliverer = WebhookDeliverer(
        sessions=sessions,
        sender=sender,
        schedule_s=settings.webhook_retry_schedule_s,
        disable_after_s=settings.webhook_disable_after_s,
        attempt_timeout_s=settings.webhook_timeout_s,
        utcnow=clock.utcnow,
        attempt_slots=AttemptSlots(tenant_cap(settings.webhook_max_in_flight_per_tenant, webhook_threads)),
    )
    return WorkerComponents(
        settings=settings,
        keys=keys,
        engine=aux_engine,
        sessions=sessions,
        clock=clock,
        broker=broker,
        jobs=jobs,
        deliverer=deliverer,
        sender=sender,
        longest_timeout_s=longest_timeout_s(config),
        purger=RetentionPurger(
            sessions,
            clock,
            broker.client,
            keys,
            config,
            retention_days=settings.retention_days,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            interval_s=settings.retention_interval_s,
        ),
    )
