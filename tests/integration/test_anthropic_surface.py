"""`/anthropic/v1/messages` driven by the official `anthropic` SDK against the API in this
process, the sim behind it (alias `fast` → the sim's OpenAI wire), and the OpenAI surface
under `/openai/v1`. Answers and errors must be what the SDK expects from Anthropic itself."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import httpx
import httpx2
import openai
import pytest

from core.settings import Settings
from tests.conftest import IN_PROCESS_URL, in_process_api, sim_calls
from tests.sim_process import SimHandle


@pytest.fixture
async def claude(settings: Settings, api_key: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official SDK with only its base_url pointed at jobgate."""
    async with in_process_api(settings, http=httpx2) as http:
        yield anthropic.AsyncAnthropic(
            base_url=f"{IN_PROCESS_URL}/anthropic", api_key=api_key, http_client=http, max_retries=0
        )


async def test_messages_create_answers_an_anthropic_message(
    claude: anthropic.AsyncAnthropic, api_client: httpx.AsyncClient, sim: SimHandle, upstream_model: str
) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="fast",
        max_tokens=64,
        system="Be brief.",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Say it again"}]},
        ],
    )
    message = await raw.parse()

    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: Say it again"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    job = (await api_client.get(f"/v1/jobs/{raw.headers['x-jobgate-job-id']}")).json()
    assert (job["status"], job["model"]) == ("succeeded", "fast")
    assert sim_calls(sim, upstream_model) == 1


async def test_a_tool_round_trip_translates_both_ways(claude: anthropic.AsyncAnthropic) -> None:
    tool = {"name": "weather", "description": "Weather now", "input_schema": {"type": "object"}}
    message = await claude.messages.create(
        model="fast",
        max_tokens=64,
        tools=[tool],  # type: ignore[list-item]
        tool_choice={"type": "auto"},
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
    )

    assert message.content[0].type == "text" and message.content[0].text == "echo: thanks"


async def test_the_key_may_come_as_x_api_key_and_a_missing_one_is_anthropics_401(
    settings: Settings, api_key: str
) -> None:
    body = {"model": "fast", "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    async with in_process_api(settings) as client:
        keyed = await client.post("/anthropic/v1/messages", json=body, headers={"x-api-key": api_key})
        missing = await client.post(
            "/anthropic/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}
        )

    assert keyed.status_code == 200 and keyed.json()["content"][0]["text"] == "echo: Hi"
    assert missing.status_code == 401
    assert missing.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": missing.json()["error"]["message"]},
    }


async def test_a_bad_request_is_anthropics_invalid_request_error(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await claude.messages.create(
            model="fast", max_tokens=16, messages=[], thinking={"type": "enabled", "budget_tokens": 1024}
        )

    assert refused.value.status_code == 400
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_an_upstream_failure_keeps_its_status_in_anthropics_shape(
    claude: anthropic.AsyncAnthropic, sim: SimHandle, upstream_model: str
) -> None:
    sim.configure(models={upstream_model: {"fail_rate": 1.0, "fail_status": 400}})

    with pytest.raises(anthropic.APIStatusError) as failed:
        await claude.messages.create(
            model="fast", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )

    assert failed.value.body["type"] == "error"  # type: ignore[index]
    assert failed.value.status_code >= 400


async def test_the_openai_sdk_works_under_the_openai_prefix(settings: Settings, api_key: str) -> None:
    async with in_process_api(settings, http=httpx2) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{IN_PROCESS_URL}/openai/v1", api_key=api_key, http_client=http, max_retries=0
        )
        reply = await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "Hi"}]
        )
        models = await client.models.list()

    assert reply.choices[0].message.content == "echo: Hi"
    assert "fast" in {model.id for model in models.data}


async def test_messages_stream_reassembles_the_answer_as_the_sdk_reads_it(
    claude: anthropic.AsyncAnthropic, sim: SimHandle, upstream_model: str
) -> None:
    whole = await claude.messages.create(
        model="fast", max_tokens=64, messages=[{"role": "user", "content": "flow"}]
    )
    async with claude.messages.stream(
        model="fast", max_tokens=64, messages=[{"role": "user", "content": "flow"}]
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()

    assert text == whole.content[0].text == "echo: flow"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert sim_calls(sim, upstream_model) == 2


async def test_a_streamed_failure_is_an_anthropic_error_event(
    claude: anthropic.AsyncAnthropic, sim: SimHandle, upstream_model: str
) -> None:
    sim.configure(models={upstream_model: {"fail_rate": 1.0, "fail_status": 400}})

    with pytest.raises(anthropic.APIStatusError) as failed:
        async with claude.messages.stream(
            model="fast", max_tokens=16, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            async for _ in stream:
                pass

    assert failed.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
