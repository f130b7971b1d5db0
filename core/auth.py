"""API keys: generated with enough entropy to need no slow hash, stored as SHA-256 only.

A key is shown once, at creation; the database keeps its hash and a short visible prefix
so humans can tell keys apart in listings and logs.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.ids import new_id
from core.store.clock import system_utcnow
from core.store.models import ApiKey, Tenant

KEY_PREFIX = "jg_"
VISIBLE_CHARS = 10


@dataclass(frozen=True)
class NewKey:
    key: str
    key_id: str
    tenant_id: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def ensure_tenant(session: Session, name: str) -> Tenant:
    tenant = session.execute(select(Tenant).where(Tenant.name == name)).scalars().first()
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name, created_at=system_utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> NewKey:
    """Create the tenant if needed and a new key for it; commits."""
    tenant = ensure_tenant(session, tenant_name)
    key = generate_key()
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id,
        prefix=key[:VISIBLE_CHARS],
        key_hash=hash_key(key),
        created_at=system_utcnow(),
    )
    session.add(row)
    session.commit()
    return NewKey(key=key, key_id=row.id, tenant_id=tenant.id)


def key_is_valid(session: Session, key: str) -> bool:
    stmt = select(ApiKey.id).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    return session.execute(stmt).first() is not None
