"""The API process's own job runtime, for `POST /v1/chat/completions`: the call made here.

Measured before choosing (bench/README.md, sync_latency): handing a sync request to a worker
through the queue (insert, enqueue, wake a consumer, claim, call, group write, publish, wake
the waiting request, re-read the row) added 15-17 ms p50 to a call and served 0.14 of the
direct rate at 50 callers, against targets of 3 ms and 0.25. So an API process runs a sync
request's call itself, on its own event loop, through the same `JobRuntime` a worker runs
(`core.services.job_engine`): the job row is inserted already claimed (running, attempt 1,
leased) once the call's request has gone out (`PendingRecord`: the upstream's round trip hides
the insert's; the final write and a stream's first chunk wait for it), the runtime calls the
upstream, renews the lease
meanwhile and writes the result fenced by that claim in its group write, with the same
after-commit effects (job-done publish, webhook deliveries). If the process dies first, the
reaper hands the leased row to the workers. A retryable failure is requeued by that write and
finishes on a worker while the request waits for it as before.

So an API process holds provider credentials. At most `JOBGATE_SYNC_MAX_IN_FLIGHT` (256)
calls run here at once; further requests take the queue. Set it to 0 to keep provider
credentials on workers only: every sync request then takes the queue.
"""

from __future__ import annotations

from typing import Any

from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.exc import IntegrityError

from core import metrics
from core.config import GatewayConfig
from core.domain.relay import Relay
from core.redis.keys import Keys
from core.services.execute import Outcome, Verdict
from core.services.job_engine import JobEngine, build_job_engine
from core.services.runtime import PendingRecord
from core.services.submit import JobSpec, claimed_job
from core.settings import Settings
from core.store import jobs as store

# How long a stopping API process lets its calls in flight finish and be written.
STOP_GRACE_S = 10.0


class InlineCalls:
    def __init__(self, engine: JobEngine, *, max_in_flight: int, settings: Settings) -> None:
        self.engine = engine
        self.max_in_flight = max_in_flight
        self.settings = settings
        self.in_flight = 0

    @classmethod
    def build(
        cls, settings: Settings, config: GatewayConfig, keys: Keys, broker: RedisBroker
    ) -> InlineCalls | None:
        """None when `JOBGATE_SYNC_MAX_IN_FLIGHT` is 0."""
        if settings.sync_max_in_flight <= 0:
            return None

        engine = build_job_engine(
            settings, config, keys, max_in_flight=settings.sync_max_in_flight, broker=broker
        )
        return cls(engine, max_in_flight=settings.sync_max_in_flight, settings=settings)

    def has_room(self) -> bool:
        return self.in_flight < self.max_in_flight

    async def submit(
        self,
        spec: JobSpec,
        *,
        tenant_id: str,
        request_id: str | None,
        idempotency_key: str | None = None,
        body_hash: str | None = None,
    ) -> store.Claim | None:
        """Record the job, claimed by this process (on the runtime's own SQL connections: no
        pre-ping, a lost connection retried). None when a concurrent request with the same
        Idempotency-Key recorded its job first."""
        row, claim = self._claimed(spec, tenant_id, request_id, idempotency_key, body_hash)
        try:
            await self._insert(row, spec.priority)
        except IntegrityError:
            if idempotency_key is None:
                raise
            return None
        return claim

    def submit_started(
        self, spec: JobSpec, *, tenant_id: str, request_id: str | None, body_hash: str | None = None
    ) -> tuple[store.Claim, PendingRecord]:
        """Record the job claimed without waiting for it: the insert runs while the call goes
        out (`run(claim, inserted=...)` begins it then and waits for it before the final write,
        and a stream sends nothing before it). Not for an Idempotency-Key's job, whose conflict
        must be known before any call."""
        row, claim = self._claimed(spec, tenant_id, request_id, None, body_hash)
        return claim, PendingRecord(lambda: self._insert(row, spec.priority))

    def _claimed(
        self,
        spec: JobSpec,
        tenant_id: str,
        request_id: str | None,
        idempotency_key: str | None,
        body_hash: str | None,
    ) -> tuple[dict[str, Any], store.Claim]:
        return claimed_job(
            spec,
            tenant_id=tenant_id,
            now=self.engine.clock.utcnow(),
            max_attempts=self.settings.max_attempts,
            request_id=request_id,
            idempotency_key=idempotency_key,
            body_hash=body_hash,
        )

    async def _insert(self, row: dict[str, Any], priority: str) -> None:
        await self.engine.runtime.insert_claimed(row)
        metrics.JOBS_SUBMITTED.labels(priority=priority).inc()

    async def run(
        self, claim: store.Claim, *, relay: Relay | None = None, inserted: PendingRecord | None = None
    ) -> tuple[Outcome, Verdict | None]:
        """Run the claimed job here (streamed to `relay` if given); its outcome once the result
        is written. A caller that stops waiting leaves the run to finish and be written."""
        if relay is not None and inserted is not None:
            relay.hold_until(inserted.done)
        self.in_flight += 1
        try:
            return await self.engine.runtime.run_claimed(claim, relay=relay, inserted=inserted)
        finally:
            self.in_flight -= 1

    async def start(self) -> None:
        await self.engine.runtime.start()

    async def stop(self) -> None:
        await self.engine.runtime.stop(grace_s=STOP_GRACE_S)
        await self.engine.aclose()
