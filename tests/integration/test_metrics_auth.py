"""`/metrics` behind an operator key (`JOBGATE_METRICS_AUTH=operator`), or open (the default)."""

from __future__ import annotations

from collections.abc import Callable

from core.settings import Settings
from tests.conftest import bearer, in_process_api, sqlite_only

pytestmark = sqlite_only


async def test_metrics_need_an_operator_key_when_the_setting_asks(
    settings: Settings, make_key: Callable[..., str]
) -> None:
    guarded = settings.model_copy(update={"metrics_auth": "operator"})
    tenant_key, operator_key = make_key("tenant-a"), make_key(None, scope="operator")
    async with in_process_api(guarded) as client:
        anonymous = await client.get("/metrics")
        tenant = await client.get("/metrics", headers=bearer(tenant_key))
        operator = await client.get("/metrics", headers=bearer(operator_key))

    assert anonymous.status_code == 401
    assert (tenant.status_code, tenant.json()["error"]["type"]) == (403, "permission_denied")
    assert operator.status_code == 200 and "jobgate_queue_depth" in operator.text


async def test_metrics_are_open_by_default(settings: Settings) -> None:
    async with in_process_api(settings) as client:
        answer = await client.get("/metrics")

    assert answer.status_code == 200 and "jobgate_queue_depth" in answer.text
