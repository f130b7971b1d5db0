"""Tenant isolation on SQLite and Postgres: one tenant never reads, lists or changes another's work.

Tenant B, with a valid key of its own, asks for tenant A's jobs and batches by id; the API
answers exactly as it does for an id that does not exist (404, never 403: CONTRACT.md), and
A's work is untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import InlineWorker, bearer


def job_body(prompt: str = "Hello") -> dict[str, Any]:
    return {"model": "fast", "messages": [{"role": "user", "content": prompt}]}


@pytest.fixture
def tenant_b(make_key: Callable[[str], str]) -> dict[str, str]:
    """Request headers of tenant B (the `api_client`'s own key is tenant A's)."""
    return bearer(make_key("tenant-b"))


@pytest.fixture
async def a_job(api_client: httpx.AsyncClient) -> dict[str, Any]:
    response = await api_client.post("/v1/jobs", json=job_body("A's secret prompt"))
    assert response.status_code == 202
    job: dict[str, Any] = response.json()
    return job


@pytest.fixture
async def a_batch(api_client: httpx.AsyncClient) -> dict[str, Any]:
    requests = [{"custom_id": f"a-{i}", "body": job_body(f"A's prompt {i}")} for i in range(3)]
    response = await api_client.post("/v1/batches", json={"requests": requests})
    assert response.status_code == 201
    batch: dict[str, Any] = response.json()
    return batch


def assert_not_found(response: httpx.Response, param: str) -> None:
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert response.json()["error"]["param"] == param


async def test_tenant_cannot_read_another_tenants_job(
    api_client: httpx.AsyncClient, tenant_b: dict[str, str], a_job: dict[str, Any]
) -> None:
    stolen = await api_client.get(f"/v1/jobs/{a_job['id']}", headers=tenant_b)
    waited = await api_client.get(f"/v1/jobs/{a_job['id']}", params={"wait": 5}, headers=tenant_b)

    assert_not_found(stolen, "job_id")
    assert_not_found(waited, "job_id")
    assert "secret" not in stolen.text


async def test_another_tenants_job_looks_exactly_like_a_missing_one(
    api_client: httpx.AsyncClient, tenant_b: dict[str, str], a_job: dict[str, Any]
) -> None:
    missing_id = a_job["id"][:-4] + "zzzz"

    stolen = await api_client.get(f"/v1/jobs/{a_job['id']}", headers=tenant_b)
    missing = await api_client.get(f"/v1/jobs/{missing_id}", headers=tenant_b)

    assert stolen.status_code == missing.status_code == 404
    assert stolen.json()["error"]["message"].replace(a_job["id"], "ID") == missing.json()["error"][
        "message"
    ].replace(missing_id, "ID")


async def test_tenant_cannot_cancel_another_tenants_job(
    api_client: httpx.AsyncClient,
    tenant_b: dict[str, str],
    a_job: dict[str, Any],
    inline_worker: InlineWorker,
) -> None:
    response = await api_client.post(f"/v1/jobs/{a_job['id']}/cancel", headers=tenant_b)
    outcome = await asyncio.to_thread(inline_worker.run, a_job["id"])

    assert_not_found(response, "job_id")
    assert outcome.status == "succeeded"
    assert (await api_client.get(f"/v1/jobs/{a_job['id']}")).json()["status"] == "succeeded"


async def test_tenant_lists_only_its_own_jobs(
    api_client: httpx.AsyncClient, tenant_b: dict[str, str], a_job: dict[str, Any], a_batch: dict[str, Any]
) -> None:
    b_job = (await api_client.post("/v1/jobs", json=job_body("B's prompt"), headers=tenant_b)).json()

    async def listed(headers: dict[str, str] | None = None, **params: Any) -> list[str]:
        page = (await api_client.get("/v1/jobs", params=params, headers=headers)).json()
        return [job["id"] for job in page["data"]]

    assert await listed(tenant_b) == [b_job["id"]]
    assert await listed(tenant_b, status="queued") == [b_job["id"]]
    assert await listed(tenant_b, batch_id=a_batch["id"]) == []
    assert await listed(tenant_b, after="job_zzzzzzzzzzzzzzzzzzzzzzzzzz") == [b_job["id"]]
    assert b_job["id"] not in await listed()
    assert a_job["id"] in await listed()


async def test_tenant_cannot_read_another_tenants_batch_or_its_results(
    api_client: httpx.AsyncClient, tenant_b: dict[str, str], a_batch: dict[str, Any]
) -> None:
    batch = await api_client.get(f"/v1/batches/{a_batch['id']}", headers=tenant_b)
    results = await api_client.get(f"/v1/batches/{a_batch['id']}/results", headers=tenant_b)

    assert_not_found(batch, "batch_id")
    assert_not_found(results, "batch_id")
    assert "prompt" not in results.text


async def test_tenant_cannot_cancel_another_tenants_batch(
    api_client: httpx.AsyncClient, tenant_b: dict[str, str], a_batch: dict[str, Any]
) -> None:
    response = await api_client.post(f"/v1/batches/{a_batch['id']}/cancel", headers=tenant_b)

    assert_not_found(response, "batch_id")
    untouched = (await api_client.get(f"/v1/batches/{a_batch['id']}")).json()
    assert untouched["status"] == "in_progress"
    assert untouched["counts"]["queued"] == 3 and untouched["counts"]["cancelled"] == 0


async def test_tenant_lists_only_its_own_batches(
    api_client: httpx.AsyncClient, tenant_b: dict[str, str], a_batch: dict[str, Any]
) -> None:
    b_requests = [{"custom_id": "b-0", "body": job_body("B's prompt")}]
    b_batch = (await api_client.post("/v1/batches", json={"requests": b_requests}, headers=tenant_b)).json()

    b_list = (await api_client.get("/v1/batches", headers=tenant_b)).json()
    a_list = (await api_client.get("/v1/batches")).json()

    assert [batch["id"] for batch in b_list["data"]] == [b_batch["id"]]
    assert [batch["id"] for batch in a_list["data"]] == [a_batch["id"]]


async def test_idempotency_keys_belong_to_one_tenant(
    api_client: httpx.AsyncClient, tenant_b: dict[str, str]
) -> None:
    key = {"Idempotency-Key": "shared-key"}

    a_job = await api_client.post("/v1/jobs", json=job_body("A's body"), headers=key)
    b_job = await api_client.post("/v1/jobs", json=job_body("B's body"), headers={**key, **tenant_b})
    b_again = await api_client.post("/v1/jobs", json=job_body("B's body"), headers={**key, **tenant_b})

    assert a_job.status_code == 202
    assert b_job.status_code == 202
    assert b_job.json()["id"] != a_job.json()["id"]
    assert b_again.status_code == 200 and b_again.json()["id"] == b_job.json()["id"]
