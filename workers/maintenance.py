"""Background threads of a worker process: the broker heartbeat and the sweeper (with retention).

The heartbeat keeps the broker's view of this process alive (the messages it has prefetched)
while its threads wait on full hand-offs; the job runtime renews its jobs' SQL leases itself.
The sweeper runs in every worker process but does its work only while holding a Redis lock,
so it runs once per fleet in effect, with nothing extra for the operator to deploy or forget.
After each sweep it gives the retention purge a turn, which takes a fleet lock of its own.
"""

from __future__ import annotations

import threading
import uuid

import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.orm import Session, sessionmaker

from core import queue
from core.redis.keys import Keys
from core.services.maintenance import sweep
from core.services.retention import RetentionPurger
from core.settings import Settings
from core.store.clock import SqlClock

log = structlog.get_logger("jobgate.maintenance")


class BrokerHeartbeat(threading.Thread):
    """Beats this process's broker heartbeat a few times per `broker.heartbeat_timeout`."""

    def __init__(self, broker: RedisBroker) -> None:
        super().__init__(name="broker-heartbeat", daemon=True)
        self.broker = broker
        self.interval_s = broker.heartbeat_timeout / 1000 / 4
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                queue.beat_heartbeat(self.broker)
            except redis.RedisError as exc:
                # Redis is away: nobody can take this worker for dead meanwhile either.
                log.warning("broker_heartbeat_failed", error=type(exc).__name__)


class FleetSweeper(threading.Thread):
    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: SqlClock,
        broker: RedisBroker,
        client: redis.Redis,
        keys: Keys,
        settings: Settings,
        purger: RetentionPurger | None = None,
    ) -> None:
        super().__init__(name="fleet-sweeper", daemon=True)
        self.purger = purger
        self.sessions, self.clock, self.broker, self.client = sessions, clock, broker, client
        self.keys = keys
        self.lock_key = keys.maintenance_lock("sweep")
        self.settings = settings
        self.token = uuid.uuid4().hex
        self.stopping = threading.Event()

    def _hold_lock(self) -> bool:
        """Take the fleet lock, or keep it if ours; it lapses if this process dies."""
        ttl_ms = int(self.settings.sweep_interval_s * 2000)
        if self.client.set(self.lock_key, self.token, nx=True, px=ttl_ms):
            return True
        if self.client.get(self.lock_key) == self.token.encode():
            self.client.pexpire(self.lock_key, ttl_ms)
            return True
        return False

    def run(self) -> None:
        while not self.stopping.wait(self.settings.sweep_interval_s):
            try:
                if self._hold_lock():
                    sweep(
                        self.sessions,
                        self.clock,
                        self.broker,
                        self.keys,
                        redispatch_after_s=self.settings.redispatch_after_s,
                        # Two intervals: the next sweep may run late or on another worker.
                        ahead_s=2 * self.settings.sweep_interval_s,
                    )
            except Exception:
                log.exception("sweep_failed")
            if self.purger is not None:
                try:
                    self.purger.run_turn()
                except Exception:
                    log.exception("retention_purge_failed")
