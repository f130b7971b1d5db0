"""The API's key lookup cache: a checked key is trusted for `JOBGATE_KEY_CACHE_TTL_S`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from core.auth import hash_key
from core.settings import Settings
from core.store.db import make_sync_engine
from core.store.models import ApiKey
from tests.conftest import in_process_api, sqlite_only


def revoke(settings: Settings, key: str) -> None:
    engine = make_sync_engine(settings)
    with engine.begin() as connection:
        connection.execute(
            update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=datetime.now(UTC))
        )
    engine.dispose()


@sqlite_only
@pytest.mark.parametrize(("ttl_s", "after_revoke"), [(60.0, 200), (0.0, 401)])
async def test_a_revoked_key_is_refused_once_its_cached_lookup_expires(
    settings: Settings, api_key: str, ttl_s: float, after_revoke: int
) -> None:
    async with in_process_api(settings.model_copy(update={"key_cache_ttl_s": ttl_s}), api_key) as client:
        assert (await client.get("/v1/jobs")).status_code == 200
        revoke(settings, api_key)

        assert (await client.get("/v1/jobs")).status_code == after_revoke
