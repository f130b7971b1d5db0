"""The fleet-wide response cache: complete answers in Redis, keyed by request fingerprint.

The fingerprint (`core.fingerprint`) already carries the scope (tenant, or the shared cache)
and everything that changes the answer, so this module only stores and fetches. Entries live
for the configured TTL (`cache.ttl_s`) and are plain `SET ... EX` values: one command each
way, nothing that needs a script. A hit is returned as a `Completion`, so callers treat it
like an upstream answer (and mark the job `cached: true`, at no cost). `get` and `put` are
coroutines on a `redis.asyncio` client; their commands (`get_command`, `put_command`) let the
worker read an entry in the round trip of its single-flight lookup and write one in its
group's after-commit pipeline.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from core.domain.chat import Completion
from core.redis.keys import Keys
from core.redis.scripts import Command, run_call
from core.redis.stored_completion import dump_completion, load_completion

logger = logging.getLogger(__name__)


class ResponseCache:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self._client = client
        self._keys = keys

    async def get(self, fingerprint: str) -> Completion | None:
        """The cached answer for `fingerprint`, or None on a miss."""
        hit, cleanup = self.decode(fingerprint, await run_call(self._client, self.get_command(fingerprint)))
        if cleanup is not None:
            await run_call(self._client, cleanup)
        return hit

    def get_command(self, fingerprint: str) -> Command:
        """The read, to ride in a pipeline with the single-flight lookup; `decode` its reply."""
        return Command(("GET", self._keys.cache(fingerprint)))

    def decode(self, fingerprint: str, raw: bytes | None) -> tuple[Completion | None, Command | None]:
        """The answer in a `get_command` reply (None on a miss), and a command to run when the
        entry is unreadable: only jobgate writes these keys, so that is a bug or a foreign
        writer, and such an entry must not fail every job with this fingerprint until it
        expires, so it is deleted."""
        if raw is None:
            return None, None
        try:
            return load_completion(raw), None  # None for an entry in another format version
        except ValueError:
            key = self._keys.cache(fingerprint)
            logger.exception("discarding an unreadable cache entry", extra={"redis_key": key})
            return None, Command(("DEL", key))

    async def put(self, fingerprint: str, completion: Completion, *, ttl_s: int) -> None:
        """Store a complete answer for `ttl_s` seconds.

        Raises ValueError for a partial answer (no terminal finish reason) or a TTL below 1 s:
        callers must already cache only successes, and this is the last line of defence.
        """
        await run_call(self._client, self.put_command(fingerprint, completion, ttl_s=ttl_s))

    def put_command(self, fingerprint: str, completion: Completion, *, ttl_s: int) -> Command:
        """`put` as a command, to ride in the group writer's after-commit pipeline."""
        if ttl_s < 1:
            raise ValueError(f"cache ttl_s must be at least 1, got {ttl_s}")
        return Command(("SET", self._keys.cache(fingerprint), dump_completion(completion), "EX", ttl_s))
