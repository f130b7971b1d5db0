"""`/anthropic/v1/messages/batches` driven by the official `anthropic` SDK against the API in
this process; the test runs the batch's jobs with the real executor (`inline_worker`), so it
decides when each finishes, and the sim behind the alias `fast` decides how."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anthropic
import httpx
import httpx2
import pytest

from core.settings import Settings
from tests.conftest import IN_PROCESS_URL, InlineWorker, in_process_api
from tests.sim_process import SimHandle


@pytest.fixture
async def claude(settings: Settings, api_key: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with in_process_api(settings, http=httpx2) as http:
        yield anthropic.AsyncAnthropic(
            base_url=f"{IN_PROCESS_URL}/anthropic", api_key=api_key, http_client=http, max_retries=0
        )


def request(custom_id: str, text: str) -> dict[str, object]:
    return {
        "custom_id": custom_id,
        "params": {"model": "fast", "max_tokens": 32, "messages": [{"role": "user", "content": text}]},
    }


async def batch_job_ids(api_client: httpx.AsyncClient, batch_id: str) -> dict[str, str]:
    jobs = (await api_client.get("/v1/jobs", params={"batch_id": batch_id, "limit": 100})).json()["data"]
    return {job["custom_id"]: job["id"] for job in jobs}


async def test_create_poll_and_read_results_as_the_sdk_does(
    claude: anthropic.AsyncAnthropic,
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    sim: SimHandle,
    upstream_model: str,
) -> None:
    batch = await claude.messages.batches.create(
        requests=[request("a", "one"), request("b", "two"), request("c", "three")]  # type: ignore[list-item]
    )
    assert batch.id.startswith("msgbatch_") and batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 3 and batch.request_counts.succeeded == 0
    assert batch.results_url is None

    jobs = await batch_job_ids(api_client, batch.id)
    for custom_id in ("a", "b"):
        await asyncio.to_thread(inline_worker.run, jobs[custom_id])
    sim.configure(models={upstream_model: {"fail_rate": 1.0, "fail_status": 400}})
    await asyncio.to_thread(inline_worker.run, jobs["c"])

    ended = await claude.messages.batches.retrieve(batch.id)
    assert ended.processing_status == "ended" and ended.ended_at is not None
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled) == (0, 2, 1, 0)
    results = {line.custom_id: line.result async for line in await claude.messages.batches.results(batch.id)}
    assert {k: r.type for k, r in results.items()} == {"a": "succeeded", "b": "succeeded", "c": "errored"}
    assert results["a"].message.content[0].text == "echo: one"  # type: ignore[union-attr]
    assert results["c"].error.error.type == "invalid_request_error"  # type: ignore[union-attr]


async def test_a_cancelled_batch_ends_with_its_requests_canceled(
    claude: anthropic.AsyncAnthropic, inline_worker: InlineWorker
) -> None:
    batch = await claude.messages.batches.create(requests=[request("x", "never"), request("y", "never")])  # type: ignore[list-item]

    cancelled = await claude.messages.batches.cancel(batch.id)

    assert cancelled.processing_status == "ended" and cancelled.cancel_initiated_at is not None
    assert cancelled.request_counts.canceled == 2
    results = [line.result.type async for line in await claude.messages.batches.results(batch.id)]
    assert results == ["canceled", "canceled"]


async def test_listing_shows_message_batches_newest_first_and_pages(
    claude: anthropic.AsyncAnthropic, api_client: httpx.AsyncClient
) -> None:
    made = [(await claude.messages.batches.create(requests=[request("r", str(i))])).id for i in range(3)]  # type: ignore[list-item]
    own = await api_client.post(
        "/v1/batches",
        json={
            "requests": [
                {"custom_id": "j", "body": {"model": "fast", "messages": [{"role": "user", "content": "x"}]}}
            ]
        },
    )
    assert own.status_code == 201

    first = await claude.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    every = [b.id async for b in await claude.messages.batches.list(limit=2)]
    assert every == made[::-1]


async def test_unfinished_results_and_foreign_ids_are_refused_in_anthropics_shape(
    claude: anthropic.AsyncAnthropic, api_client: httpx.AsyncClient
) -> None:
    batch = await claude.messages.batches.create(requests=[request("p", "pending")])  # type: ignore[list-item]

    early = await api_client.get(f"/anthropic/v1/messages/batches/{batch.id}/results")
    missing = await api_client.get("/anthropic/v1/messages/batches/batch_0000")

    assert early.status_code == 409 and early.json()["type"] == "error"
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


async def test_a_request_jobgate_cannot_run_refuses_the_batch_naming_it(
    claude: anthropic.AsyncAnthropic,
) -> None:
    bad = request("t", "read this")
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    bad["params"]["messages"] = [{"role": "user", "content": [document]}]  # type: ignore[index]

    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.batches.create(requests=[request("ok", "fine"), bad])  # type: ignore[list-item]

    assert "Request 2" in refused.value.message


async def test_a_repeat_with_the_same_idempotency_key_is_the_same_batch(
    claude: anthropic.AsyncAnthropic,
) -> None:
    requests = [request("k", "once")]
    key = {"Idempotency-Key": "msgbatch-key"}

    first = await claude.messages.batches.create(requests=requests, extra_headers=key)  # type: ignore[arg-type]
    again = await claude.messages.batches.create(requests=requests, extra_headers=key)  # type: ignore[arg-type]

    assert again.id == first.id
    assert [b.id async for b in await claude.messages.batches.list()] == [first.id]
