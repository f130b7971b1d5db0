"""`/anthropic/v1/messages/batches` driven by the official `anthropic` SDK against the API in
this process; the test runs the batch's jobs with the real executor (`inline_worker`), so it
decides when each finishes, and the sim behind the alias `fast` decides how. The 24 h window
is not waited for: a test moves the jobs' deadline into the past in SQL, then runs the sweeper
or a worker, as would happen a day later."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anthropic
import httpx
import httpx2
import pytest
import sqlalchemy as sa

from core import queue
from core.redis.keys import Keys
from core.services.maintenance import SweepReport, sweep
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.models import Batch, Job
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


def with_params(custom_id: str, **changes: object) -> dict[str, object]:
    """A request whose params are changed (a value None removes that param)."""
    item = request(custom_id, "some text")
    params = {**item["params"], **changes}  # type: ignore[dict-item]
    return {**item, "params": {k: v for k, v in params.items() if v is not None}}


async def test_requests_jobgate_cannot_run_end_errored_without_a_call_and_the_rest_run(
    claude: anthropic.AsyncAnthropic,
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    sim: SimHandle,
    upstream_model: str,
) -> None:
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
    requests = [
        request("ok", "fine"),
        with_params("document", messages=[{"role": "user", "content": [document]}]),
        with_params("unknown-model", model="no-such-model"),
        with_params("no-max-tokens", max_tokens=None),
        with_params("unknown-param", colour="blue"),
    ]

    batch = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]

    assert batch.processing_status == "in_progress" and batch.request_counts.processing == 5
    jobs = (await api_client.get("/v1/jobs", params={"batch_id": batch.id})).json()["data"]
    refused = {job["custom_id"]: job for job in jobs if job["status"] == "failed"}
    assert set(refused) == {"document", "unknown-model", "no-max-tokens", "unknown-param"}
    assert {job["error"]["type"] for job in refused.values()} == {"bad_request"}
    assert all(job["attempts"] == 0 and job["finished_at"] for job in refused.values())
    outcomes = await asyncio.to_thread(inline_worker.run_queued)
    assert list(outcomes) == [job["id"] for job in jobs if job["custom_id"] == "ok"]
    assert sim.stats()["models"][upstream_model]["requests"] == 1  # none of the refused called

    ended = await claude.messages.batches.retrieve(batch.id)
    counts = ended.request_counts
    assert ended.processing_status == "ended"
    assert (counts.processing, counts.succeeded, counts.errored, counts.expired) == (0, 1, 4, 0)
    results = {line.custom_id: line.result async for line in await claude.messages.batches.results(batch.id)}
    assert results["ok"].type == "succeeded"
    errors = {k: r.error.error for k, r in results.items() if r.type == "errored"}  # type: ignore[union-attr]
    assert {e.type for e in errors.values()} == {"invalid_request_error"}
    assert "no-such-model" in errors["unknown-model"].message
    assert "max_tokens" in errors["no-max-tokens"].message
    assert "colour" in errors["unknown-param"].message
    assert "document" in errors["document"].message


async def test_a_batch_none_of_whose_requests_can_run_has_ended_when_made(
    claude: anthropic.AsyncAnthropic, api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    batch = await claude.messages.batches.create(requests=[with_params("x", model="no-such-model")])  # type: ignore[list-item]

    assert batch.processing_status == "ended" and batch.request_counts.errored == 1
    assert [line.result.type async for line in await claude.messages.batches.results(batch.id)] == ["errored"]
    assert (await api_client.get(f"/v1/batches/{batch.id}")).json()["status"] == "completed"
    with inline_worker.sessions() as session:  # announced (batch.completed) as it was made
        assert session.get(Batch, batch.id).completed_at is not None  # type: ignore[union-attr]


async def test_a_bad_envelope_refuses_the_whole_batch(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as duplicate:
        await claude.messages.batches.create(requests=[request("same", "a"), request("same", "b")])  # type: ignore[list-item]
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.batches.create(requests=[request("not ok!", "a")])  # type: ignore[list-item]
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.batches.create(requests=[{"custom_id": "p"}])  # type: ignore[list-item]

    assert "Request 2" in duplicate.value.message and "same" in duplicate.value.message
    assert [b async for b in await claude.messages.batches.list()] == []


def sweep_once(settings: Settings, inline_worker: InlineWorker) -> SweepReport:
    keys = Keys(settings.redis_prefix)
    broker = queue.build_broker(settings.redis_url or "", keys, max_connections=4, timeout_s=5)
    try:
        clock = SqlClock(inline_worker.engine.dialect.name)
        return sweep(inline_worker.sessions, clock, broker, keys, redispatch_after_s=3600)
    finally:
        broker.close()


async def test_requests_not_done_within_24_hours_end_expired(
    claude: anthropic.AsyncAnthropic,
    api_client: httpx.AsyncClient,
    inline_worker: InlineWorker,
    settings: Settings,
) -> None:
    batch = await claude.messages.batches.create(
        requests=[request("done", "one"), request("by-worker", "two"), request("by-sweeper", "three")]  # type: ignore[list-item]
    )
    jobs = await batch_job_ids(api_client, batch.id)
    with inline_worker.sessions() as session:
        deadlines = set(session.execute(sa.select(Job.deadline).where(Job.batch_id == batch.id)).scalars())
    assert len(deadlines) == 1
    assert abs(deadlines.pop().replace(tzinfo=UTC) - batch.expires_at) < timedelta(seconds=1)  # type: ignore[union-attr]
    await asyncio.to_thread(inline_worker.run, jobs["done"])

    # A day later: the window has closed on the two requests still queued.
    past = datetime.now(UTC) - timedelta(minutes=1)
    with inline_worker.sessions() as session:
        session.execute(sa.update(Job).where(Job.batch_id == batch.id).values(deadline=past))
        session.commit()
    await asyncio.to_thread(inline_worker.run, jobs["by-worker"])
    assert (await claude.messages.batches.retrieve(batch.id)).processing_status == "in_progress"
    report = await asyncio.to_thread(sweep_once, settings, inline_worker)

    assert report.expired == 1
    ended = await claude.messages.batches.retrieve(batch.id)
    counts = ended.request_counts
    assert ended.processing_status == "ended"
    assert (counts.succeeded, counts.errored, counts.canceled, counts.expired) == (1, 0, 0, 2)
    results = {
        line.custom_id: line.result.type async for line in await claude.messages.batches.results(batch.id)
    }
    assert results == {"done": "succeeded", "by-worker": "expired", "by-sweeper": "expired"}
    swept = (await api_client.get(f"/v1/jobs/{jobs['by-sweeper']}")).json()
    assert swept["status"] == "failed" and swept["error"]["type"] == "deadline_exceeded"


async def test_a_repeat_with_the_same_idempotency_key_is_the_same_batch(
    claude: anthropic.AsyncAnthropic,
) -> None:
    requests = [request("k", "once")]
    key = {"Idempotency-Key": "msgbatch-key"}

    first = await claude.messages.batches.create(requests=requests, extra_headers=key)  # type: ignore[arg-type]
    again = await claude.messages.batches.create(requests=requests, extra_headers=key)  # type: ignore[arg-type]

    assert again.id == first.id
    assert [b.id async for b in await claude.messages.batches.list()] == [first.id]
