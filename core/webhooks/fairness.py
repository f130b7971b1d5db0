"""Fair shares of a worker process's webhook senders between tenants.

A worker process's webhook threads and DNS lookup slots serve every tenant. One tenant whose
endpoints answer slowly (or whose name servers do) could hold all of them and delay every
other tenant's webhooks, so each tenant gets a bounded share of both:

- `AttemptSlots`: at most `per_tenant` delivery attempts of one tenant in flight
  (`JOBGATE_WEBHOOK_MAX_IN_FLIGHT_PER_TENANT`). A tenant at its cap does not wait on a thread:
  its delivery takes the next turn in the tenant's waiting line and goes back to the queue
  until then, still pending and with no attempt counted (`core/webhooks/delivery.py`). Turns
  are spaced by the tenant's attempt duration over its cap, so a waiting delivery comes back
  about once, when a slot is likely free, rather than spinning through the queue.
- `TenantShares`: at most `per_tenant` of a pool's slots to one tenant: the sender's DNS
  lookups alive at once, hung ones included (`JOBGATE_WEBHOOK_DNS_LOOKUPS_PER_TENANT`).

Both count per process, not fleet-wide: what a tenant can exhaust is each process's own
threads and lookup slots, so a count in the process protects exactly that, costs no Redis
round trip, and cannot outlive a process that dies holding slots (a fleet-wide Redis counter
would need a lease per attempt, and would lose a crashed holder's slots until it lapsed). A
tenant's fleet-wide concurrency is its cap times the worker processes: it grows with the
capacity it shares.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A tenant's attempt duration until one has been measured in this process.
FIRST_ESTIMATE_S = 0.5
# Weight of the newest attempt in a tenant's duration estimate (an exponential moving average).
NEWEST_WEIGHT = 0.3
# The furthest turn a waiting line hands out: a long line bunches there rather than pushing a
# recovered endpoint's backlog hours away.
MAX_WAIT_S = 600.0


class TenantShares:
    """`total` slots, of which one tenant holds at most `per_tenant`. Thread-safe; never blocks."""

    def __init__(self, total: int, per_tenant: int) -> None:
        self.total = total
        self.per_tenant = per_tenant
        self._lock = threading.Lock()
        self._held: dict[str | None, int] = {}
        self._in_use = 0

    def try_take(self, tenant_id: str | None) -> bool:
        """One slot for `tenant_id`, or False when the pool or the tenant's share is full.
        `None` (a send made outside any tenant's delivery) is bounded by the pool only."""
        with self._lock:
            held = self._held.get(tenant_id, 0)
            if self._in_use >= self.total or (tenant_id is not None and held >= self.per_tenant):
                return False
            self._held[tenant_id] = held + 1
            self._in_use += 1
            return True

    def give_back(self, tenant_id: str | None) -> None:
        with self._lock:
            held = self._held[tenant_id] - 1
            if held:
                self._held[tenant_id] = held
            else:
                del self._held[tenant_id]
            self._in_use -= 1

    def held(self, tenant_id: str | None) -> int:
        with self._lock:
            return self._held.get(tenant_id, 0)


@dataclass
class _Tenant:
    started: dict[int, float] = field(default_factory=dict)  # attempt token -> start (clock s)
    duration_s: float | None = None  # the estimate, None until an attempt was measured
    line_end: float = 0.0  # the last turn handed out (clock s)


class AttemptSlots:
    """Each tenant's delivery attempts in flight in this process (at most `per_tenant`), and
    its waiting line. Thread-safe: the process's webhook threads share one.

    A tenant's entry lives while it has attempts in flight; with the last one its estimate and
    line go too, so memory follows the tenants being served. A line restarted that way may
    hand out turns ahead of earlier waiters: they only come back a little sooner than needed.
    """

    def __init__(self, per_tenant: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_tenant = per_tenant
        self._clock = clock
        self._lock = threading.Lock()
        self._tenants: dict[str, _Tenant] = {}
        self._tokens = itertools.count(1)

    def take(self, tenant_id: str) -> int | None:
        """A token for one attempt of `tenant_id`, or None while it has `per_tenant` in flight."""
        with self._lock:
            tenant = self._tenants.setdefault(tenant_id, _Tenant())
            if len(tenant.started) >= self.per_tenant:
                return None
            token = next(self._tokens)
            tenant.started[token] = self._clock()
            return token

    def give_back(self, tenant_id: str, token: int, *, took_s: float | None) -> None:
        """Ends the attempt `token`; `took_s`, its request's duration (None: nothing was sent),
        updates the tenant's estimate."""
        with self._lock:
            tenant = self._tenants[tenant_id]
            del tenant.started[token]
            if took_s is not None:
                previous = tenant.duration_s
                tenant.duration_s = (
                    took_s if previous is None else (1 - NEWEST_WEIGHT) * previous + NEWEST_WEIGHT * took_s
                )
            if not tenant.started:
                del self._tenants[tenant_id]

    def take_turn(self, tenant_id: str) -> float:
        """Seconds from now to the next turn in `tenant_id`'s waiting line, which the caller
        takes: one attempt duration over the cap after the previous turn. The duration is the
        tenant's estimate or, when longer, the age of its oldest attempt in flight, so a line
        behind endpoints that have started hanging slows down before any attempt ends."""
        with self._lock:
            now = self._clock()
            tenant = self._tenants.get(tenant_id)
            if tenant is None:  # its attempts ended since it was refused: a slot is free now
                return FIRST_ESTIMATE_S / self.per_tenant
            oldest_s = max((now - started for started in tenant.started.values()), default=0.0)
            duration_s = max(tenant.duration_s or FIRST_ESTIMATE_S, oldest_s)
            turn = min(max(now, tenant.line_end) + duration_s / self.per_tenant, now + MAX_WAIT_S)
            tenant.line_end = turn
            return turn - now
