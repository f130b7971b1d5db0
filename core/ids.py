"""Identifiers: time-ordered, prefixed, URL-safe (`job_…`, `batch_…`, `key_…`).

Hand-written rather than a ULID library because we need one property the API relies on:
ids made by one process are strictly increasing, even within one millisecond and across a
50,000-job batch, so "newest first" listing and cursor pagination can order by id alone.
Format: 10 Crockford base32 characters of milliseconds since the epoch, then 16 of a
per-process counter seeded at random (bumped by one per id).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RANDOM_BITS = 80


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


class IdFactory:
    """Monotonic id source for one process; thread-safe."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def next_raw(self) -> str:
        with self._lock:
            now_ms = self._clock_ms()
            if now_ms > self._last_ms:
                self._last_ms = now_ms
                self._counter = secrets.randbits(_RANDOM_BITS - 1)
            else:
                self._counter += 1
            return _encode(self._last_ms, 10) + _encode(self._counter, 16)

    def new(self, prefix: str) -> str:
        return f"{prefix}_{self.next_raw()}"


_default = IdFactory()


def new_id(prefix: str) -> str:
    """A fresh id such as `job_01jc…`, increasing within this process."""
    return _default.new(prefix)


def id_floor(prefix: str, at_ms: int) -> str:
    """The lowest id any process can have made at or after the unix time `at_ms`: a bound for
    "made since" ranges over an id index."""
    return f"{prefix}_{_encode(at_ms, 10)}{_encode(0, 16)}"
