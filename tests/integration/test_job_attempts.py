"""`GET /v1/jobs/{id}/attempts`: the job's record of every call it made."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import InlineWorker


async def test_attempt_log_names_the_target_that_answered_and_its_latency(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, upstream_model: str
) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "log my attempts"}], "cache": False}
    job = (await api_client.post("/v1/jobs", json=body)).json()
    await asyncio.to_thread(inline_worker.run, job["id"])

    response = await api_client.get(f"/v1/jobs/{job['id']}/attempts")

    assert response.status_code == 200
    attempts = response.json()["data"]
    assert len(attempts) == 1
    assert attempts[0]["outcome"] == "succeeded"
    assert attempts[0]["model"] == upstream_model
    assert attempts[0]["attempt"] == 1
    assert attempts[0]["latency_ms"] >= 0


async def test_attempt_log_of_another_tenants_job_is_not_found(
    api_client: httpx.AsyncClient, make_key, settings
) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "private"}]}
    job = (await api_client.post("/v1/jobs", json=body)).json()
    other = make_key("tenant-b")
    response = await api_client.get(
        f"/v1/jobs/{job['id']}/attempts", headers={"Authorization": f"Bearer {other}"}
    )
    assert response.status_code == 404
