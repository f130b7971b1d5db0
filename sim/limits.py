"""Per-second rate limits as the real providers enforce them: continuously refilled token buckets.

Each (API key, model) pair has a request bucket and a token bucket. A bucket holds one second's
share of its per-minute limit (capacity `rpm / 60`, refilled at `rpm / 60` per second; likewise
`tpm`), so a minute's budget can never arrive in one burst. A request costs 1 from the request
bucket and `prompt tokens + max_tokens` (or the answer's tokens when `max_tokens` is absent) from
the token bucket. It is admitted when each bucket holds at least `min(cost, capacity)`, then the
full cost is taken, so a cost larger than one second's share (or a limit under 60 per minute) is
still served once a full bucket lets it run into debt, and the debt is paid back by refill. Both
buckets are checked before either is charged. Reported figures are in per-minute terms:
`limit` = rpm (tpm), `remaining` = floor(level * 60) (0 while in debt), `reset` = seconds until
the bucket is full again; a refused request is told to retry when its shortfall is refilled.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

_EPSILON = 1e-9


@dataclass(frozen=True)
class BucketState:
    """One bucket as the rate-limit headers report it."""

    limit_per_minute: float
    remaining_per_minute: int
    reset_s: float


@dataclass(frozen=True)
class LimitVerdict:
    admitted: bool
    limited_by: str | None = None  # "requests" or "tokens" when refused
    requested: int = 0  # what the refused request asked of that bucket
    retry_after_s: float = 0.0
    requests: BucketState | None = None
    tokens: BucketState | None = None


ADMITTED_UNLIMITED = LimitVerdict(admitted=True)


class TokenBucket:
    """A bucket of capacity `per_minute / 60`, refilled continuously at that rate per second."""

    __slots__ = ("level", "per_minute", "rate_per_s", "updated_at")

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_minute = per_minute
        self.rate_per_s = per_minute / 60
        self.level = self.rate_per_s
        self.updated_at = now

    @property
    def capacity(self) -> float:
        return self.rate_per_s

    def refill(self, now: float) -> None:
        elapsed = now - self.updated_at
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.rate_per_s)
            self.updated_at = now

    def shortfall_s(self, cost: float) -> float:
        """Seconds until a request of `cost` would be admitted (0 when it is now)."""
        needed = min(cost, self.capacity)
        if self.level + _EPSILON >= needed:
            return 0.0
        return (needed - self.level) / self.rate_per_s

    def take(self, cost: float) -> None:
        self.level -= cost

    def state(self) -> BucketState:
        remaining = math.floor(max(self.level, 0.0) * 60 + _EPSILON)
        reset_s = max(self.capacity - self.level, 0.0) / self.rate_per_s
        return BucketState(self.per_minute, remaining, reset_s)


class RateLimiter:
    """Request and token buckets per (API key, model); safe to call from threads and the event loop."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}

    def _bucket(self, key: str, model: str, kind: str, per_minute: float, now: float) -> TokenBucket:
        bucket = self._buckets.get((key, model, kind))
        if bucket is None or bucket.per_minute != per_minute:
            # A changed limit starts a fresh, full bucket, as a new provider tier would.
            bucket = self._buckets[(key, model, kind)] = TokenBucket(per_minute, now)
        else:
            bucket.refill(now)
        return bucket

    def admit(
        self, key: str, model: str, *, rpm: float | None, tpm: float | None, cost_tokens: int
    ) -> LimitVerdict:
        """Charge one request of `cost_tokens` tokens, or refuse it without charging anything."""
        if rpm is None and tpm is None:
            return ADMITTED_UNLIMITED
        with self._lock:
            now = self._clock()
            requests = self._bucket(key, model, "requests", rpm, now) if rpm is not None else None
            tokens = self._bucket(key, model, "tokens", tpm, now) if tpm is not None else None
            for kind, bucket, cost in (("requests", requests, 1), ("tokens", tokens, cost_tokens)):
                if bucket is not None:
                    wait_s = bucket.shortfall_s(cost)
                    if wait_s > 0:
                        return LimitVerdict(
                            admitted=False,
                            limited_by=kind,
                            requested=cost,
                            retry_after_s=wait_s,
                            requests=requests.state() if requests else None,
                            tokens=tokens.state() if tokens else None,
                        )
            if requests is not None:
                requests.take(1)
            if tokens is not None:
                tokens.take(cost_tokens)
            return LimitVerdict(
                admitted=True,
                requests=requests.state() if requests else None,
                tokens=tokens.state() if tokens else None,
            )

    def reset(self) -> None:
        """Forget every bucket; the next request finds them full."""
        with self._lock:
            self._buckets.clear()
