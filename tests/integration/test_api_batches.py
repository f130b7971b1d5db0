"""`/v1/batches` against real Redis and SQL (SQLite and Postgres): upload, counts, results, cancel.

A batch is all or nothing: every line is validated before anything is stored. Jobs run when
the test says so, through the real executor in this process (`inline_worker`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from core.settings import Settings
from tests.conftest import InlineWorker, in_process_api, sim_calls, sqlite_only
from tests.sim_process import SimHandle

MAX_BATCH_REQUESTS = 8


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_batch_requests": MAX_BATCH_REQUESTS})


def line(custom_id: str, prompt: str | None = None, **body: Any) -> dict[str, Any]:
    content = prompt if prompt is not None else f"prompt for {custom_id}"
    return {
        "custom_id": custom_id,
        "body": {"model": "fast", "messages": [{"role": "user", "content": content}], **body},
    }


def ndjson(lines: list[Any]) -> bytes:
    return "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines).encode()


async def create_batch(client: httpx.AsyncClient, custom_ids: list[str], **options: Any) -> dict[str, Any]:
    response = await client.post("/v1/batches", json={"requests": [line(c) for c in custom_ids], **options})
    assert response.status_code == 201, response.text
    batch: dict[str, Any] = response.json()
    return batch


async def batch_jobs(client: httpx.AsyncClient, batch_id: str) -> dict[str, dict[str, Any]]:
    """The batch's jobs by custom_id."""
    page = (await client.get("/v1/jobs", params={"batch_id": batch_id, "limit": 100})).json()
    return {job["custom_id"]: job for job in page["data"]}


