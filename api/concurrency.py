"""Caps on what one API process holds open at once: uploads in progress, long polls and sync
calls waiting, per tenant and in all.

Each is a count in this process, taken when the request starts and given back when it ends;
no Redis round trip, because what is being protected (sockets, memory, the event loop's
time) is the process's own. A tenant can hold at most its share of a process's slots, so one
tenant's flood of uploads or waits leaves room for the others; with N API processes the
fleet-wide figure is N times the setting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import TooManyRequests


class ConcurrencyCap:
    """At most `per_tenant` holders per tenant and `per_process` (when set) in all.

    `what` names the thing counted and `*_setting` the setting behind each cap, for the 429's
    message; `retry_after_s` is the Retry-After it carries.
    """

    def __init__(
        self,
        what: str,
        *,
        per_tenant: int,
        tenant_setting: str,
        per_process: int | None = None,
        process_setting: str = "",
        retry_after_s: int = 1,
    ) -> None:
        self.what = what
        self.per_tenant = per_tenant
        self.tenant_setting = tenant_setting
        self.per_process = per_process
        self.process_setting = process_setting
        self.retry_after_s = retry_after_s
        self._held: Counter[str] = Counter()
        self._total = 0

    def held(self, tenant_id: str | None = None) -> int:
        """Slots held by `tenant_id`, or by everyone."""
        return self._total if tenant_id is None else self._held[tenant_id]

    def try_take(self, tenant_id: str) -> bool:
        """Take a slot if both caps allow it; `release` gives it back."""
        if self._held[tenant_id] >= self.per_tenant:
            return False
        if self.per_process is not None and self._total >= self.per_process:
            return False
        self._held[tenant_id] += 1
        self._total += 1
        return True

    def take(self, tenant_id: str) -> None:
        """Take a slot, or raise `TooManyRequests` (429 with Retry-After)."""
        if self.try_take(tenant_id):
            return
        if self._held[tenant_id] >= self.per_tenant:
            limit = f"at most {self.per_tenant} per tenant at once, {self.tenant_setting}"
        else:
            limit = f"at most {self.per_process} at once in this server process, {self.process_setting}"
        raise TooManyRequests(
            f"Too many {self.what} in progress ({limit}); retry when one has finished.",
            retry_after_s=self.retry_after_s,
        )

    def release(self, tenant_id: str) -> None:
        self._held[tenant_id] -= 1
        if self._held[tenant_id] <= 0:
            del self._held[tenant_id]
        self._total -= 1

    @contextmanager
    def hold(self, tenant_id: str) -> Iterator[None]:
        """A slot for the block, or `TooManyRequests` before it starts."""
        self.take(tenant_id)
        try:
            yield
        finally:
            self.release(tenant_id)
