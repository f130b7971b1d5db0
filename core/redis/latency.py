"""Each target's latency as the whole fleet sees it: an exponential moving average in Redis.

Every call's latency (failures included: a target that times out is slow) is folded in after
the call, riding in its job's after-commit pipeline, by `latency.lua`. The `lowest_latency`
routing strategy reads the averages of an alias's targets in one round trip, and
`GET /v1/providers` shows them. `ALPHA` = 0.2: a target that slows tenfold passes a steady one
after a handful of its slow calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from core.redis.keys import Keys
from core.redis.scripts import FleetScript, ScriptCall

SCRIPT = FleetScript(Path(__file__).with_name("latency.lua").read_text(encoding="utf-8"))
ALPHA = 0.2


class LatencyBoard:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.key = keys.latency()

    def record(self, target: str, latency_ms: int) -> ScriptCall:
        """The update folding one call's latency into `target`'s average (run it later, batched)."""
        return SCRIPT.call([self.key], [target, max(latency_ms, 0), ALPHA])

    async def averages_ms(self, targets: Sequence[str]) -> list[float | None]:
        """Each target's moving average, None for a target never called."""
        if not targets:
            return []
        values = await self.client.hmget(self.key, list(targets))
        return [float(v) if v is not None else None for v in values]
