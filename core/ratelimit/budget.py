"""Spend budgets: USD per day and per month, per tenant and per key, held fleet-wide in Redis.

Before a call, the most it can cost (its prompt estimate and its output bound, priced by the
pricing table) is reserved in every budget that applies, in one atomic script
(`budget.lua`), so concurrent jobs can never together pass a cap; after it, the reservation
is settled to the real cost (or to nothing, for a call the provider did not charge). Periods
are UTC days and months; each counter expires a little after its period ends.

Counters live in Redis, not SQL, because they are checked on every call by every worker;
a Redis that restarted empty starts the period's counters at zero (documented in README).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import redis.asyncio as aioredis

from core.redis.keys import Keys
from core.redis.scripts import Command, FleetOp, FleetScript, run_call, run_calls
from core.tenancy import KeyBudget, TenantPolicy

SCRIPT = FleetScript(Path(__file__).with_name("budget.lua").read_text(encoding="utf-8"))
NANO = Decimal(1_000_000_000)
# Kept past the period's end, so a late settlement still finds its counter.
TTL_MARGIN_S = 3 * 86400


@dataclass(frozen=True)
class Budget:
    """One cap over one period: "tenant acme, per day"."""

    owner: str  # "tenant acme" or "key key_…"
    period: str  # "day" or "month"
    cap_usd: Decimal
    counter: str  # its Redis key
    resets_at: datetime

    @property
    def ttl_s(self) -> int:
        return int((self.resets_at - datetime.now(UTC)).total_seconds()) + TTL_MARGIN_S

    def describe(self) -> str:
        return f"the {self.owner} budget of {self.cap_usd} USD per {self.period}"


def period_ends(now: datetime) -> dict[str, tuple[str, datetime]]:
    """Each period's label and the moment it ends (UTC)."""
    day_end = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    days = calendar.monthrange(now.year, now.month)[1]
    month_end = datetime(now.year, now.month, 1, tzinfo=UTC) + timedelta(days=days)
    return {"day": (now.strftime("%Y%m%d"), day_end), "month": (now.strftime("%Y%m"), month_end)}


def budgets_for(keys: Keys, tenant: TenantPolicy, key: KeyBudget | None, now: datetime) -> list[Budget]:
    """The budgets a call by this tenant and key counts against, right now."""
    periods = period_ends(now)
    owners: list[tuple[str, str, Decimal | None, Decimal | None]] = [
        (
            f"tenant:{tenant.tenant_id}",
            f"tenant {tenant.name}",
            tenant.budget_usd_day,
            tenant.budget_usd_month,
        )
    ]
    if key is not None:
        owners.append((f"key:{key.key_id}", f"key {key.key_id}", key.budget_usd_day, key.budget_usd_month))
    budgets = []
    for owner_id, owner, day_cap, month_cap in owners:
        for period, cap in (("day", day_cap), ("month", month_cap)):
            if cap is None:
                continue
            label, ends = periods[period]
            budgets.append(Budget(owner, period, cap, keys.spend(owner_id, label), ends))
    return budgets


def _nano(usd: Decimal) -> int:
    return int((usd * NANO).to_integral_value())


class SpendLedger:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def budgets(self, tenant: TenantPolicy, key: KeyBudget | None, now: datetime) -> list[Budget]:
        return budgets_for(self.keys, tenant, key, now)

    async def reserve(self, budgets: Sequence[Budget], most_usd: Decimal) -> Budget | None:
        """Reserve `most_usd` in every budget; None when granted, else the budget it would pass."""
        if not budgets:
            return None
        reply = await run_call(self.client, self._call(budgets, "reserve", _nano(most_usd)))
        granted, index = int(reply[0]), int(reply[1])
        return None if granted else budgets[index - 1]

    def settle(self, budgets: Sequence[Budget], reserved_usd: Decimal, cost_usd: Decimal) -> FleetOp | None:
        """The update that turns a reservation into the real cost (to run after the call)."""
        delta = _nano(cost_usd) - _nano(reserved_usd)
        if not budgets or delta == 0:
            return None
        return self._call(budgets, "settle", delta)

    async def spent_usd(self, budgets: Sequence[Budget]) -> list[Decimal]:
        """What each budget has spent (and holds reserved for calls in flight) this period."""
        replies = await run_calls(self.client, [Command(("GET", b.counter)) for b in budgets])
        return [Decimal(int(r or 0)) / NANO for r in replies]

    @staticmethod
    def _call(budgets: Sequence[Budget], mode: str, amount: int) -> FleetOp:
        caps = [str(_nano(b.cap_usd)) if mode == "reserve" else "" for b in budgets]
        return SCRIPT.call([b.counter for b in budgets], [mode, amount, *caps, *[b.ttl_s for b in budgets]])
