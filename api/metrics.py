"""`GET /metrics`: Prometheus text for this machine's processes plus fleet-wide gauges.

Counters and histograms come from prometheus-client's multiprocess files (every API and
worker process on this machine writes its own; see `core/metrics.py`). Fleet-wide gauges are
computed here, at scrape time, from Redis and SQL: queue depth per queue, age of the oldest
queued job, each provider's breaker state (0 closed, 1 half-open, 2 open), and the limiter's
headroom of each provider's configured `rpm` / `tpm` beside that limit.
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
    def __init__(self, depths: dict[str, int], oldest_age_s: float, health: list[dict[str, Any]]) -> None:
        self.depths, self.oldest_age_s, self.health = depths, oldest_age_s, health

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
        headroom = GaugeMetricFamily(
            "jobgate_limiter_headroom",
            "Requests (rpm) or tokens (tpm) a provider's limiter would grant now",
            labels=["provider", "budget"],
        )
        limit = GaugeMetricFamily(
            "jobgate_limiter_limit", "A provider's configured limit per minute", labels=["provider", "budget"]
        )
        for provider in self.health:
            breaker.add_metric([provider["provider"]], BREAKER_VALUES[provider["breaker"]])
            for budget in ("rpm", "tpm"):
                if provider[budget] is not None and provider[f"{budget}_available"] is not None:
                    headroom.add_metric([provider["provider"], budget], provider[f"{budget}_available"])
                    limit.add_metric([provider["provider"], budget], provider[budget])
        yield breaker
        yield headroom
        yield limit


async def _fleet_gauges(state: AppState) -> _FleetGauges:
    depths = await to_thread.run_sync(lambda: queue.queue_depths(state.broker))
    async with state.sessions() as session:
        oldest = (
            await session.execute(select(func.min(Job.created_at)).where(Job.status == store.QUEUED))
        ).scalar_one_or_none()
    oldest_at = as_utc(oldest)
    age_s = max((state.clock.utcnow() - oldest_at).total_seconds(), 0.0) if oldest_at else 0.0
    return _FleetGauges(depths, age_s, await provider_health(state))


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
