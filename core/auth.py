"""API keys: generated with enough entropy to need no slow hash, stored as SHA-256 only.

A key is shown once, at creation; the database keeps its hash and a short visible prefix
so humans can tell keys apart in listings and logs. A key is `tenant` scoped (it submits and
reads its tenant's work) or `operator` scoped (it manages tenants and keys and reads fleet
state, and belongs to no tenant). A tenant key may carry an expiry, the model names it may
use, whether its batches may ask for `interactive` priority, and its own spend budgets.

Both the CLI (a sync session) and the operator API (the same functions through
`AsyncSession.run_sync`) manage keys here, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.errors import InvalidRequest, NotFound
from core.ids import new_id
from core.store.clock import system_utcnow
from core.store.models import ApiKey, Tenant, as_utc
from core.tenancy import ensure_tenant

KEY_PREFIX = "jg_"
VISIBLE_CHARS = 10
Scope = Literal["tenant", "operator"]
SCOPES: tuple[Scope, ...] = ("tenant", "operator")


@dataclass(frozen=True)
class NewKey:
    key: str
    key_id: str
    tenant_id: str | None


@dataclass(frozen=True)
class KeyOptions:
    """What a new key may do, beside its scope and tenant."""

    name: str | None = None
    expires_in_days: float | None = None
    models: Sequence[str] | None = None
    allow_interactive: bool = False
    budget_usd_day: Decimal | None = None
    budget_usd_month: Decimal | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def create_key(
    session: Session,
    tenant_name: str | None,
    *,
    scope: Scope = "tenant",
    options: KeyOptions | None = None,
    now: datetime | None = None,
) -> NewKey:
    """A new key; a tenant key creates its tenant if needed. Commits."""
    options = options or KeyOptions()
    if scope not in SCOPES:
        raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    if scope == "tenant" and not tenant_name:
        raise InvalidRequest("a tenant key needs its tenant's name", param="tenant")
    if scope == "operator" and tenant_name:
        raise InvalidRequest("an operator key belongs to no tenant: leave 'tenant' out", param="tenant")
    if options.expires_in_days is not None and options.expires_in_days <= 0:
        raise InvalidRequest("expires_in_days must be more than 0", param="expires_in_days")
    now = now or system_utcnow()
    tenant = ensure_tenant(session, tenant_name, now=now) if tenant_name else None
    key = generate_key()
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id if tenant else None,
        scope=scope,
        name=options.name,
        prefix=key[:VISIBLE_CHARS],
        key_hash=hash_key(key),
        created_at=now,
        expires_at=(
            now + timedelta(days=options.expires_in_days) if options.expires_in_days is not None else None
        ),
        models=list(options.models) if options.models else None,
        allow_interactive=options.allow_interactive,
        budget_usd_day=options.budget_usd_day,
        budget_usd_month=options.budget_usd_month,
    )
    session.add(row)
    session.commit()
    return NewKey(key=key, key_id=row.id, tenant_id=row.tenant_id)


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, str | None]]:
    """Every key (of one tenant, when named), newest first, with its tenant's name."""
    stmt = select(ApiKey, Tenant.name).outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        stmt = stmt.where(Tenant.name == tenant_name)
    rows = session.execute(stmt.order_by(ApiKey.created_at.desc(), ApiKey.id.desc())).all()
    return [(key, name) for key, name in rows]


def find_key(session: Session, id_or_prefix: str) -> tuple[ApiKey, str | None]:
    """The key with this id, or the one key whose visible prefix starts so."""
    stmt = (
        select(ApiKey, Tenant.name)
        .outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(or_(ApiKey.id == id_or_prefix, ApiKey.prefix == id_or_prefix[:VISIBLE_CHARS]))
    )
    rows = session.execute(stmt).all()
    if not rows:
        raise NotFound(f"No key with id or prefix {id_or_prefix!r}", param="id")
    if len(rows) > 1:
        raise InvalidRequest(f"{id_or_prefix!r} matches {len(rows)} keys: give the key's id", param="id")
    key, name = rows[0]
    return key, name


def revoke_key(
    session: Session, id_or_prefix: str, *, now: datetime | None = None
) -> tuple[ApiKey, str | None]:
    """Revoke a key (a key revoked already keeps its first revocation time). Commits."""
    key, name = find_key(session, id_or_prefix)
    if key.revoked_at is None:
        key.revoked_at = now or system_utcnow()
        session.commit()
    return key, name


def key_is_valid(session: Session, key: str) -> bool:
    stmt = select(ApiKey.expires_at).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    row = session.execute(stmt).first()
    if row is None:
        return False
    expires_at = as_utc(row[0])
    return expires_at is None or expires_at > system_utcnow()
