"""The one Redis step before an upstream call: the target's breaker, the provider's pause and
the rate-limit reservation, in one script (`gate.lua`, which runs `breaker.lua` and the
limiter's reserve script as functions), so a call costs one round trip before it goes out.

A breaker that refuses books nothing; a probe whose reservation is refused is handed back in
the same step. What each part decides is exactly what `CircuitBreaker.allow` and
`RateLimiter.reserve` decide alone (their tests specify it; tests/integration/test_gate.py
checks the composition).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.config import BreakerConfig
from core.ratelimit.limiter import Bucket, Place, RateLimiter, Reservation, reservation_from, script_source
from core.redis import breaker
from core.redis.breaker import CircuitBreaker, Permit, permit_from
from core.redis.scripts import FleetScript, run_call


def _assemble() -> str:
    glue = Path(__file__).with_name("gate.lua").read_text(encoding="utf-8")
    return glue.replace("--@breaker", breaker.SOURCE).replace("--@reserve", script_source("reserve"))


SCRIPT = FleetScript(_assemble())


@dataclass(frozen=True)
class GateAnswer:
    permit: Permit
    reservation: Reservation | None  # None when the breaker refused (nothing booked)


class Gate:
    def __init__(self, breaker: CircuitBreaker, limiter: RateLimiter) -> None:
        self.breaker = breaker
        self.limiter = limiter

    async def open(
        self,
        target: str,
        config: BreakerConfig,
        buckets: Sequence[Bucket],
        tokens: int,
        *,
        probe_timeout_s: float,
        max_wait_s: float,
        line: bool,
        place: Place | None = None,
    ) -> GateAnswer:
        allow = self.breaker.call("allow", target, config, probe_timeout_s=probe_timeout_s)
        reserve = self.limiter.reserve_call(buckets, tokens, max_wait_s=max_wait_s, line=line, place=place)
        if reserve is None:
            permit = permit_from(await run_call(self.breaker.client, allow))
            granted = Reservation(True, tokens, tuple(buckets)) if permit.allowed else None
            return GateAnswer(permit, granted)
        call = SCRIPT.call([*allow.keys, *reserve.keys], [len(reserve.keys), *allow.args, *reserve.args])
        permit_reply, reservation_reply = await run_call(self.breaker.client, call)
        permit = permit_from(permit_reply)
        if not permit.allowed:
            return GateAnswer(permit, None)
        return GateAnswer(permit, reservation_from(reservation_reply, tokens, buckets))
