"""`GET /v1/providers`: each provider's health, breaker state and limiter headroom, fleet-wide.

Read from the same Redis state the workers write (breakers per target, limiter buckets,
pauses, moving latencies). The provider's `breaker` is its worst target's state; `targets`
details each one: recent outcomes, its moving average latency, and its share of the
provider's recent calls.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from api.deps import AppState, OperatorDep, StateDep
from core.ratelimit.limiter import RateLimiter, provider_bucket
from core.redis.breaker import CircuitBreaker
from core.redis.latency import LatencyBoard
from core.representation import rfc3339

router = APIRouter(prefix="/v1/providers", tags=["operators"])

_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}


async def provider_health(state: AppState) -> list[dict[str, Any]]:
    limiter = RateLimiter(state.redis, state.keys)
    breaker = CircuitBreaker(state.redis, state.keys)
    targets_by_provider: dict[str, list[str]] = {name: [] for name in state.config.providers}
    for route in state.config.models.values():
        for target in route.targets:
            if target.model not in targets_by_provider[target.provider]:
                targets_by_provider[target.provider].append(target.model)
    every_target = [f"{name}/{model}" for name, models in targets_by_provider.items() for model in models]
    averages = await LatencyBoard(state.redis, state.keys).averages_ms(every_target)
    latencies = dict(zip(every_target, averages, strict=True))
    data = []
    for name, cfg in state.config.providers.items():
        headroom = await limiter.headroom(provider_bucket(name, rpm=cfg.rpm, tpm=cfg.tpm))
        paused = await limiter.paused_until(name)
        targets: list[dict[str, Any]] = []
        for model in targets_by_provider[name]:
            stats = await breaker.stats(f"{name}/{model}")
            average = latencies[f"{name}/{model}"]
            targets.append(
                {
                    "model": model,
                    "breaker": stats.state,
                    "recent_successes": stats.recent_successes,
                    "recent_failures": stats.recent_failures,
                    "error_rate": stats.error_rate,
                    "latency_ms": round(average) if average is not None else None,
                }
            )
        # Each target's share of the provider's recent calls (the breaker's window).
        recent = sum(t["recent_successes"] + t["recent_failures"] for t in targets)
        for t in targets:
            calls = t["recent_successes"] + t["recent_failures"]
            t["traffic_share"] = round(calls / recent, 3) if recent else None
        worst = max((str(t["breaker"]) for t in targets), key=_SEVERITY.__getitem__, default="closed")
        data.append(
            {
                "provider": name,
                "kind": cfg.kind,
                "breaker": worst,
                "rpm": cfg.rpm,
                "tpm": cfg.tpm,
                "rpm_available": headroom.rpm_available,
                "tpm_available": headroom.tpm_available,
                "paused_until": rfc3339(datetime.fromtimestamp(paused, UTC)) if paused else None,
                "targets": targets,
            }
        )
    return data


@router.get("")
async def list_providers(state: StateDep, _operator: OperatorDep) -> dict[str, Any]:
    return {"object": "list", "data": await provider_health(state)}
