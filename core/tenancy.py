"""Tenants and their policies: limits, spend budgets, fair-share weight, cache sharing, retention.

A tenant's policy lives in SQL (the `tenants` table), where the operator API and
`jobgate tenants ...` change it; a field left NULL there falls back to the config file's
`tenants.<name>`, then `tenants.default`, so the YAML still seeds every tenant. Workers and
the API keep what they read for `POLICY_TTL_S` (`TenantPolicies`): a change reaches the whole
fleet within that time, with no restart and no extra round trip on a job's path (a claim
reads only the policies that went stale, in the transaction it makes anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import GatewayConfig
from core.errors import Conflict, InvalidRequest, NotFound
from core.ids import new_id
from core.store.clock import system_utcnow
from core.store.models import ApiKey, Tenant

POLICY_TTL_S = 5.0
# The fields an operator may set on a tenant (None clears one back to the config file's value).
POLICY_FIELDS = (
    "rpm",
    "tpm",
    "budget_usd_day",
    "budget_usd_month",
    "share",
    "shared_cache",
    "retention_days",
)


@dataclass(frozen=True)
class TenantPolicy:
    tenant_id: str
    name: str
    rpm: int | None = None
    tpm: int | None = None
    budget_usd_day: Decimal | None = None
    budget_usd_month: Decimal | None = None
    share: float = 1.0
    shared_cache: bool = False
    retention_days: int | None = None


@dataclass(frozen=True)
class KeyBudget:
    key_id: str
    budget_usd_day: Decimal | None = None
    budget_usd_month: Decimal | None = None


def resolve_policy(tenant: Tenant, config: GatewayConfig) -> TenantPolicy:
    """The tenant's row over the config file's seed, field by field."""
    seed = config.tenant_limits(tenant.name)
    values: dict[str, Any] = {}
    for name in POLICY_FIELDS:
        value = getattr(tenant, name)
        values[name] = getattr(seed, name) if value is None else value
    return TenantPolicy(tenant_id=tenant.id, name=tenant.name, **values)


class TenantPolicies:
    """A per-process cache of tenant policies and key budgets, each entry kept `ttl_s`."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        ttl_s: float = POLICY_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._tenants: dict[str, tuple[float, TenantPolicy]] = {}
        self._keys: dict[str, tuple[float, KeyBudget]] = {}

    def tenant(self, tenant_id: str) -> TenantPolicy:
        """The policy last read; a tenant never read gets the config's default under its id."""
        entry = self._tenants.get(tenant_id)
        if entry is not None:
            return entry[1]
        return resolve_policy(Tenant(id=tenant_id, name=tenant_id), self.config)

    def key(self, key_id: str | None) -> KeyBudget | None:
        entry = self._keys.get(key_id) if key_id else None
        return entry[1] if entry is not None else None

    def stale(self, tenant_ids: Iterable[str], key_ids: Iterable[str | None]) -> tuple[set[str], set[str]]:
        """The tenants and keys whose entries are missing or older than `ttl_s`."""
        now = self._monotonic()
        return (
            {t for t in tenant_ids if self._expired(self._tenants.get(t), now)},
            {k for k in key_ids if k and self._expired(self._keys.get(k), now)},
        )

    def _expired(self, entry: tuple[float, Any] | None, now: float) -> bool:
        return entry is None or entry[0] <= now

    def refresh(self, session: Session, tenant_ids: Iterable[str], key_ids: Iterable[str] = ()) -> None:
        """Read these tenants and keys again (a sync session: a worker's SQL thread)."""
        tenant_ids, key_ids = list(tenant_ids), list(key_ids)
        tenants = (
            session.execute(select(Tenant).where(Tenant.id.in_(tenant_ids))).scalars().all()
            if tenant_ids
            else []
        )
        keys = (
            session.execute(
                select(ApiKey.id, ApiKey.budget_usd_day, ApiKey.budget_usd_month).where(
                    ApiKey.id.in_(key_ids)
                )
            ).all()
            if key_ids
            else []
        )
        self.remember(tenants, [KeyBudget(*row) for row in keys])

    def remember(self, tenants: Iterable[Tenant], keys: Iterable[KeyBudget] = ()) -> None:
        expires = self._monotonic() + self.ttl_s
        for tenant in tenants:
            self._tenants[tenant.id] = (expires, resolve_policy(tenant, self.config))
        for key in keys:
            self._keys[key.key_id] = (expires, key)


# --- Operator management (CLI and /v1/admin/tenants share these) ----------------------------


def ensure_tenant(session: Session, name: str, *, now: datetime | None = None) -> Tenant:
    tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalars().first()
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name, created_at=now or system_utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def create_tenant(session: Session, name: str, fields: Mapping[str, Any]) -> Tenant:
    """A new tenant with these policy fields; Conflict if the name is taken. Commits."""
    if not name or len(name) > 200:
        raise InvalidRequest("a tenant's name is 1 to 200 characters", param="name")
    if session.execute(select(Tenant.id).where(Tenant.name == name)).first() is not None:
        raise Conflict(f"Tenant {name!r} exists already: update it instead", param="name")
    tenant = Tenant(id=new_id("ten"), name=name, created_at=system_utcnow())
    _apply(tenant, fields)
    session.add(tenant)
    session.commit()
    return tenant


def get_tenant(session: Session, name: str) -> Tenant:
    tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalars().first()
    if tenant is None:
        raise NotFound(f"No tenant named {name!r}", param="name")
    return tenant


def update_tenant(session: Session, name: str, fields: Mapping[str, Any]) -> Tenant:
    """Set these policy fields (None clears one back to the config file's value). Commits."""
    tenant = get_tenant(session, name)
    _apply(tenant, fields)
    tenant.updated_at = system_utcnow()
    session.commit()
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.execute(select(Tenant).order_by(Tenant.name)).scalars().all())


def _apply(tenant: Tenant, fields: Mapping[str, Any]) -> None:
    for name, value in fields.items():
        if name not in POLICY_FIELDS:
            raise InvalidRequest(
                f"Unknown tenant field {name!r} (known: {', '.join(POLICY_FIELDS)})", param=name
            )
        setattr(tenant, name, value)
