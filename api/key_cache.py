"""A short-lived, per-process cache of API key → principal lookups.

Every `/v1` request needs its key checked; on the synchronous path that SQL round trip (and
its pool checkout) is a large share of what jobgate adds to an upstream call. Entries live
`JOBGATE_KEY_CACHE_TTL_S` (default 5 s), so a revoked key is refused everywhere within that
time; a wrong key is never cached (each try costs its own lookup). Keyed by the key's SHA-256,
never by the key itself. Bounded: when full, the oldest entries go first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

MAX_ENTRIES = 10_000


class KeyCache(Generic[V]):
    def __init__(
        self, ttl_s: float, *, max_entries: int = MAX_ENTRIES, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._monotonic = monotonic
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def get(self, key_hash: str) -> V | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at <= self._monotonic():
            del self._entries[key_hash]
            return None
        return value

    def put(self, key_hash: str, value: V) -> None:
        if self.ttl_s <= 0:
            return
        self._entries[key_hash] = (self._monotonic() + self.ttl_s, value)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
