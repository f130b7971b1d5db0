"""`/v1/jobs` against real Redis and SQL (SQLite and Postgres): submit, read, wait, cancel, list.

Jobs run when the test says so, through the real executor in this process (`inline_worker`),
against the simulated upstream; each test routes the `fast` alias to its own upstream model,
so the sim's per-model counters are this test's alone.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, update

from api.waiting import RECHECK_S
from core.services.execute import Outcome
from core.services.runtime import MIN_REDELAY_S
from core.store.models import Job
from tests.api_calls import job_body, submit
from tests.conftest import InlineWorker, sim_calls, sqlite_only
from tests.sim_process import SimHandle


def answer_text(job: dict[str, Any]) -> str:
    text: str = job["result"]["choices"][0]["message"]["content"]
    return text


async def test_submitted_job_is_queued_with_its_location(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post("/v1/jobs", json=job_body(metadata={"team": "search"}))

    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["id"].startswith("job_")
    assert job["object"] == "job"
    assert job["status"] == "queued"
    assert job["model"] == "fast"
    assert job["priority"] == "interactive"
    assert job["metadata"] == {"team": "search"}
    assert job["attempts"] == 0
    assert job["result"] is None and job["error"] is None
    assert job["created_at"].endswith("Z")


async def test_job_run_by_the_executor_reads_back_succeeded_with_the_echo(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    job = await submit(api_client, "What is two plus two?")

    outcome = await asyncio.to_thread(inline_worker.run, job["id"])

    assert outcome.status == "succeeded"
    done = (await api_client.get(f"/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded"
    assert answer_text(done) == "echo: What is two plus two?"
    assert done["result"]["object"] == "chat.completion"
    assert done["attempts"] == 1
    assert done["error"] is None
    assert done["served_by"] == {"provider": "sim", "model": upstream_model}
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    assert float(done["cost_usd"]) > 0
    assert done["started_at"] is not None and done["finished_at"] is not None
    assert sim_calls(sim, upstream_model) == 1


async def test_repeating_a_request_with_its_idempotency_key_returns_the_same_job(
    api_client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "order-17"}
    first = await api_client.post("/v1/jobs", json=job_body("once"), headers=headers)
    again = await api_client.post("/v1/jobs", json=job_body("once"), headers=headers)

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    listed = (await api_client.get("/v1/jobs")).json()
    assert [job["id"] for job in listed["data"]] == [first.json()["id"]]


async def test_idempotency_key_reused_with_another_body_is_a_conflict(api_client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "order-18"}
    first = await api_client.post("/v1/jobs", json=job_body("first"), headers=headers)
    other = await api_client.post("/v1/jobs", json=job_body("second"), headers=headers)

    assert first.status_code == 202
    assert other.status_code == 409
    assert other.json()["error"]["type"] == "conflict_error"
    assert other.json()["error"]["param"] == "Idempotency-Key"


async def test_long_poll_answers_as_soon_as_the_job_finishes(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    # The upstream takes 0.3 s, so the waiter is surely waiting when the job finishes.
    sim.configure(models={upstream_model: {"latency_ms": 300}})
    job = await submit(api_client, "wake me")

    started = time.monotonic()
    waiting = asyncio.create_task(api_client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}))
    await asyncio.to_thread(inline_worker.run, job["id"])
    response = await asyncio.wait_for(waiting, timeout=RECHECK_S + 5)
    elapsed_s = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    # Woken by the job-done notification, not by the periodic SQL re-read (nor the 30 s).
    assert elapsed_s < RECHECK_S


@sqlite_only
async def test_long_poll_on_an_unfinished_job_answers_it_queued_after_the_wait(
    api_client: httpx.AsyncClient,
) -> None:
    job = await submit(api_client)

    started = time.monotonic()
    response = await api_client.get(f"/v1/jobs/{job['id']}", params={"wait": 0.5})
    elapsed_s = time.monotonic() - started

    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    assert 0.4 < elapsed_s < 3


@sqlite_only
async def test_long_poll_longer_than_sixty_seconds_is_refused(api_client: httpx.AsyncClient) -> None:
    job = await submit(api_client)

    response = await api_client.get(f"/v1/jobs/{job['id']}", params={"wait": 61})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "wait"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_early_message_on_a_worker_whose_clock_runs_ahead_is_put_back_not_dropped(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    job = await submit(api_client, "not yet")
    with inline_worker.sessions() as session:  # due in 5 s by the database's clock
        session.execute(
            update(Job).where(Job.id == job["id"]).values(not_before=func.now() + timedelta(seconds=5))
        )
        session.commit()
    inline_worker.runtime.clock.utcnow = lambda: datetime.now(UTC) + timedelta(seconds=10)

    outcome = await asyncio.to_thread(inline_worker.run, job["id"])

    # Its own clock says the job is due, the database's that it is not: the message comes back
    # shortly instead of being dropped (which left the job to the sweeper, 30-60 s later).
    assert outcome == Outcome("requeued", delay_s=MIN_REDELAY_S)
    assert (await api_client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "queued"


async def test_job_cancelled_before_it_runs_is_never_sent_upstream(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    job = await submit(api_client, "never mind")

    cancelled = await api_client.post(f"/v1/jobs/{job['id']}/cancel")
    outcome = await asyncio.to_thread(inline_worker.run, job["id"])

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["type"] == "cancelled"
    assert outcome.status == "skipped"
    after = (await api_client.get(f"/v1/jobs/{job['id']}")).json()
    assert after["status"] == "cancelled"
    assert after["attempts"] == 0
    assert sim_calls(sim, upstream_model) == 0


async def test_cancelling_a_finished_job_leaves_it_as_it_was(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    job = await submit(api_client, "done already")
    await asyncio.to_thread(inline_worker.run, job["id"])
    finished = (await api_client.get(f"/v1/jobs/{job['id']}")).json()

    response = await api_client.post(f"/v1/jobs/{job['id']}/cancel")

    assert response.status_code == 200
    assert response.json() == finished


@sqlite_only
async def test_unknown_job_id_is_not_found(api_client: httpx.AsyncClient) -> None:
    for response in (
        await api_client.get("/v1/jobs/job_doesnotexist"),
        await api_client.post("/v1/jobs/job_doesnotexist/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"


async def test_job_list_pages_newest_first_with_a_cursor(api_client: httpx.AsyncClient) -> None:
    ids = [(await submit(api_client, f"prompt {i}"))["id"] for i in range(5)]
    newest_first = list(reversed(ids))

    first = (await api_client.get("/v1/jobs", params={"limit": 2})).json()
    second = (await api_client.get("/v1/jobs", params={"limit": 2, "after": first["last_id"]})).json()
    third = (await api_client.get("/v1/jobs", params={"limit": 2, "after": second["last_id"]})).json()

    assert first["object"] == "list"
    assert [job["id"] for job in first["data"]] == newest_first[0:2]
    assert first["has_more"] is True and first["last_id"] == newest_first[1]
    assert [job["id"] for job in second["data"]] == newest_first[2:4]
    assert second["has_more"] is True
    assert [job["id"] for job in third["data"]] == newest_first[4:5]
    assert third["has_more"] is False and third["last_id"] == newest_first[4]


@sqlite_only
async def test_job_list_defaults_to_twenty(api_client: httpx.AsyncClient) -> None:
    for i in range(21):
        await submit(api_client, f"prompt {i}")

    page = (await api_client.get("/v1/jobs")).json()

    assert len(page["data"]) == 20
    assert page["has_more"] is True


async def test_job_list_filters_by_status_and_batch(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    ran = await submit(api_client, "run me")
    cancelled = await submit(api_client, "cancel me")
    queued = await submit(api_client, "leave me")
    await asyncio.to_thread(inline_worker.run, ran["id"])
    await api_client.post(f"/v1/jobs/{cancelled['id']}/cancel")
    batch = (
        await api_client.post(
            "/v1/batches", json={"requests": [{"custom_id": "only", "body": job_body("in a batch")}]}
        )
    ).json()

    async def listed(**params: Any) -> list[str]:
        response = await api_client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["data"]]

    batch_jobs = await listed(batch_id=batch["id"])
    assert len(batch_jobs) == 1
    assert await listed(status="succeeded") == [ran["id"]]
    assert await listed(status="cancelled") == [cancelled["id"]]
    assert await listed(status="queued") == [batch_jobs[0], queued["id"]]
    assert await listed(status="queued", batch_id=batch["id"]) == batch_jobs
    assert await listed(status="running") == []


@sqlite_only
async def test_job_list_limit_outside_one_to_a_hundred_is_refused(api_client: httpx.AsyncClient) -> None:
    for limit in (0, 101):
        response = await api_client.get("/v1/jobs", params={"limit": limit})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "limit"


@sqlite_only
async def test_job_list_with_an_unknown_status_is_refused(api_client: httpx.AsyncClient) -> None:
    response = await api_client.get("/v1/jobs", params={"status": "finished"})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "status"
