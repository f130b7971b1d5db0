"""When to send a failed request again, and after how long.

A retryable failure (no answer, 408, 429, 5xx) is retried up to `max_retries` times. The
wait is the server's `Retry-After` when it sent one, exactly: it knows when the limit frees
up, and coming back sooner only earns another 429. Past `max_retry_after_s` the error is
raised instead of waited out. Without `Retry-After`, exponential backoff with jitter, so
many clients refused at once do not come back at once. Randomness is injectable for tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from jobgate.client.errors import APIConnectionError, APIStatusError


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay_s(self, retries_so_far: int, error: APIStatusError | APIConnectionError) -> float | None:
        """How long to wait before retrying after `error`; None: raise it."""
        if retries_so_far >= self.max_retries or not error.retryable:
            return None
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= self.max_retry_after_s else None
        backoff = min(self.max_delay_s, self.base_delay_s * 2**retries_so_far)
        return backoff * (0.5 + self.random() / 2)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` in seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3); None when
    absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)
