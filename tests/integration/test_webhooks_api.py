"""The webhook API against real SQL (SQLite and Postgres) and Redis: endpoints, secrets,
delivery logs, hand-made retries, and the SSRF guard at submission.

The API runs in this process (`api_client`); nothing is delivered here (see
`test_webhook_delivery.py`). Webhook URLs name a public host (`hooks.example.com`), so they
pass the submission check without DNS, except where a test shows a forbidden one refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from core.redis.keys import Keys
from core.settings import Settings
from core.webhooks.admin import MAX_ENDPOINTS
from core.webhooks.outbox import EVENT_TYPES
from tests.api_calls import job_body
from tests.conftest import bearer, in_process_api

HOOK_URL = "https://hooks.example.com/jobgate"

FORBIDDEN_URLS = {
    "ipv4 loopback": "https://127.0.0.1/hook",
    "ipv6 loopback": "https://[::1]/hook",
    "10/8 private": "https://10.20.30.40/hook",
    "172.16/12 private": "https://172.16.0.1/hook",
    "192.168/16 private": "https://192.168.1.10/hook",
    "cloud metadata": "https://169.254.169.254/latest/meta-data/",
    "ipv6 unique local fd00::/8": "https://[fd00::1]/hook",
    "unspecified 0.0.0.0": "https://0.0.0.0/hook",
    "localhost": "https://localhost/hook",
    "localhost with a trailing dot": "https://localhost./hook",
    "a localhost subdomain": "https://api.localhost/hook",
}


async def create_endpoint(client: httpx.AsyncClient, url: str = HOOK_URL, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/webhook-endpoints", json={"url": url, **extra})
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


def assert_refused(response: httpx.Response, param: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    message: str = error["message"]
    return message


# --- Endpoints --------------------------------------------------------------------------------


async def test_endpoint_is_created_enabled_with_its_whsec_secret(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post(
        "/v1/webhook-endpoints",
        json={"url": HOOK_URL, "events": ["job.failed", "batch.completed"], "description": "alerts"},
    )

    assert response.status_code == 201
    endpoint = response.json()
    assert endpoint["id"].startswith("we_")
    assert endpoint["url"] == HOOK_URL
    assert endpoint["events"] == ["job.failed", "batch.completed"]
    assert endpoint["description"] == "alerts"
    assert endpoint["enabled"] is True
    assert endpoint["disabled_reason"] is None
    assert endpoint["created_at"].endswith("Z")
    assert endpoint["secret"].startswith("whsec_")


async def test_endpoint_reads_never_show_the_secret_but_its_own_route_does(
    api_client: httpx.AsyncClient,
) -> None:
    created = await create_endpoint(api_client)

    one = (await api_client.get(f"/v1/webhook-endpoints/{created['id']}")).json()
    listed = (await api_client.get("/v1/webhook-endpoints")).json()
    secret = await api_client.get(f"/v1/webhook-endpoints/{created['id']}/secret")

    assert "secret" not in one
    assert listed["object"] == "list"
    assert [e["id"] for e in listed["data"]] == [created["id"]]
    assert "secret" not in listed["data"][0]
    assert secret.status_code == 200
    assert secret.json() == {"secret": created["secret"]}


async def test_endpoint_with_an_unknown_event_type_is_refused_naming_events(
    api_client: httpx.AsyncClient,
) -> None:
    response = await api_client.post("/v1/webhook-endpoints", json={"url": HOOK_URL, "events": ["job.done"]})

    message = assert_refused(response, "events")
    assert "job.done" in message
    assert (await api_client.get("/v1/webhook-endpoints")).json()["data"] == []


async def test_endpoint_events_are_kept_once_each_and_bounded(api_client: httpx.AsyncClient) -> None:
    repeated = await create_endpoint(api_client, events=["job.failed", "job.failed", "batch.completed"])
    too_many = await api_client.post(
        "/v1/webhook-endpoints", json={"url": HOOK_URL, "events": ["job.failed"] * (len(EVENT_TYPES) + 1)}
    )

    assert repeated["events"] == ["job.failed", "batch.completed"]
    assert_refused(too_many, "events")


async def test_a_tenant_has_at_most_max_endpoints_until_it_deletes_one(api_client: httpx.AsyncClient) -> None:
    endpoints = [await create_endpoint(api_client, f"{HOOK_URL}/{n}") for n in range(MAX_ENDPOINTS)]

    refused = await api_client.post("/v1/webhook-endpoints", json={"url": f"{HOOK_URL}/one-more"})
    await api_client.delete(f"/v1/webhook-endpoints/{endpoints[0]['id']}")
    await create_endpoint(api_client, f"{HOOK_URL}/instead")

    assert f"at most {MAX_ENDPOINTS} webhook endpoints" in assert_refused(refused, "url")
    assert len((await api_client.get("/v1/webhook-endpoints")).json()["data"]) == MAX_ENDPOINTS


async def test_endpoint_patch_changes_only_the_fields_given(api_client: httpx.AsyncClient) -> None:
    created = await create_endpoint(api_client, events=["job.failed"], description="before")

    response = await api_client.patch(
        f"/v1/webhook-endpoints/{created['id']}", json={"events": ["job.succeeded"]}
    )

    assert response.status_code == 200
    patched = response.json()
    assert patched["events"] == ["job.succeeded"]
    assert patched["description"] == "before"
    assert patched["url"] == HOOK_URL
    assert patched["enabled"] is True


async def test_deleted_endpoint_disappears_from_reads_and_the_list(api_client: httpx.AsyncClient) -> None:
    created = await create_endpoint(api_client)

    deleted = await api_client.delete(f"/v1/webhook-endpoints/{created['id']}")

    assert deleted.status_code == 200
    assert deleted.json() == {"id": created["id"], "object": "webhook_endpoint", "deleted": True}
    assert (await api_client.get(f"/v1/webhook-endpoints/{created['id']}")).status_code == 404
    assert (await api_client.get(f"/v1/webhook-endpoints/{created['id']}/secret")).status_code == 404
    assert (await api_client.get("/v1/webhook-endpoints")).json()["data"] == []


async def test_another_tenants_endpoint_is_not_found_on_every_route(
    api_client: httpx.AsyncClient, make_key: Callable[[str], str]
) -> None:
    theirs = await create_endpoint(api_client)
    other = bearer(make_key("tenant-b"))
    base = f"/v1/webhook-endpoints/{theirs['id']}"

    answers = [
        await api_client.get(base, headers=other),
        await api_client.patch(base, json={"enabled": False}, headers=other),
        await api_client.get(f"{base}/secret", headers=other),
        await api_client.post(f"{base}/rotate-secret", headers=other),
        await api_client.delete(base, headers=other),
    ]

    assert [a.status_code for a in answers] == [404] * 5
    assert (await api_client.get("/v1/webhook-endpoints", headers=other)).json()["data"] == []
    still = (await api_client.get(base)).json()
    assert still["enabled"] is True
    secret = (await api_client.get(f"{base}/secret")).json()["secret"]
    assert secret == theirs["secret"]


# --- Secrets ----------------------------------------------------------------------------------


async def test_rotating_an_endpoint_secret_answers_the_new_one_which_its_secret_route_then_shows(
    api_client: httpx.AsyncClient,
) -> None:
    created = await create_endpoint(api_client)

    rotated = await api_client.post(f"/v1/webhook-endpoints/{created['id']}/rotate-secret")

    assert rotated.status_code == 200
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != created["secret"]
    current = await api_client.get(f"/v1/webhook-endpoints/{created['id']}/secret")
    assert current.json() == {"secret": new_secret}


async def test_tenant_secret_is_the_same_on_every_read_until_rotated(
    api_client: httpx.AsyncClient, make_key: Callable[[str], str]
) -> None:
    first = (await api_client.get("/v1/webhook-secret")).json()["secret"]
    again = (await api_client.get("/v1/webhook-secret")).json()["secret"]
    other_tenant = (await api_client.get("/v1/webhook-secret", headers=bearer(make_key("tenant-b")))).json()

    rotated = await api_client.post("/v1/webhook-secret/rotate")
    after = (await api_client.get("/v1/webhook-secret")).json()["secret"]

    assert first.startswith("whsec_") and again == first
    assert other_tenant["secret"] != first
    assert rotated.status_code == 200
    assert rotated.json()["secret"] == after != first


# --- Delivery logs and hand-made retries (what the API shows; sending is tested elsewhere) --------


async def test_job_without_webhooks_has_an_empty_delivery_log(api_client: httpx.AsyncClient) -> None:
    job = (await api_client.post("/v1/jobs", json=job_body())).json()

    response = await api_client.get(f"/v1/jobs/{job['id']}/deliveries")

    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}


async def test_another_tenants_job_deliveries_are_not_found(
    api_client: httpx.AsyncClient, make_key: Callable[[str], str]
) -> None:
    job = (await api_client.post("/v1/jobs", json=job_body(webhook_url=HOOK_URL))).json()

    response = await api_client.get(f"/v1/jobs/{job['id']}/deliveries", headers=bearer(make_key("tenant-b")))

    assert response.status_code == 404


async def test_retrying_an_unknown_delivery_is_not_found(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post("/v1/webhook-deliveries/dlv_nope/retry")

    assert response.status_code == 404
    assert response.json()["error"]["param"] == "delivery_id"


async def test_cancelled_job_logs_its_pending_delivery_and_a_hand_retry_queues_it_for_the_workers(
    api_client: httpx.AsyncClient,
    settings: Settings,
    redis_client: redis.Redis,
    make_key: Callable[[str], str],
) -> None:
    job = (await api_client.post("/v1/jobs", json=job_body(webhook_url=HOOK_URL))).json()
    await api_client.post(f"/v1/jobs/{job['id']}/cancel")

    log = (await api_client.get(f"/v1/jobs/{job['id']}/deliveries")).json()["data"]
    assert len(log) == 1
    delivery = log[0]
    assert delivery["id"].startswith("dlv_")
    assert delivery["event_type"] == "job.cancelled"
    assert delivery["webhook_id"].startswith("msg_")
    assert delivery["endpoint_id"] is None
    assert delivery["url"] == HOOK_URL
    assert delivery["status"] == "pending"
    assert delivery["attempts"] == []

    elsewhere = await api_client.post(
        f"/v1/webhook-deliveries/{delivery['id']}/retry", headers=bearer(make_key("tenant-b"))
    )
    retried = await api_client.post(f"/v1/webhook-deliveries/{delivery['id']}/retry")

    assert elsewhere.status_code == 404
    assert retried.status_code == 202
    assert retried.json()["id"] == delivery["id"]
    assert retried.json()["status"] == "pending"
    messages = f"{Keys(settings.redis_prefix).broker_namespace}:webhooks.msgs"
    assert redis_client.hexists(messages, delivery["id"])


# --- The SSRF guard at submission -------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("url", list(FORBIDDEN_URLS.values()), ids=list(FORBIDDEN_URLS))
async def test_forbidden_webhook_address_is_refused_at_submission_and_nothing_is_stored(
    api_client: httpx.AsyncClient, url: str
) -> None:
    job = await api_client.post("/v1/jobs", json=job_body(webhook_url=url))
    batch = await api_client.post(
        "/v1/batches", json={"requests": [{"custom_id": "a", "body": job_body()}], "webhook_url": url}
    )
    endpoint = await api_client.post("/v1/webhook-endpoints", json={"url": url})

    assert_refused(job, "webhook_url")
    assert_refused(batch, "webhook_url")
    assert_refused(endpoint, "url")
    assert (await api_client.get("/v1/jobs")).json()["data"] == []
    assert (await api_client.get("/v1/batches")).json()["data"] == []
    assert (await api_client.get("/v1/webhook-endpoints")).json()["data"] == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_endpoint_cannot_be_moved_to_a_forbidden_address(api_client: httpx.AsyncClient) -> None:
    created = await create_endpoint(api_client)

    response = await api_client.patch(
        f"/v1/webhook-endpoints/{created['id']}", json={"url": "https://10.0.0.1/hook"}
    )

    assert_refused(response, "url")
    assert (await api_client.get(f"/v1/webhook-endpoints/{created['id']}")).json()["url"] == HOOK_URL


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_plain_http_and_loopback_webhooks_are_accepted_only_when_private_addresses_are_allowed(
    api_client: httpx.AsyncClient, settings: Settings, api_key: str
) -> None:
    local = "http://127.0.0.1:9999/hook"

    refused = await api_client.post("/v1/jobs", json=job_body(webhook_url="http://hooks.example.com/hook"))
    message = assert_refused(refused, "webhook_url")
    assert "https://" in message

    development = settings.model_copy(update={"webhook_allow_private": True})
    async with in_process_api(development, api_key) as client:
        accepted = await client.post("/v1/jobs", json=job_body(webhook_url=local))
        endpoint = await client.post("/v1/webhook-endpoints", json={"url": local})
        metadata = await client.post("/v1/jobs", json=job_body(webhook_url="http://169.254.169.254/"))

    assert accepted.status_code == 202, accepted.text
    assert endpoint.status_code == 201, endpoint.text
    # The cloud metadata service stays forbidden even in development.
    assert_refused(metadata, "webhook_url")
