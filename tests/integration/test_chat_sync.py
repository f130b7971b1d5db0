"""`POST /v1/chat/completions` through the queue, against real Redis, SQL and the sim.

The path a sync request takes when its API process makes no calls itself
(`JOBGATE_SYNC_MAX_IN_FLIGHT=0`, or that many already in flight), and the one its retries take:
the request waits in the API (in this process) while the test runs its job through the real
executor (`inline_worker`), or writes the failure a worker would have written, to see how each
final state is answered. Each test routes the `fast` alias to its own upstream model.
(`test_chat_here.py`: the calls the API process makes itself.)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import httpx2
import openai
import pytest
import redis.asyncio as aioredis
from sqlalchemy import select, update

from core.ratelimit.limiter import RateLimiter
from core.redis.keys import Keys
from core.settings import Settings
from core.store import jobs as store
from core.store.models import Job
from tests.api_calls import job_body
from tests.conftest import IN_PROCESS_URL, InlineWorker, in_process_api
from tests.processes import wait_until

T = TypeVar("T")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The API hands every sync request to the queue."""
    return settings.model_copy(update={"sync_max_in_flight": 0})


def queued_job_id(worker: InlineWorker) -> str:
    """The id of the one job the waiting request submitted, once it is queued."""
    found: list[str] = []

    def queued() -> bool:
        with worker.sessions() as session:
            found[:] = session.execute(select(Job.id).where(Job.status == store.QUEUED)).scalars()
        return len(found) == 1

    wait_until(queued, timeout_s=10, what="the request's job to be queued")
    return found[0]


def fail_job(worker: InlineWorker, error_type: str) -> Callable[[str], None]:
    """Ends the job failed with `error_type`, as a worker would, and wakes the waiting request."""

    def finish(job_id: str) -> None:
        error = {"type": error_type, "message": f"The upstream answered {error_type}."}
        with worker.sessions() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status=store.FAILED, error=error))
            session.commit()
        worker.redis.publish(worker.done_channel, job_id)

    return finish


async def while_job_runs(
    worker: InlineWorker, request: Coroutine[Any, Any, T], finish: Callable[[str], Any]
) -> tuple[T, str]:
    """Sends `request`, finishes its job with `finish(job_id)` meanwhile; the answer and the id."""
    waiting = asyncio.create_task(request)
    job_id = await asyncio.to_thread(queued_job_id, worker)
    await asyncio.to_thread(finish, job_id)
    return await asyncio.wait_for(waiting, timeout=30), job_id


async def ask(
    client: httpx.AsyncClient, worker: InlineWorker, finish: Callable[[str], Any]
) -> tuple[httpx.Response, str]:
    return await while_job_runs(worker, client.post("/v1/chat/completions", json=job_body("Hello?")), finish)


@pytest.fixture
async def sdk(settings: Settings, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK pointed at the API in this process, as README shows it."""
    async with in_process_api(settings, http=httpx2) as http:
        yield openai.AsyncOpenAI(
            base_url=f"{IN_PROCESS_URL}/v1", api_key=api_key, http_client=http, max_retries=0
        )


async def assert_retry_after_is_the_pause_left(header: str, limiter: RateLimiter, *, pause_s: int) -> None:
    """Retry-After is the pause's seconds left when it was answered, rounded up: at least what
    is left now (however long this loaded machine took to answer), at most the whole pause."""
    left_now_s = await limiter.shortest_pause_left_s(["sim"])
    assert left_now_s > 0
    assert math.ceil(left_now_s) <= int(header) <= pause_s


@pytest.fixture
def limiter(async_redis_client: aioredis.Redis, keys: Keys) -> RateLimiter:
    return RateLimiter(async_redis_client, keys)


async def test_answer_is_the_chat_completion_with_the_job_named_in_a_header(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    response, job_id = await ask(api_client, inline_worker, inline_worker.run)

    assert response.status_code == 200
    assert response.headers["x-jobgate-job-id"] == job_id
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == "echo: Hello?"


async def test_rate_limited_job_answers_429_retry_after_the_providers_pause(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker, limiter: RateLimiter
) -> None:
    await limiter.pause("sim", 30)

    response, job_id = await ask(api_client, inline_worker, fail_job(inline_worker, "rate_limited"))

    assert response.status_code == 429
    await assert_retry_after_is_the_pause_left(response.headers["retry-after"], limiter, pause_s=30)
    assert response.headers["x-jobgate-job-id"] == job_id
    assert response.json()["error"]["type"] == response.json()["error"]["code"] == "rate_limited"


async def test_overloaded_job_answers_503_retry_after_one_second_when_nothing_is_paused(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    response, _ = await ask(api_client, inline_worker, fail_job(inline_worker, "overloaded"))

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "overloaded"


async def test_job_refused_upstream_answers_400_without_retry_after(
    api_client: httpx.AsyncClient, inline_worker: InlineWorker
) -> None:
    response, _ = await ask(api_client, inline_worker, fail_job(inline_worker, "bad_request"))

    assert response.status_code == 400
    assert "retry-after" not in response.headers
    assert response.json()["error"]["code"] == "bad_request"


async def test_official_sdk_gets_its_chat_completion_and_the_job_id(
    sdk: openai.AsyncOpenAI, inline_worker: InlineWorker
) -> None:
    call = sdk.chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": "Hi from the SDK"}]
    )
    raw, job_id = await while_job_runs(inline_worker, call, inline_worker.run)

    assert raw.headers["x-jobgate-job-id"] == job_id
    assert raw.parse().choices[0].message.content == "echo: Hi from the SDK"


async def test_official_sdk_raises_its_rate_limit_error_with_the_retry_after(
    sdk: openai.AsyncOpenAI, inline_worker: InlineWorker, limiter: RateLimiter
) -> None:
    await limiter.pause("sim", 10)
    call = sdk.chat.completions.create(model="fast", messages=[{"role": "user", "content": "Busy?"}])

    with pytest.raises(openai.RateLimitError) as raised:
        await while_job_runs(inline_worker, call, fail_job(inline_worker, "rate_limited"))
    await assert_retry_after_is_the_pause_left(
        raised.value.response.headers["retry-after"], limiter, pause_s=10
    )
    assert raised.value.code == "rate_limited"
