"""`/openai/v1/files` and `/openai/v1/batches` driven by the official `openai` SDK against the
API in this process; the test runs the batch's jobs with the real executor (`inline_worker`)
and the sim behind the alias `fast` fails a share of them, as the issue's scenario asks:
upload, create, poll, then the output and error files read line by line. The 24 h window is
not waited for: a test moves the jobs' deadline into the past in SQL and runs the sweeper."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx2
import openai
import pytest
import sqlalchemy as sa
from openai.types import FileObject

from core import queue
from core.redis.keys import Keys
from core.services.maintenance import sweep
from core.settings import Settings
from core.store.clock import SqlClock
from core.store.models import Job
from tests.conftest import IN_PROCESS_URL, InlineWorker, in_process_api
from tests.sim_process import SimHandle


@pytest.fixture
async def client(settings: Settings, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with in_process_api(settings, http=httpx2) as http:
        yield openai.AsyncOpenAI(
            base_url=f"{IN_PROCESS_URL}/openai/v1", api_key=api_key, http_client=http, max_retries=0
        )


def batch_file(count: int, *, bad_line: int | None = None) -> bytes:
    lines = []
    for i in range(count):
        line: dict[str, object] = {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "fast", "messages": [{"role": "user", "content": f"prompt {i}"}]},
        }
        if bad_line == i + 1:
            line["body"] = {"model": "fast", "messages": [], "colour": "blue"}
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


async def upload(client: openai.AsyncOpenAI, content: bytes) -> str:
    return (
        await client.files.create(
            file=("input.jsonl", io.BytesIO(content), "application/jsonl"), purpose="batch"
        )
    ).id


def jsonl(content: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in content.decode().splitlines()]


async def test_a_thousand_requests_with_some_failing_upstream_end_in_output_and_error_files(
    client: openai.AsyncOpenAI, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    file_id = await upload(client, batch_file(1000))
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 1000  # type: ignore[union-attr]

    sim.configure(seed=7, models={upstream_model: {"fail_rate": 0.1, "fail_status": 400}})
    outcomes = await asyncio.to_thread(inline_worker.run_queued, at_once=50)
    assert len(outcomes) == 1000

    done = await client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id is not None and done.error_file_id is not None
    output = jsonl((await client.files.content(done.output_file_id)).content)
    errors = jsonl((await client.files.content(done.error_file_id)).content)
    counts = done.request_counts
    assert counts is not None and (counts.completed, counts.failed) == (len(output), len(errors))
    assert 0 < len(errors) < 300 and len(output) + len(errors) == 1000
    assert sorted(line["custom_id"] for line in output + errors) == sorted(f"req-{i}" for i in range(1000))  # type: ignore[type-var]
    first = output[0]
    assert first["response"]["status_code"] == 200 and first["error"] is None  # type: ignore[index]
    assert first["response"]["body"]["choices"][0]["message"]["content"].startswith("echo: prompt")  # type: ignore[index]
    assert {line["response"]["status_code"] for line in errors} == {400}  # type: ignore[index]
    assert (await client.files.retrieve(done.output_file_id)).purpose == "batch_output"


async def test_a_bad_line_fails_the_batch_naming_it(client: openai.AsyncOpenAI) -> None:
    file_id = await upload(client, batch_file(3, bad_line=2))

    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert batch.errors.data[0].line == 2
    assert (await client.batches.retrieve(batch.id)).status == "failed"


async def test_a_cancelled_batch_reports_its_requests_in_the_error_file(
    client: openai.AsyncOpenAI, inline_worker: InlineWorker
) -> None:
    batch = await client.batches.create(
        input_file_id=await upload(client, batch_file(2)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )

    cancelled = await client.batches.cancel(batch.id)

    assert cancelled.status == "cancelled" and cancelled.cancelling_at is not None
    assert cancelled.error_file_id is not None
    errors = jsonl((await client.files.content(cancelled.error_file_id)).content)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await client.batches.cancel(batch.id)


async def test_files_are_listed_read_and_deleted_and_bad_requests_are_named(
    client: openai.AsyncOpenAI,
) -> None:
    content = batch_file(2)
    file_id = await upload(client, content)

    assert file_id in [f.id async for f in client.files.list()]
    assert (await client.files.retrieve(file_id)).bytes == len(content)
    assert (await client.files.content(file_id)).content == content
    with pytest.raises(openai.BadRequestError) as wrong_endpoint:
        await client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h")  # type: ignore[arg-type]
    assert wrong_endpoint.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("x.jsonl", io.BytesIO(content)), purpose="assistants")
    assert (await client.files.delete(file_id)).deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(file_id)
    assert [b.id async for b in client.batches.list()] == []


async def test_a_batch_created_again_with_its_idempotency_key_is_the_same_batch(
    client: openai.AsyncOpenAI,
) -> None:
    file_id = await upload(client, batch_file(2))
    key = {"Idempotency-Key": "openai-batch-key"}

    first = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key
    )
    again = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h", extra_headers=key
    )

    assert again.id == first.id
    assert [b.id async for b in client.batches.list()] == [first.id]


async def test_a_batch_without_failures_has_an_output_file_and_no_error_file(
    client: openai.AsyncOpenAI, inline_worker: InlineWorker
) -> None:
    batch = await client.batches.create(
        input_file_id=await upload(client, batch_file(3)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    await asyncio.to_thread(inline_worker.run_queued)

    done = await client.batches.retrieve(batch.id)

    assert done.status == "completed" and done.error_file_id is None and done.output_file_id is not None
    output = jsonl((await client.files.content(done.output_file_id)).content)
    assert sorted(line["custom_id"] for line in output) == ["req-0", "req-1", "req-2"]  # type: ignore[type-var]


async def test_requests_not_done_within_the_completion_window_expire_the_batch(
    client: openai.AsyncOpenAI, inline_worker: InlineWorker, settings: Settings
) -> None:
    batch = await client.batches.create(
        input_file_id=await upload(client, batch_file(3)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    with inline_worker.sessions() as session:
        jobs = dict(session.execute(sa.select(Job.custom_id, Job.id).where(Job.batch_id == batch.id)).all())
        deadline = session.execute(sa.select(Job.deadline).where(Job.id == jobs["req-0"])).scalar_one()
    assert int(deadline.replace(tzinfo=UTC).timestamp()) == batch.expires_at
    await asyncio.to_thread(inline_worker.run, jobs["req-0"])

    # A day later: the window has closed on the two requests still queued.
    past = datetime.now(UTC) - timedelta(minutes=1)
    with inline_worker.sessions() as session:
        session.execute(sa.update(Job).where(Job.batch_id == batch.id).values(deadline=past))
        session.commit()
    keys = Keys(settings.redis_prefix)
    broker = queue.build_broker(settings.redis_url or "", keys, max_connections=4, timeout_s=5)
    clock = SqlClock(inline_worker.engine.dialect.name)
    try:
        report = sweep(inline_worker.sessions, clock, broker, keys, redispatch_after_s=3600)
    finally:
        broker.close()

    assert report.expired == 2
    expired = await client.batches.retrieve(batch.id)
    assert expired.status == "expired" and expired.expired_at is not None and expired.completed_at is None
    counts = expired.request_counts
    assert counts is not None and (counts.total, counts.completed, counts.failed) == (3, 1, 2)
    assert expired.output_file_id is not None and expired.error_file_id is not None
    output = jsonl((await client.files.content(expired.output_file_id)).content)
    errors = jsonl((await client.files.content(expired.error_file_id)).content)
    assert [line["custom_id"] for line in output] == ["req-0"]
    assert sorted(line["custom_id"] for line in errors) == ["req-1", "req-2"]  # type: ignore[type-var]
    assert {(line["response"], line["error"]["code"]) for line in errors} == {(None, "batch_expired")}  # type: ignore[index]


async def test_an_upload_repeated_with_its_idempotency_key_is_the_same_file(
    client: openai.AsyncOpenAI,
) -> None:
    content = batch_file(2)
    key = {"Idempotency-Key": "upload-key"}

    async def upload_with(data: bytes, headers: dict[str, str]) -> FileObject:
        return await client.files.create(
            file=("input.jsonl", io.BytesIO(data), "application/jsonl"),
            purpose="batch",
            extra_headers=headers,
        )

    first = await upload_with(content, key)
    again = await upload_with(content, key)
    with pytest.raises(openai.ConflictError) as conflict:
        await upload_with(batch_file(3), key)
    other_key = await upload_with(content, {"Idempotency-Key": "another-key"})

    assert again.id == first.id and again.bytes == len(content)
    assert conflict.value.status_code == 409 and conflict.value.body["param"] == "Idempotency-Key"  # type: ignore[index]
    assert other_key.id != first.id
    assert sorted([f.id async for f in client.files.list()]) == sorted([first.id, other_key.id])
    assert (await client.files.content(first.id)).content == content
