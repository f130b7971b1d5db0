"""The fleet-wide response cache: complete answers in Redis, keyed by request fingerprint.

The fingerprint (`core.fingerprint`) already carries the scope (tenant, or the shared cache)
and everything that changes the answer, so this module only stores and fetches. Entries live
for the configured TTL (`cache.ttl_s`) and are plain `SET ... EX` values: one command each
way, nothing that needs a script. A hit is returned as a `Completion`, so callers treat it
like an upstream answer (and mark the job `cached: true`, at no cost). Both methods are
coroutines on a `redis.asyncio` client.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from core.domain.chat import Completion
from core.redis.keys import Keys
from core.redis.stored_completion import dump_completion, load_completion

logger = logging.getLogger(__name__)


class ResponseCache:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    async def get(self, fingerprint: str) -> Completion | None:
        """The cached answer for `fingerprint`, or None on a miss."""
        key = self._keys.cache(fingerprint)
        raw = await self._client.get(key)
        if raw is None:
            return None
        try:
            return load_completion(raw)  # None for an entry in another format version
        except ValueError:
            # Only jobgate writes these keys, so this is a bug or a foreign writer; an
            # unreadable entry must not fail every job with this fingerprint until it expires.
            logger.exception("discarding an unreadable cache entry", extra={"redis_key": key})
            await self._client.delete(key)
            return None

    async def put(self, fingerprint: str, completion: Completion, *, ttl_s: int) -> None:
        """Store a complete answer for `ttl_s` seconds.

        Raises ValueError for a partial answer (no terminal finish reason) or a TTL below 1 s:
        callers must already cache only successes, and this is the last line of defence.
        """
        if ttl_s < 1:
            raise ValueError(f"cache ttl_s must be at least 1, got {ttl_s}")
        await self._client.set(self._keys.cache(fingerprint), dump_completion(completion), ex=ttl_s)
