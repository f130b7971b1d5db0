"""The order in which a job tries its model's targets: the alias's `strategy`.

Every strategy still falls back: the targets after the first are tried in turn when it fails,
its breaker is open or its budget is booked (core/services/execute.py). What a strategy
decides is the order, and each choice carries its reason, recorded on the job's attempts:

- `fallback` (the default): the listed order. No Redis read: the common case costs nothing.
- `weighted`: the first target drawn by the targets' `weight`, the rest in listed order.
- `least_busy`: most limiter headroom right now, fleet-wide (the share of each bucket's
  per-minute budget left, the smallest over a target's buckets).
- `lowest_latency`: the lowest fleet-shared moving average (`core/redis/latency.py`); a target
  never called goes first, so it gets measured, and `EXPLORE` of the calls try another target
  first, so one that recovered is seen again.
- `lowest_cost`: the lowest price times the request's token estimate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.config import GatewayConfig, Target
from core.domain.chat import ChatRequest
from core.pricing import cost_usd
from core.ratelimit.estimate import DEFAULT_OUTPUT_TOKENS, estimate_prompt_tokens
from core.ratelimit.limiter import RateLimiter
from core.redis.latency import LatencyBoard
from core.services.upstream import target_buckets, target_name

EXPLORE = 0.05


@dataclass(frozen=True)
class Choice:
    target: Target
    reason: str


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        limiter: RateLimiter,
        latencies: LatencyBoard,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.latencies = latencies
        self.rng = rng

    async def route(self, model: str, request: ChatRequest) -> list[Choice]:
        targets = self.config.targets_for(model) or []
        alias = self.config.models.get(model)
        strategy = alias.strategy if alias is not None else "fallback"
        if len(targets) < 2 or strategy == "fallback":
            return _in_order(targets, [], "fallback")
        if strategy == "weighted":
            return self._weighted(targets)
        if strategy == "lowest_cost":
            costs = [self._cost_estimate(t, request) for t in targets]
            return self._ranked(targets, costs, strategy, lambda c: f"${c:.6f} estimated")
        if strategy == "least_busy":
            free = await asyncio.gather(*(self._headroom(t) for t in targets))
            # Shares of budget within 5 points of each other are a tie.
            busy = [round((1.0 - f) / 0.05) * 0.05 for f in free]
            return self._ranked(targets, busy, strategy, lambda b: f"{1.0 - b:.0%} of its budget free")
        averages = await self.latencies.averages_ms([target_name(t) for t in targets])
        latency = [a if a is not None else -1.0 for a in averages]  # unmeasured first
        choices = self._ranked(
            targets, latency, strategy, lambda a: "not measured yet" if a < 0 else f"{a:.0f} ms"
        )
        if self.rng() < EXPLORE:
            pick = 1 + int(self.rng() * (len(choices) - 1))
            explored = Choice(choices[pick].target, "lowest_latency: exploring")
            return [explored, *(c for i, c in enumerate(choices) if i != pick)]
        return choices

    def _ranked(
        self,
        targets: Sequence[Target],
        scores: Sequence[float],
        strategy: str,
        describe: Callable[[float], str],
    ) -> list[Choice]:
        """Lowest score first, ties broken at random (jobs deciding at one moment read the same
        figures, and would otherwise all pick the same target); the first says why, the rest
        are fallbacks."""
        order = sorted(range(len(targets)), key=lambda i: (scores[i], self.rng()))
        first = order[0]
        return [Choice(targets[first], f"{strategy}: {describe(scores[first])}")] + [
            Choice(targets[i], f"fallback {n + 2}") for n, i in enumerate(order[1:])
        ]

    def _weighted(self, targets: Sequence[Target]) -> list[Choice]:
        total = sum(t.weight for t in targets)
        point, first = self.rng() * total, len(targets) - 1
        for i, target in enumerate(targets):
            point -= target.weight
            if point < 0:
                first = i
                break
        chosen = targets[first]
        rest = [t for i, t in enumerate(targets) if i != first]
        return _in_order([chosen], rest, f"weighted: {chosen.weight:g} of {total:g}")

    def _cost_estimate(self, target: Target, request: ChatRequest) -> float:
        output = request.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        return float(
            cost_usd(self.config, target.provider, target.model, estimate_prompt_tokens(request), output)
        )

    async def _headroom(self, target: Target) -> float:
        """The smallest share of a per-minute budget left over the target's buckets (1: none limited)."""
        free = 1.0
        for bucket in target_buckets(target, self.config.providers[target.provider]):
            room = await self.limiter.headroom(bucket)
            for available, limit in ((room.rpm_available, bucket.rpm), (room.tpm_available, bucket.tpm)):
                if available is not None and limit:
                    free = min(free, available / limit)
        return free


def _in_order(first: Sequence[Target], rest: Sequence[Target], reason: str) -> list[Choice]:
    choices = [Choice(t, reason if i == 0 else f"fallback {i + 1}") for i, t in enumerate(first)]
    return choices + [Choice(t, f"fallback {len(choices) + i + 1}") for i, t in enumerate(rest)]
