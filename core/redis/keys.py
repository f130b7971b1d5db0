"""Every Redis key jobgate writes, in one place, under one configurable prefix.

Tests give each run its own prefix so several runs can share one Redis server. Dramatiq's
own keys live under `<prefix>:dq` (the broker's namespace).
"""

from __future__ import annotations

from dataclasses import dataclass

# The window of `Keys.webhook_manual_retries`, which is also that counter's TTL.
WEBHOOK_MANUAL_RETRY_WINDOW_S = 60


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def broker_namespace(self) -> str:
        return f"{self.prefix}:dq"

    @property
    def job_done_channel(self) -> str:
        """Pub/sub channel: a job id is published here when the job reaches a final state."""
        return f"{self.prefix}:events:job-done"

    def rate_limit(self, bucket: str) -> str:
        """A limiter bucket (provider, provider+model, tenant): its GCRA state, a hash."""
        return f"{self.prefix}:rl:{bucket}"

    def rate_limit_ahead(self, bucket: str) -> str:
        """A limiter bucket's token bookings whose calls have not gone out yet (a sorted set)."""
        return f"{self.prefix}:rl-ahead:{bucket}"

    def provider_pause(self, provider: str) -> str:
        """Until when (Redis time, ms) a provider is paused fleet-wide after a 429/Retry-After."""
        return f"{self.prefix}:pause:{provider}"

    def breaker(self, target: str) -> str:
        return f"{self.prefix}:breaker:{target}"

    def breaker_failures(self, target: str) -> str:
        """The times of a breaker's most recent failures (a list, newest first)."""
        return f"{self.prefix}:breaker-failures:{target}"

    def cache(self, fingerprint: str) -> str:
        return f"{self.prefix}:cache:{fingerprint}"

    def flight(self, fingerprint: str) -> str:
        """Single-flight lock for one request fingerprint."""
        return f"{self.prefix}:flight:{fingerprint}"

    def flight_result(self, fingerprint: str) -> str:
        return f"{self.prefix}:flight-result:{fingerprint}"

    def flight_wake(self, fingerprint: str, leader_token: str) -> str:
        """Wake-up list of one flight (one leader's turn): followers block on it until it ends."""
        return f"{self.prefix}:flight-wake:{fingerprint}:{leader_token}"

    def spend(self, owner: str, period: str) -> str:
        """Spend in nano-USD of a budget's owner (`tenant:<id>`, `key:<id>`) in one period."""
        return f"{self.prefix}:spend:{owner}:{period}"

    def latency(self) -> str:
        """Every target's moving average latency in ms, one field per target (no TTL: few fields)."""
        return f"{self.prefix}:latency"

    def maintenance_lock(self, task: str) -> str:
        """Held by the one worker in the fleet running a periodic task (sweeper, reaper)."""
        return f"{self.prefix}:lock:{task}"

    def provider_stats(self, target: str) -> str:
        return f"{self.prefix}:pstats:{target}"

    def webhook_manual_retries(self, tenant_id: str) -> str:
        """A tenant's hand-made delivery retries in the current window: a counter that expires
        with it (`WEBHOOK_MANUAL_RETRY_WINDOW_S`)."""
        return f"{self.prefix}:webhook-retries:{tenant_id}"

    def auth_failures(self, address: str) -> str:
        """Unknown keys tried from one client address in the current window: a counter that
        expires with the window (`JOBGATE_AUTH_FAILURE_WINDOW_S`)."""
        return f"{self.prefix}:auth-failures:{address}"
