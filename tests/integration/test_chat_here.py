"""`POST /v1/chat/completions` called by the API process itself (api/inline_calls.py), against
real Redis, SQL and the sim.

The job row is inserted claimed and the call runs on the API's own job runtime: no worker takes
part unless the first attempt ends in a retry or the API's calls in flight are at their cap.
Each test routes the `fast` alias to its own upstream model, whose faults it sets in the sim.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import httpx2
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.errors import http_status_for
from core.services.execute import OutcomeStatus
from core.services.runtime import PendingRecord
from core.services.submit import JobSpec, claimed_job
from core.settings import Settings
from core.store import jobs as store
from core.store.models import Job, JobAttempt, Tenant
from tests.api_calls import job_body
from tests.conftest import IN_PROCESS_URL, InlineWorker, in_process_api, sim_calls
from tests.processes import wait_until
from tests.sim_process import SimHandle


def job_row(worker: InlineWorker, job_id: str) -> Job:
    with worker.sessions() as session:
        return session.execute(select(Job).where(Job.id == job_id)).scalars().one()


def attempts_of(worker: InlineWorker, job_id: str) -> list[tuple[int, str]]:
    with worker.sessions() as session:
        rows = session.execute(
            select(JobAttempt.attempt, JobAttempt.outcome).where(JobAttempt.job_id == job_id)
        )
        return sorted((attempt, outcome) for attempt, outcome in rows)


def model_faults(sim: SimHandle, model: str, **knobs: Any) -> None:
    sim.configure(models={model: knobs})


async def ask(client: httpx.AsyncClient, prompt: str = "Hello?") -> httpx.Response:
    return await client.post("/v1/chat/completions", json=job_body(prompt))


async def test_the_api_makes_the_call_and_records_the_job_as_a_worker_would(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    response = await ask(api_client)

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: Hello?"
    job_id = response.headers["x-jobgate-job-id"]
    job = job_row(inline_worker, job_id)
    assert (job.status, job.attempts, job.priority) == (store.SUCCEEDED, 1, "interactive")
    assert job.result == response.json()
    assert job.lease_until is None and job.finished_at is not None
    assert attempts_of(inline_worker, job_id) == [(1, "succeeded")]
    assert sim_calls(sim, upstream_model) == 1


async def test_a_final_upstream_error_is_answered_in_openais_shape_and_recorded(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    model_faults(sim, upstream_model, fail_rate=1.0, fail_status=400)

    response = await ask(api_client)

    job = job_row(inline_worker, response.headers["x-jobgate-job-id"])
    assert (job.status, job.attempts) == (store.FAILED, 1)
    assert job.error is not None
    assert response.status_code == http_status_for(job.error["type"])
    assert response.json()["error"]["code"] == job.error["type"]


async def test_a_first_attempt_that_must_be_retried_finishes_through_the_queue(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    model_faults(sim, upstream_model, fail_rate=1.0, fail_status=500)
    waiting = asyncio.create_task(ask(api_client, "again"))

    def requeued() -> bool:
        with inline_worker.sessions() as session:
            rows = session.execute(select(Job.status, Job.attempts)).all()
        return [tuple(row) for row in rows] == [(store.QUEUED, 1)]

    await asyncio.to_thread(
        wait_until, requeued, timeout_s=15, what="the job requeued after its first attempt"
    )
    assert not waiting.done()
    model_faults(sim, upstream_model, fail_rate=0.0)

    def ran_once_due() -> bool:  # the retry waits out its backoff (`not_before`) first
        return [str(o.status) for o in inline_worker.run_queued().values()] == ["succeeded"]

    await asyncio.to_thread(wait_until, ran_once_due, timeout_s=15, what="the retry run by a worker")
    response = await asyncio.wait_for(waiting, timeout=30)

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: again"
    job_id = response.headers["x-jobgate-job-id"]
    assert job_row(inline_worker, job_id).attempts == 2
    calls = attempts_of(inline_worker, job_id)
    assert calls[-1] == (2, "succeeded")
    assert {outcome for attempt, outcome in calls[:-1]} == {"server_error"}


@pytest.fixture
def one_call_here(settings: Settings) -> Settings:
    return settings.model_copy(update={"sync_max_in_flight": 1})


async def test_requests_beyond_the_calls_in_flight_cap_take_the_queue(
    one_call_here: Settings,
    api_key: str,
    inline_worker: InlineWorker,
    sim: SimHandle,
    upstream_model: str,
) -> None:
    model_faults(sim, upstream_model, latency_ms=1500)
    async with in_process_api(one_call_here, api_key) as client:
        first = asyncio.create_task(ask(client, "first"))

        def one_running() -> bool:
            with inline_worker.sessions() as session:
                return session.execute(select(Job.status)).scalars().all() == [store.RUNNING]

        await asyncio.to_thread(wait_until, one_running, timeout_s=10, what="the first call under way")
        second = asyncio.create_task(ask(client, "second"))

        def second_queued() -> bool:
            with inline_worker.sessions() as session:
                return store.QUEUED in session.execute(select(Job.status)).scalars().all()

        await asyncio.to_thread(wait_until, second_queued, timeout_s=10, what="the second job queued")
        outcomes = await asyncio.to_thread(inline_worker.run_queued)
        answers = await asyncio.wait_for(asyncio.gather(first, second), timeout=30)

    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == ["echo: first", "echo: second"]
    assert list(outcomes) == [answers[1].headers["x-jobgate-job-id"]]
    assert sim_calls(sim, upstream_model) == 2


@pytest.fixture
def short_wait(settings: Settings) -> Settings:
    return settings.model_copy(update={"sync_timeout_s": 0.3})


async def test_a_call_longer_than_the_sync_timeout_answers_504_and_still_lands(
    short_wait: Settings, api_key: str, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    model_faults(sim, upstream_model, latency_ms=1500)
    async with in_process_api(short_wait, api_key) as client:
        response = await ask(client, "slow")
        job_id = response.headers["x-jobgate-job-id"]
        assert response.status_code == 504
        assert response.json()["error"]["job_id"] == job_id
        assert response.headers["retry-after"] == "1"  # the SDK's retry then waits on this job

        def succeeded() -> bool:
            return job_row(inline_worker, job_id).status == store.SUCCEEDED

        await asyncio.to_thread(wait_until, succeeded, timeout_s=15, what="the slow job written")

    assert job_row(inline_worker, job_id).attempts == 1
    assert sim_calls(sim, upstream_model) == 1


def claimed_for_tenant_a(worker: InlineWorker, prompt: str) -> tuple[dict[str, Any], store.Claim]:
    with worker.sessions() as session:
        tenant_id = session.execute(select(Tenant.id).where(Tenant.name == "tenant-a")).scalar_one()
    spec = JobSpec(body=job_body(prompt), priority="interactive")
    return claimed_job(spec, tenant_id=tenant_id, now=worker.runtime.clock.utcnow(), max_attempts=3)


def test_recording_a_claimed_job_again_after_a_lost_answer_finds_its_own_row(
    inline_worker: InlineWorker, api_key: str
) -> None:
    # A retry after a COMMIT that landed with its answer lost: the same row, so nothing to do;
    # the same id under another tenant is not this job's row, and the retry must not pass it.
    clock = inline_worker.runtime.clock
    row, claim = claimed_for_tenant_a(inline_worker, "hi")
    for _ in range(2):
        with inline_worker.sessions() as session:
            store.insert_claimed(session, clock, dict(row), lease_s=60)

    job = job_row(inline_worker, claim.id)
    assert (job.status, job.attempts, job.tenant_id) == (store.RUNNING, 1, claim.tenant_id)
    assert job.lease_until is not None
    with inline_worker.sessions() as session, pytest.raises(IntegrityError):
        store.insert_claimed(session, clock, {**row, "tenant_id": "no-such-tenant"}, lease_s=60)


def test_a_call_started_before_its_row_is_inserted_is_written_once_the_insert_lands(
    inline_worker: InlineWorker, api_key: str, sim: SimHandle, upstream_model: str
) -> None:
    # The sync path inserts the claimed row once the call has gone out; the final write, fenced
    # by the claim, must wait for that insert, or it would find no row and the answer be lost.
    row, claim = claimed_for_tenant_a(inline_worker, "insert after the call")
    loop = inline_worker.loop.loop
    may_land: asyncio.Future[None] = loop.create_future()
    began = threading.Event()

    async def insert_when_allowed() -> None:
        began.set()
        await may_land

    async def run_claimed() -> Any:
        return await inline_worker.runtime.run_claimed(claim, inserted=PendingRecord(insert_when_allowed))

    run = asyncio.run_coroutine_threadsafe(run_claimed(), loop)

    wait_until(lambda: sim_calls(sim, upstream_model) == 1, timeout_s=15, what="the upstream call")
    wait_until(began.is_set, timeout_s=5, what="the insert to begin as the call went out")
    assert not run.done()  # answered upstream, but not written: its row is not there yet
    with inline_worker.sessions() as session:
        store.insert_claimed(session, inline_worker.runtime.clock, dict(row), lease_s=60)
    loop.call_soon_threadsafe(may_land.set_result, None)
    outcome, verdict = run.result(timeout=30)

    assert outcome.status is OutcomeStatus.SUCCEEDED
    job = job_row(inline_worker, claim.id)
    assert (job.status, job.attempts) == (store.SUCCEEDED, 1)
    assert verdict is not None and job.result == verdict.values["result"]
    assert attempts_of(inline_worker, claim.id) == [(1, "succeeded")]


def test_an_insert_that_fails_while_the_call_runs_fails_the_run_and_writes_nothing(
    inline_worker: InlineWorker, api_key: str, sim: SimHandle, upstream_model: str
) -> None:
    _, claim = claimed_for_tenant_a(inline_worker, "insert fails")
    loop = inline_worker.loop.loop

    async def failing_insert() -> None:
        raise IntegrityError("INSERT INTO jobs", {}, Exception("no row for you"))

    async def run() -> Any:
        return await inline_worker.runtime.run_claimed(claim, inserted=PendingRecord(failing_insert))

    with pytest.raises(IntegrityError):
        asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=30)

    assert sim_calls(sim, upstream_model) == 1
    with inline_worker.sessions() as session:
        assert session.execute(select(Job.id).where(Job.id == claim.id)).first() is None
    assert claim.id not in inline_worker.runtime._active


async def test_the_openai_sdk_may_send_the_newer_chat_parameters(
    settings: Settings, api_key: str, inline_worker: InlineWorker
) -> None:
    # What current SDK users send besides the classic fields: accepted, stored with the job and
    # forwarded upstream (stream_options only matters to a streamed call and is not kept).
    async with in_process_api(settings, http=httpx2) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{IN_PROCESS_URL}/v1", api_key=api_key, http_client=http, max_retries=0
        )
        raw = await client.chat.completions.with_raw_response.create(
            model="fast",
            messages=[{"role": "user", "content": "newer"}],
            parallel_tool_calls=False,
            logprobs=True,
            top_logprobs=2,
            logit_bias={"50256": -100},
            reasoning_effort="low",
            verbosity="low",
            service_tier="auto",
            store=False,
            modalities=["text"],
            prediction={"type": "content", "content": "echo"},
            stream_options={"include_usage": True},
        )

    assert raw.parse().choices[0].message.content == "echo: newer"
    request = job_row(inline_worker, raw.headers["x-jobgate-job-id"]).request
    assert request["logit_bias"] == {"50256": -100} and request["reasoning_effort"] == "low"
    assert request["parallel_tool_calls"] is False and "stream_options" not in request


async def test_a_logit_bias_out_of_range_is_refused_naming_it(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post("/v1/chat/completions", json=job_body("x", logit_bias={"1": 200}))

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logit_bias"


async def ask_with_key(client: httpx.AsyncClient, key: str, prompt: str) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=job_body(prompt), headers={"Idempotency-Key": key})


async def test_a_retry_with_the_same_idempotency_key_answers_the_first_job_without_a_second_call(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    first = await ask_with_key(api_client, "retry-1", "once")
    again = await ask_with_key(api_client, "retry-1", "once")

    assert first.status_code == again.status_code == 200
    assert first.headers["x-jobgate-job-id"] == again.headers["x-jobgate-job-id"]
    assert again.json() == first.json()
    assert sim_calls(sim, upstream_model) == 1


async def test_concurrent_requests_with_one_idempotency_key_share_one_job_and_one_call(
    api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    model_faults(sim, upstream_model, latency_ms=400)

    answers = await asyncio.gather(*(ask_with_key(api_client, "raced", "together") for _ in range(4)))

    assert [a.status_code for a in answers] == [200] * 4
    assert len({a.headers["x-jobgate-job-id"] for a in answers}) == 1
    assert sim_calls(sim, upstream_model) == 1


async def test_an_idempotency_key_reused_with_another_body_is_a_conflict(
    api_client: httpx.AsyncClient,
) -> None:
    assert (await ask_with_key(api_client, "reused", "first body")).status_code == 200

    response = await ask_with_key(api_client, "reused", "another body")

    assert response.status_code == 409
    assert response.json()["error"]["param"] == "Idempotency-Key"


async def test_the_sdk_does_not_retry_a_conflict(settings: Settings, api_key: str) -> None:
    # OpenAI's SDK retries a 409 unless told not to: a conflict is final, so it is told.
    sent: list[str] = []

    async def count(request: httpx2.Request) -> None:
        sent.append(request.headers.get("x-stainless-retry-count", "0"))

    async with in_process_api(settings, http=httpx2) as http:
        http.event_hooks["request"].append(count)
        client = openai.AsyncOpenAI(
            base_url=f"{IN_PROCESS_URL}/v1", api_key=api_key, http_client=http, max_retries=2
        )
        ask_once = {"model": "fast", "extra_headers": {"Idempotency-Key": "once-only"}}
        await client.chat.completions.create(messages=[{"role": "user", "content": "first"}], **ask_once)
        with pytest.raises(openai.ConflictError) as conflict:
            await client.chat.completions.create(messages=[{"role": "user", "content": "other"}], **ask_once)

    assert conflict.value.response.headers["x-should-retry"] == "false"
    assert sent == ["0", "0"]


@pytest.fixture
def one_second_wait(settings: Settings) -> Settings:
    return settings.model_copy(update={"sync_timeout_s": 1.0})


def jobs_made(worker: InlineWorker) -> int:
    with worker.sessions() as session:
        return len(session.execute(select(Job.id)).all())


async def test_the_sdks_own_retry_after_a_sync_timeout_waits_on_the_same_job(
    one_second_wait: Settings, api_key: str, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    # The call takes 2.5 s, the sync wait 1 s: the first answer is a 504 with Retry-After, and
    # the SDK's retries (x-stainless-retry-count 1, 2) attach to the job instead of making more.
    model_faults(sim, upstream_model, latency_ms=2500)
    async with in_process_api(one_second_wait, http=httpx2) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{IN_PROCESS_URL}/v1", api_key=api_key, http_client=http, max_retries=3
        )
        reply = await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "slow"}]
        )

    assert reply.choices[0].message.content == "echo: slow"
    assert jobs_made(inline_worker) == 1
    assert sim_calls(sim, upstream_model) == 1


async def test_the_same_body_sent_again_without_a_retry_header_is_a_new_job(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    answers = [await ask(api_client, "twice") for _ in range(2)]

    assert len({a.headers["x-jobgate-job-id"] for a in answers}) == 2
    assert jobs_made(inline_worker) == 2 and sim_calls(sim, upstream_model) == 2
