"""`GET /metrics`: Prometheus text for this machine's processes plus fleet-wide gauges.

Counters and histograms come from prometheus-client's multiprocess files (every API and
worker process on this machine writes its own; see `core/metrics.py`). Fleet-wide gauges are
computed here, at scrape time, from Redis and SQL: queue depth per queue, age of the oldest
queued job, and each provider's breaker state (0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from api.deps import AppState, StateDep, authenticate, get_operator
from api.routes.providers import provider_health
from core import queue
from core.store import jobs as store
from core.store.models import Job, as_utc

router = APIRouter(tags=["operators"])

BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class _FleetGauges(Collector):
    def __init__(self, depths: dict[str, int], oldest_age_s: float, breakers: dict[str, str]) -> None:
        self.depths, self.oldest_age_s, self.breakers = depths, oldest_age_s, breakers

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("jobgate_queue_depth", "Messages waiting in each queue", labels=["queue"])
        for name, value in self.depths.items():
            depth.add_metric([name], value)
        yield depth
        yield GaugeMetricFamily(
            "jobgate_oldest_queued_age_seconds", "Age of the oldest queued job", value=self.oldest_age_s
        )
        breaker = GaugeMetricFamily(
            "jobgate_breaker_state",
            "Worst breaker state per provider (0 closed, 1 half-open, 2 open)",
            labels=["provider"],
        )
        for provider, state in self.breakers.items():
            breaker.add_metric([provider], BREAKER_VALUES[state])
        yield breaker


async def _fleet_gauges(state: AppState) -> _FleetGauges:
    depths = await to_thread.run_sync(lambda: queue.queue_depths(state.broker))
    async with state.sessions() as session:
        oldest = (
            await session.execute(select(func.min(Job.created_at)).where(Job.status == store.QUEUED))
        ).scalar_one_or_none()
    oldest_at = as_utc(oldest)
    age_s = max((state.clock.utcnow() - oldest_at).total_seconds(), 0.0) if oldest_at else 0.0
    health = await provider_health(state)
    return _FleetGauges(depths, age_s, {p["provider"]: p["breaker"] for p in health})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, state: StateDep) -> Response:
    if state.settings.metrics_auth == "operator":
        await get_operator(await authenticate(request))
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    fleet = CollectorRegistry()
    fleet.register(await _fleet_gauges(state))
    return Response(body + generate_latest(fleet), media_type=CONTENT_TYPE_LATEST)
