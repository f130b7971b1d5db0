"""Slowing down key guessing: failed key checks counted per client address, fleet-wide.

Every unknown key tried from an address counts in a fixed window of
`JOBGATE_AUTH_FAILURE_WINDOW_S` (60 s) kept in Redis, so every API process shares one count and
one clock (the key's TTL). Once an address has `JOBGATE_AUTH_FAILURES_PER_ADDRESS` (20)
failures in its window, its requests with a key this process has not checked lately are
answered 429 until the window ends, before the key is looked up: a guesser gets that many
tries a window, and costs no SQL while refused. A key the process checked in the last few
seconds (its key cache) is still served: the check costs a round trip only where a lookup
would, never on the hot path of a known key.

IPv6 addresses count by their /64, which one client usually holds whole. Counting is one
MULTI/EXEC round trip (create the counter with its TTL if absent, then INCR, which keeps
the TTL), so a counter is never left without its expiry. A Redis that does not answer lets
requests through (logged): this limit must not lock every client out while Redis is down.
"""

from __future__ import annotations

import ipaddress
import math

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from core.errors import TooManyRequests
from core.redis.keys import Keys

log = structlog.get_logger("jobgate.auth")

IPV6_GROUP_PREFIX = 64


def client_group(address: str | None) -> str:
    """What failures are counted by: the IPv4 address, the IPv6 address's /64, or the text
    as given (a Unix socket path, `unknown`)."""
    if not address:
        return "unknown"
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_GROUP_PREFIX}", strict=False))
    return str(parsed)


class AuthFailureLimit:
    def __init__(self, client: aioredis.Redis, keys: Keys, *, per_window: int, window_s: int) -> None:
        self.client = client
        self.keys = keys
        self.per_window = per_window
        self.window_s = window_s

    async def refuse_if_blocked(self, address: str | None) -> None:
        """`TooManyRequests` (with the seconds left in the window) when `address` has used up
        its failures."""
        key = self.keys.auth_failures(client_group(address))
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.pttl(key)
                count, ttl_ms = await pipe.execute()
        except RedisError as exc:
            log.warning("auth_failure_limit_unavailable", error=type(exc).__name__)
            return
        if count is None or int(count) < self.per_window or ttl_ms <= 0:
            return
        retry_after_s = max(1, math.ceil(ttl_ms / 1000))
        raise TooManyRequests(
            f"Too many requests with an incorrect API key from this address ({self.per_window} in"
            f" {self.window_s} s); try again in {retry_after_s} s.",
            retry_after_s=retry_after_s,
        )

    async def count_failure(self, address: str | None) -> None:
        key = self.keys.auth_failures(client_group(address))
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(key, 0, ex=self.window_s, nx=True)
                pipe.incr(key)
                await pipe.execute()
        except RedisError as exc:
            log.warning("auth_failure_not_counted", error=type(exc).__name__)
