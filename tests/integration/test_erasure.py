"""`DELETE /v1/jobs/{id}` and `DELETE /v1/batches/{id}` on SQLite and Postgres.

A deleted job or batch is gone for its tenant at once (every read answers 404, exactly as for
an id that never existed), its prompts and answers are erased from SQL, and what usage and
billing need stays, so `/v1/usage` does not move. Only final work can be deleted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from core.store.models import Batch, Job, JobAttempt, OpenAIBatch, StoredFile, WebhookDelivery
from tests.api_calls import job_body
from tests.conftest import InlineWorker, bearer

WEBHOOK_URL = "https://hooks.example.com/jobgate"  # never called: the inline worker only records


@pytest.fixture
def tenant_b(make_key: Callable[[str], str]) -> dict[str, str]:
    return bearer(make_key("tenant-b"))


def not_found_like_a_random_id(response: httpx.Response, random: httpx.Response, object_id: str) -> None:
    assert response.status_code == random.status_code == 404
    assert response.json() == _with_id(random.json(), "no-such-id", object_id)


def _with_id(body: Any, old: str, new: str) -> Any:
    if isinstance(body, dict):
        return {key: _with_id(value, old, new) for key, value in body.items()}
    return body.replace(old, new) if isinstance(body, str) else body


def job_row(worker: InlineWorker, job_id: str) -> Job:
    with worker.sessions() as session:
        job = session.execute(select(Job).where(Job.id == job_id)).scalar_one()
        session.expunge(job)
        return job


async def test_deleting_a_job_erases_its_content_and_keeps_its_usage(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    body = job_body("my secret prompt", webhook_url=WEBHOOK_URL, metadata={"patient": "p-17"})
    submitted = await api_client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    job_id = submitted.json()["id"]
    await asyncio.to_thread(inline_worker.run, job_id)
    usage = (await api_client.get("/v1/usage")).json()
    served = job_row(inline_worker, job_id)

    deleted = await api_client.delete(f"/v1/jobs/{job_id}")

    assert deleted.status_code == 200
    assert deleted.json() == {"id": job_id, "object": "job.deleted", "deleted": True}
    random = await api_client.get("/v1/jobs/no-such-id")
    for path in ("", "/attempts", "/deliveries"):
        not_found_like_a_random_id(await api_client.get(f"/v1/jobs/{job_id}{path}"), random, job_id)
    not_found_like_a_random_id(await api_client.delete(f"/v1/jobs/{job_id}"), random, job_id)
    assert (await api_client.get("/v1/jobs")).json()["data"] == []
    erased = job_row(inline_worker, job_id)
    assert (erased.request, erased.result, erased.error, erased.metadata_) == ({}, None, None, {})
    assert (erased.webhook_url, erased.idempotency_key, erased.request_hash) == (None, None, None)
    kept = ("status", "model", "served_model", "input_tokens", "output_tokens", "cost_usd", "finished_at")
    assert [getattr(erased, name) for name in kept] == [getattr(served, name) for name in kept]
    with inline_worker.sessions() as session:
        attempts = session.execute(select(JobAttempt.error_message).where(JobAttempt.job_id == job_id)).all()
        deliveries = session.execute(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id)).all()
    assert attempts == [(None,)] and deliveries == []
    assert {k: v for k, v in (await api_client.get("/v1/usage")).json().items() if k != "budgets"} == {
        k: v for k, v in usage.items() if k != "budgets"
    }
    again = await api_client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 202 and again.json()["id"] != job_id


async def test_a_job_not_yet_final_is_deleted_only_once_cancelled(api_client: httpx.AsyncClient) -> None:
    job_id = (await api_client.post("/v1/jobs", json=job_body("still queued"))).json()["id"]

    refused = await api_client.delete(f"/v1/jobs/{job_id}")

    assert refused.status_code == 409
    assert "cancel it first" in refused.json()["error"]["message"]
    assert (await api_client.get(f"/v1/jobs/{job_id}")).json()["status"] == "queued"
    assert (await api_client.post(f"/v1/jobs/{job_id}/cancel")).json()["status"] == "cancelled"
    assert (await api_client.delete(f"/v1/jobs/{job_id}")).status_code == 200
    assert (await api_client.get(f"/v1/jobs/{job_id}")).status_code == 404


async def test_another_tenants_job_and_batch_are_not_found_and_stay(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, tenant_b: dict[str, str]
) -> None:
    job_id = (await api_client.post("/v1/jobs", json=job_body("A's prompt"))).json()["id"]
    requests = [{"custom_id": "a", "body": job_body("A's batch prompt")}]
    batch_id = (await api_client.post("/v1/batches", json={"requests": requests})).json()["id"]
    await asyncio.to_thread(inline_worker.run_queued)

    job_random = await api_client.delete("/v1/jobs/no-such-id", headers=tenant_b)
    batch_random = await api_client.delete("/v1/batches/no-such-id", headers=tenant_b)
    not_found_like_a_random_id(
        await api_client.delete(f"/v1/jobs/{job_id}", headers=tenant_b), job_random, job_id
    )
    not_found_like_a_random_id(
        await api_client.delete(f"/v1/batches/{batch_id}", headers=tenant_b), batch_random, batch_id
    )

    assert (await api_client.get(f"/v1/jobs/{job_id}")).json()["result"] is not None
    assert (await api_client.get(f"/v1/batches/{batch_id}")).json()["status"] == "completed"


async def test_deleting_a_batch_erases_it_and_its_jobs_and_keeps_their_usage(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    requests = [{"custom_id": f"patient-{i}", "body": job_body(f"batch secret {i}")} for i in range(3)]
    options = {"requests": requests, "metadata": {"study": "s-4"}, "webhook_url": WEBHOOK_URL}
    batch_id = (await api_client.post("/v1/batches", json=options)).json()["id"]
    await asyncio.to_thread(inline_worker.run_queued)
    job_ids = [
        job["id"] for job in (await api_client.get("/v1/jobs", params={"batch_id": batch_id})).json()["data"]
    ]
    by_batch = (await api_client.get("/v1/usage", params={"group_by": "batch"})).json()

    deleted = await api_client.delete(f"/v1/batches/{batch_id}")

    assert deleted.json() == {"id": batch_id, "object": "batch.deleted", "deleted": True}
    random = await api_client.get("/v1/batches/no-such-id")
    for path in ("", "/results"):
        not_found_like_a_random_id(await api_client.get(f"/v1/batches/{batch_id}{path}"), random, batch_id)
    assert (await api_client.get("/v1/batches")).json()["data"] == []
    assert (await api_client.get("/v1/jobs", params={"batch_id": batch_id})).json()["data"] == []
    for job_id in job_ids:
        assert (await api_client.get(f"/v1/jobs/{job_id}")).status_code == 404
    with inline_worker.sessions() as session:
        batch = session.execute(select(Batch).where(Batch.id == batch_id)).scalar_one()
        jobs = session.execute(select(Job).where(Job.batch_id == batch_id)).scalars().all()
        deliveries = session.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.batch_id == batch_id)
        ).all()
    assert (batch.metadata_, batch.webhook_url, batch.erased_at is not None) == ({}, None, True)
    assert {(job.custom_id, job.result is None, str(job.request)) for job in jobs} == {(None, True, "{}")}
    assert all(job.status == "succeeded" and job.output_tokens for job in jobs)
    assert deliveries == []
    assert (await api_client.get("/v1/usage", params={"group_by": "batch"})).json()["data"] == by_batch[
        "data"
    ]


async def test_a_batch_with_queued_jobs_is_deleted_only_once_cancelled(api_client: httpx.AsyncClient) -> None:
    requests = [{"custom_id": f"r{i}", "body": job_body(f"waiting {i}")} for i in range(2)]
    batch_id = (await api_client.post("/v1/batches", json={"requests": requests})).json()["id"]

    refused = await api_client.delete(f"/v1/batches/{batch_id}")

    assert refused.status_code == 409 and "cancel it first" in refused.json()["error"]["message"]
    assert (await api_client.post(f"/v1/batches/{batch_id}/cancel")).json()["status"] == "cancelled"
    assert (await api_client.delete(f"/v1/batches/{batch_id}")).status_code == 200
    assert (await api_client.get(f"/v1/batches/{batch_id}")).status_code == 404


async def test_deleting_an_openai_batch_removes_its_record_and_result_files(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    line = {
        "custom_id": "q",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": job_body("openai secret"),
    }
    upload = await api_client.post(
        "/openai/v1/files",
        files={"file": ("input.jsonl", (json.dumps(line) + "\n").encode(), "application/jsonl")},
        data={"purpose": "batch"},
    )
    create = {
        "input_file_id": upload.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch_id = (await api_client.post("/openai/v1/batches", json=create)).json()["id"]
    await asyncio.to_thread(inline_worker.run_queued)
    output_file_id = (await api_client.get(f"/openai/v1/batches/{batch_id}")).json()["output_file_id"]
    assert output_file_id is not None

    assert (await api_client.delete(f"/v1/batches/{batch_id}")).status_code == 200

    assert (await api_client.get(f"/openai/v1/batches/{batch_id}")).status_code == 404
    assert (await api_client.get(f"/openai/v1/files/{output_file_id}")).status_code == 404
    with inline_worker.sessions() as session:
        assert session.execute(select(OpenAIBatch.id).where(OpenAIBatch.id == batch_id)).first() is None
        assert session.execute(select(StoredFile.id).where(StoredFile.id == output_file_id)).first() is None
    assert (await api_client.get(f"/openai/v1/files/{upload.json()['id']}")).status_code == 200
