"""The fleet-wide rate limiter and the gate every upstream call passes.

- `limiter`: GCRA budgets in Redis (`RateLimiter`, `Bucket`), one Lua script per operation
  (`common.lua` + `reserve.lua`, `reconcile.lua`, `headroom.lua`, `pause.lua`);
- `gate`: the breaker, the provider's pause and the reservation in one script before a call;
- `estimate`: the token estimate a reservation books before the provider reports usage;
- `wait`: how long a call may wait for its slot, by priority.
"""

from core.ratelimit.estimate import estimate_tokens
from core.ratelimit.limiter import (
    Bucket,
    Headroom,
    RateLimiter,
    Reservation,
    model_bucket,
    provider_bucket,
    tenant_bucket,
)

__all__ = [
    "Bucket",
    "Headroom",
    "RateLimiter",
    "Reservation",
    "estimate_tokens",
    "model_bucket",
    "provider_bucket",
    "tenant_bucket",
]
