"""The rate limit on hand-made delivery retries (`POST /v1/webhook-deliveries/{id}/retry`).

Each retry makes a worker send a request, on demand, to a URL the tenant chose: unlimited, a
tenant could aim jobgate's webhook threads at any receiver as fast as it can call the route.
A tenant gets `JOBGATE_WEBHOOK_MANUAL_RETRIES_PER_MINUTE` retries per fixed window, counted
fleet-wide in Redis, so every API process shares one count and one clock (Redis's TTL).

One MULTI/EXEC round trip creates the window's counter with its TTL if absent, increments it
and reads the TTL left. It is atomic, so a counter is never left without its expiry (as an
INCR whose EXPIRE was lost would be, refusing the tenant for good), and INCR keeps the TTL
the window began with, so refused calls do not extend it. A fixed window lets a tenant make
up to twice the limit across a window's edge, which is within what an abuse limit needs.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from core.errors import TooManyRequests
from core.redis.keys import WEBHOOK_MANUAL_RETRY_WINDOW_S, Keys


async def count_manual_retry(client: aioredis.Redis, keys: Keys, tenant_id: str, *, per_window: int) -> None:
    """Counts one hand-made retry of `tenant_id`; past `per_window` in the current window,
    `TooManyRequests` with the seconds until the window ends as its Retry-After."""
    key = keys.webhook_manual_retries(tenant_id)
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=WEBHOOK_MANUAL_RETRY_WINDOW_S, nx=True)
        pipe.incr(key)
        pipe.pttl(key)
        _, count, ttl_ms = await pipe.execute()
    if count > per_window:
        retry_after_s = max(1, math.ceil(ttl_ms / 1000))
        raise TooManyRequests(
            f"At most {per_window} webhook delivery retries per {WEBHOOK_MANUAL_RETRY_WINDOW_S} s;"
            f" try again in {retry_after_s} s.",
            retry_after_s=retry_after_s,
        )
