"""`stream: true` on `POST /v1/chat/completions`, driven by the official `openai` SDK against
the API in this process, which makes the streamed call to the sim itself: the whole answer
recorded on the job, a cache hit streamed from the cache, an upstream failure an error event.
(The in-process transport hands over a response whole: timing and a client hanging up are
tested against real processes, tests/e2e/test_streaming.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import httpx2
import openai
import pytest
from sqlalchemy import select

from core.settings import Settings
from core.store import jobs as store
from core.store.models import Job
from tests.conftest import IN_PROCESS_URL, InlineWorker, in_process_api, sim_calls
from tests.sim_process import SimHandle


@pytest.fixture
async def client(settings: Settings, api_key: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with in_process_api(settings, http=httpx2) as http:
        yield openai.AsyncOpenAI(
            base_url=f"{IN_PROCESS_URL}/v1", api_key=api_key, http_client=http, max_retries=0
        )


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def only_job(worker: InlineWorker) -> Job:
    with worker.sessions() as session:
        [job] = session.execute(select(Job)).scalars().all()
        return job


async def test_the_streamed_text_is_the_answer_and_the_job_records_all_of_it(
    client: openai.AsyncOpenAI, inline_worker: InlineWorker, sim: SimHandle, upstream_model: str
) -> None:
    parts, usage = [], None
    stream = await client.chat.completions.create(
        model="fast",
        messages=messages("relay these tokens one by one"),
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        parts += [choice.delta.content or "" for choice in chunk.choices]
        usage = chunk.usage or usage

    assert "".join(parts) == "echo: relay these tokens one by one"
    assert usage is not None and usage.completion_tokens > 0
    job = only_job(inline_worker)
    assert job.status == store.SUCCEEDED and job.result is not None
    assert job.result["choices"][0]["message"]["content"] == "".join(parts)
    assert (job.input_tokens, job.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert sim_calls(sim, upstream_model) == 1


async def test_a_cache_hit_streams_the_cached_answer_without_a_call(
    client: openai.AsyncOpenAI, sim: SimHandle, upstream_model: str
) -> None:
    whole = await client.chat.completions.create(
        model="fast", messages=messages("cached"), extra_body={"cache": True}
    )
    stream = await client.chat.completions.create(
        model="fast", messages=messages("cached"), stream=True, extra_body={"cache": True}
    )
    text = "".join([choice.delta.content or "" async for chunk in stream for choice in chunk.choices])

    assert text == whole.choices[0].message.content == "echo: cached"
    assert sim_calls(sim, upstream_model) == 1


async def test_an_upstream_failure_is_an_error_event_the_sdk_raises(
    client: openai.AsyncOpenAI, sim: SimHandle, upstream_model: str
) -> None:
    sim.configure(models={upstream_model: {"fail_rate": 1.0, "fail_status": 400}})

    with pytest.raises(openai.APIError) as failed:
        stream = await client.chat.completions.create(model="fast", messages=messages("x"), stream=True)
        async for _ in stream:
            pass

    assert "bad_request" in str(failed.value.body) or failed.value.message


async def test_jobs_outside_the_chat_route_still_refuse_stream(api_client: httpx.AsyncClient) -> None:
    response = await api_client.post(
        "/v1/jobs", json={"model": "fast", "messages": messages("x"), "stream": True}
    )

    assert response.status_code == 400 and response.json()["error"]["param"] == "stream"