async def results(client: httpx.AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/batches/{batch_id}/results")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(text) for text in response.text.splitlines()]


async def assert_nothing_stored(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/batches")).json()["data"] == []
    assert (await client.get("/v1/jobs")).json()["data"] == []


async def test_json_batch_is_created_with_every_job_queued(api_client: httpx.AsyncClient) -> None:
    batch = await create_batch(api_client, ["a", "b", "c"], metadata={"run": "nightly"})

    assert batch["id"].startswith("batch_")
    assert batch["object"] == "batch"
    assert batch["status"] == "in_progress"
    assert batch["counts"] == {
        "total": 3, "queued": 3, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0
    }  # fmt: skip
    assert batch["metadata"] == {"run": "nightly"}
    assert batch["completed_at"] is None
    jobs = await batch_jobs(api_client, batch["id"])
    assert set(jobs) == {"a", "b", "c"}
    assert {job["priority"] for job in jobs.values()} == {"batch"}
    assert {job["batch_id"] for job in jobs.values()} == {batch["id"]}


async def test_ndjson_upload_takes_its_options_from_the_query_string(
    settings: Settings, make_key: Callable[..., str]
) -> None:
    async with in_process_api(settings, make_key("tenant-a", allow_interactive=True)) as api_client:
        await _upload_with_query_options(api_client)


async def test_a_batch_may_not_ask_for_interactive_priority_unless_its_key_allows_it(
    api_client: httpx.AsyncClient,
) -> None:
    as_option = await api_client.post(
        "/v1/batches", json={"requests": [line("a")], "priority": "interactive"}
    )
    in_a_line = await api_client.post("/v1/batches", json={"requests": [line("a", priority="interactive")]})

    for refused in (as_option, in_a_line):
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["type"] == "permission_denied"
        assert refused.json()["error"]["param"] == "priority"
    listed = await api_client.get("/v1/batches")
    assert listed.json()["data"] == []


async def _upload_with_query_options(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post(
        "/v1/batches",
        params={"priority": "interactive", "metadata": json.dumps({"source": "upload"})},
        content=ndjson([line("first"), "", line("second")]),
        headers={"Content-Type": "application/x-ndjson"},
    )

    assert response.status_code == 201, response.text
    batch = response.json()
    assert batch["counts"]["total"] == 2
    assert batch["priority"] == "interactive"
    assert batch["metadata"] == {"source": "upload"}
    jobs = await batch_jobs(api_client, batch["id"])
    assert set(jobs) == {"first", "second"}
    assert {job["priority"] for job in jobs.values()} == {"interactive"}


async def test_an_openai_batch_file_is_accepted_as_it_is(api_client: httpx.AsyncClient) -> None:
    # Lines as OpenAI's Batch API takes them: method and url beside custom_id and body.
    openai_lines = [{**line(name), "method": "POST", "url": "/v1/chat/completions"} for name in ("x", "y")]
    response = await api_client.post(
        "/v1/batches", content=ndjson(openai_lines), headers={"Content-Type": "application/x-ndjson"}
    )

    assert response.status_code == 201, response.text
    assert set(await batch_jobs(api_client, response.json()["id"])) == {"x", "y"}


@sqlite_only
async def test_an_openai_batch_line_for_another_endpoint_is_refused_naming_it(
    api_client: httpx.AsyncClient,
) -> None:
    other = {**line("e"), "method": "POST", "url": "/v1/embeddings"}
    response = await api_client.post("/v1/batches", json={"requests": [line("a"), other]})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "requests.1.url"
    await assert_nothing_stored(api_client)


@sqlite_only
async def test_ndjson_upload_with_an_unknown_query_option_is_refused(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post(
        "/v1/batches",
        params={"colour": "blue"},
        content=ndjson([line("a")]),
        headers={"Content-Type": "application/x-ndjson"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "colour"
    await assert_nothing_stored(api_client)


@sqlite_only
async def test_duplicate_custom_id_rejects_the_batch_naming_it(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post(
        "/v1/batches", json={"requests": [line("a"), line("twin"), line("b"), line("twin")]}
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert "'twin'" in error["message"]
    assert "Line 4" in error["message"]
    assert error["param"] == "requests.3.custom_id"
    await assert_nothing_stored(api_client)


async def test_one_bad_ndjson_line_rejects_the_batch_naming_its_line(api_client: httpx.AsyncClient) -> None:
    bad = {"custom_id": "c", "body": {"model": "fast", "messages": [], "colour": "blue"}}
    response = await api_client.post(
        "/v1/batches",
        content=ndjson([line("a"), line("b"), bad, line("d")]),
        headers={"Content-Type": "application/x-ndjson"},
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Line 3:")
    assert error["param"].startswith("line 3")
    await assert_nothing_stored(api_client)


@sqlite_only
async def test_ndjson_line_that_is_not_json_rejects_the_batch_naming_its_line(
    api_client: httpx.AsyncClient,
) -> None:
    response = await api_client.post(
        "/v1/batches",
        content=ndjson([line("a"), '{"custom_id": "b", "body": ', line("c")]),
        headers={"Content-Type": "application/x-ndjson"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Line 2:")
    assert response.json()["error"]["param"] == "line 2"
    await assert_nothing_stored(api_client)


@sqlite_only
async def test_json_batch_line_with_an_unknown_model_is_refused_naming_it(
    api_client: httpx.AsyncClient,
) -> None:
    response = await api_client.post("/v1/batches", json={"requests": [line("a"), line("b", model="gpt-17")]})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("Line 2:")
    assert "gpt-17" in error["message"] and "fast" in error["message"]
    assert error["param"] == "requests.1.body.model"
    await assert_nothing_stored(api_client)


@sqlite_only
async def test_batch_over_the_request_limit_is_refused(api_client: httpx.AsyncClient) -> None:
    custom_ids = [f"r{i}" for i in range(MAX_BATCH_REQUESTS + 1)]

    response = await api_client.post("/v1/batches", json={"requests": [line(c) for c in custom_ids]})

    assert response.status_code == 400
    assert str(MAX_BATCH_REQUESTS) in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "requests"
    await assert_nothing_stored(api_client)


@sqlite_only
async def test_batch_at_the_request_limit_is_accepted(api_client: httpx.AsyncClient) -> None:
    batch = await create_batch(api_client, [f"r{i}" for i in range(MAX_BATCH_REQUESTS)])

    assert batch["counts"]["total"] == MAX_BATCH_REQUESTS


@sqlite_only
async def test_empty_batch_is_refused(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post("/v1/batches", json={"requests": []})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "requests"


@sqlite_only
async def test_batch_in_another_content_type_is_refused(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post("/v1/batches", content=b"a,b,c", headers={"Content-Type": "text/csv"})

    assert response.status_code == 415
    assert response.json()["error"]["param"] == "Content-Type"


async def test_batch_counts_each_state_and_completes_when_every_job_is_final(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    batch = await create_batch(api_client, ["ok", "broken", "dropped", "later"])
    jobs = await batch_jobs(api_client, batch["id"])
    await asyncio.to_thread(inline_worker.run, jobs["ok"]["id"])
    sim.configure(models={upstream_model: {"fail_rate": 1, "fail_status": 400}})
    await asyncio.to_thread(inline_worker.run, jobs["broken"]["id"])
    sim.configure(models={upstream_model: None})
    await api_client.post(f"/v1/jobs/{jobs['dropped']['id']}/cancel")

    partway = (await api_client.get(f"/v1/batches/{batch['id']}")).json()
    await asyncio.to_thread(inline_worker.run, jobs["later"]["id"])
    done = (await api_client.get(f"/v1/batches/{batch['id']}")).json()

    assert partway["status"] == "in_progress"
    assert partway["counts"] == {
        "total": 4, "queued": 1, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 1
    }  # fmt: skip
    assert done["status"] == "completed"
    assert done["counts"] == {
        "total": 4, "queued": 0, "running": 0, "succeeded": 2, "failed": 1, "cancelled": 1
    }  # fmt: skip
    assert done["completed_at"] is not None
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    assert float(done["cost_usd"]) > 0


async def test_results_stream_final_jobs_in_submission_order(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    order = ["charlie", "alpha", "delta", "bravo"]
    batch = await create_batch(api_client, order)
    jobs = await batch_jobs(api_client, batch["id"])
    for custom_id in ("bravo", "charlie"):
        await asyncio.to_thread(inline_worker.run, jobs[custom_id]["id"])

    partial = await results(api_client, batch["id"])
    sim.configure(models={upstream_model: {"fail_rate": 1, "fail_status": 400}})
    await asyncio.to_thread(inline_worker.run, jobs["delta"]["id"])
    sim.configure(models={upstream_model: None})
    await asyncio.to_thread(inline_worker.run, jobs["alpha"]["id"])
    final = await results(api_client, batch["id"])

    assert [r["custom_id"] for r in partial] == ["charlie", "bravo"]
    assert [r["custom_id"] for r in final] == order
    by_id = {r["custom_id"]: r for r in final}
    for custom_id in ("charlie", "alpha", "bravo"):
        assert by_id[custom_id]["status"] == "succeeded"
        assert by_id[custom_id]["job_id"] == jobs[custom_id]["id"]
        assert by_id[custom_id]["error"] is None
        answer = by_id[custom_id]["result"]["choices"][0]["message"]["content"]
        assert answer == f"echo: prompt for {custom_id}"
    assert by_id["delta"]["status"] == "failed"
    assert by_id["delta"]["result"] is None
    assert by_id["delta"]["error"]["type"] == "bad_request"


async def test_cancelling_a_batch_cancels_its_queued_jobs_and_none_reach_the_upstream(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    batch = await create_batch(api_client, ["done", "q1", "q2"])
    jobs = await batch_jobs(api_client, batch["id"])
    await asyncio.to_thread(inline_worker.run, jobs["done"]["id"])

    response = await api_client.post(f"/v1/batches/{batch['id']}/cancel")
    outcomes = await asyncio.to_thread(inline_worker.run_queued)

    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"] == {
        "total": 3, "queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 2
    }  # fmt: skip
    assert cancelled["completed_at"] is not None
    assert outcomes == {}
    assert sim_calls(sim, upstream_model) == 1
    after = await batch_jobs(api_client, batch["id"])
    assert after["done"]["status"] == "succeeded"
    assert {after["q1"]["status"], after["q2"]["status"]} == {"cancelled"}


async def test_cancelling_a_finished_batch_leaves_it_completed(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    batch = await create_batch(api_client, ["one", "two"])
    await asyncio.to_thread(inline_worker.run_queued)
    completed = (await api_client.get(f"/v1/batches/{batch['id']}")).json()

    response = await api_client.post(f"/v1/batches/{batch['id']}/cancel")
    after = (await api_client.get(f"/v1/batches/{batch['id']}")).json()

    assert completed["status"] == "completed"
    assert response.status_code == 200
    assert response.json() == after == completed


async def test_batch_cancelled_while_a_job_runs_lets_that_job_finish(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    sim.configure(models={upstream_model: {"latency_ms": 500}})
    batch = await create_batch(api_client, ["running", "queued"])
    jobs = await batch_jobs(api_client, batch["id"])
    running = asyncio.create_task(asyncio.to_thread(inline_worker.run, jobs["running"]["id"]))
    deadline = time.monotonic() + 5
    while (await api_client.get(f"/v1/jobs/{jobs['running']['id']}")).json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started running"
        await asyncio.sleep(0.01)

    during = (await api_client.post(f"/v1/batches/{batch['id']}/cancel")).json()
    outcome = await asyncio.wait_for(running, timeout=10)
    after = (await api_client.get(f"/v1/batches/{batch['id']}")).json()

    assert during["status"] == "in_progress"
    assert during["counts"]["running"] == 1 and during["counts"]["cancelled"] == 1
    assert outcome.status == "succeeded"
    assert after["status"] == "cancelled"
    assert after["counts"]["succeeded"] == 1 and after["counts"]["cancelled"] == 1


async def test_batch_list_pages_newest_first(api_client: httpx.AsyncClient) -> None:
    ids = [(await create_batch(api_client, [f"only-{i}"]))["id"] for i in range(3)]

    first = (await api_client.get("/v1/batches", params={"limit": 2})).json()
    rest = (await api_client.get("/v1/batches", params={"limit": 2, "after": first["last_id"]})).json()

    assert [b["id"] for b in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True
    assert [b["id"] for b in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False


@sqlite_only
async def test_unknown_batch_id_is_not_found(api_client: httpx.AsyncClient) -> None:
    for response in (
        await api_client.get("/v1/batches/batch_doesnotexist"),
        await api_client.get("/v1/batches/batch_doesnotexist/results"),
        await api_client.post("/v1/batches/batch_doesnotexist/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"


async def test_a_batch_repeated_with_its_idempotency_key_is_the_first_batch(
    api_client: httpx.AsyncClient,
) -> None:
    upload = ndjson([line("a"), line("b")])
    headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": "nightly-2026-12-07"}

    first = await api_client.post("/v1/batches", content=upload, headers=headers)
    again = await api_client.post("/v1/batches", content=upload, headers=headers)
    other = await api_client.post("/v1/batches", content=ndjson([line("c")]), headers=headers)

    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["error"]["param"] == "Idempotency-Key"
    listed = (await api_client.get("/v1/batches")).json()["data"]
    assert [batch["id"] for batch in listed] == [first.json()["id"]]
